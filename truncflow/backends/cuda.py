"""The CUDA backend: a dataset whose points live on a GPU, every pass run there (issue 13).

:class:`DeviceDataset` (made by ``dataset.to("cuda")``, see :mod:`truncflow.device`) implements
the named operations of ``truncflow.backends.base`` with the CUDA kernels of
:mod:`truncflow.kernels.cuda`; each returns its sums, added in a fixed order, as one "chunk".

Two placements:
  resident  the points and labels live in device memory for as long as the dataset;
  streamed  when they do not fit (or when ``batch_points`` is given): they stay in host
            memory and every pass streams them in batches through two pinned staging
            buffers on two CUDA streams, the copy of one batch overlapping the kernel of
            the other. A batch is a whole number of the pass's chunks
            (``kernels.cuda.launch.chunking``) and writes their rows of the partial sums,
            so a streamed pass gives the resident pass's bits.

Nothing here imports ``numba.cuda``: the dataset is handed the ``numba.cuda`` module by
:func:`truncflow.device.to_device`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .._validate import choice, format_bytes
from ..data import Dataset, DatasetElsewhere, EmptyClusterWarning, check_targets
from ..tiles import pad_to_width, padded_width
from .base import FROZEN_PASSES, OPERATIONS, Backend, Capabilities

__all__ = ["DeviceDataset", "CUDA", "DEVICES", "RESIDENT_FRACTION", "DEFAULT_BATCH"]

DEVICES = ("cpu", "cuda")
#: Fraction of the free device memory the resident points may take (the rest: scratch, sums).
RESIDENT_FRACTION = 0.7
#: Points per batch when streaming and no batch size is given.
DEFAULT_BATCH = 1 << 22
#: Device memory kept free of resident points for the passes' scratch and partial sums (bytes).
SCRATCH_RESERVE = 3 * 256 * 2**20

CUDA = Capabilities(
    name="CUDA", where="on a GPU", points_here=False, serial_steps=False, checkpoints=False,
    methods=frozenset({"rk45", "gd", "sgd", "kinks"}), float32=True, ensembles=False,
    operations=frozenset(OPERATIONS + FROZEN_PASSES),
    bring_here="use dataset.to('cpu')")


class DeviceDataset(DatasetElsewhere, Backend):
    """A :class:`truncflow.Dataset` whose points live on a GPU (made by ``dataset.to("cuda")``).

    It has the Dataset's read-only attributes (``targets``, ``class_ids``, ``counts``,
    ``n_points``, ``width``, ``n_clusters``, ``dtype``); ``points`` and ``labels`` are
    Numba device arrays when resident; when streamed, the host dataset's own arrays, read
    batch by batch on every pass (not copied, as a :class:`truncflow.Dataset` keeps its
    points) (``resident``, ``batch_points``). ``to("cpu")`` gives a :class:`truncflow.Dataset` back.
    """

    capabilities = CUDA

    def __init__(self, cuda, dataset: Dataset, batch_points: int | None):
        self._cuda = cuda
        self.targets, self.class_ids, self._counts = dataset.targets, dataset.class_ids, dataset.counts
        self._n_points, self._width = dataset.n_points, dataset.width
        self.dtype = dataset.points.dtype
        N, M = self._n_points, self._width
        # resident: the points, labels and an observation's per-point hashes in RESIDENT_FRACTION of the
        # free memory, and room for the passes' scratch and partial sums besides
        need = N * (M * self.dtype.itemsize + 8 + 8)
        free = cuda.current_context().get_memory_info()[0]
        self.resident = batch_points is None and need + SCRATCH_RESERVE <= RESIDENT_FRACTION * free
        if self.resident:
            self.points, self.labels = _on_device(f"the points ({format_bytes(need)})", lambda: (
                cuda.to_device(np.ascontiguousarray(dataset.points)),
                cuda.to_device(np.ascontiguousarray(dataset.labels))))
            self.batch_points = N
        else:
            if batch_points is None:
                batch_points = min(DEFAULT_BATCH, max(1, int(free * RESIDENT_FRACTION / 2 / (M * 16 + 8))))
            self.batch_points = min(int(batch_points), N)
            # the host's arrays as they are (a memory map is read batch by batch); each batch goes through
            # one of two pinned staging buffers (``_run``), never the whole dataset pinned
            self.points, self.labels = dataset.points, dataset.labels
        self._scratch = {}

    def __repr__(self) -> str:
        where = "resident" if self.resident else f"streamed in batches of {self.batch_points}"
        return (f"DeviceDataset(N={self.n_points}, M={self.width}, Q={self.n_clusters}, {self.dtype}, cuda, "
                f"{where})")

    def __reduce__(self):
        raise TypeError("a DeviceDataset lives on its GPU and cannot be pickled: pickle dataset.to('cpu')")

    def to(self, device: str = "cpu", **options):
        """``"cpu"``: a :class:`truncflow.Dataset` with the same points (copied back), labels and
        targets; ``"cuda"``: this dataset (with ``batch_points``: placed again)."""
        choice(device, "device", DEVICES)
        if device == "cuda" and not options:
            return self
        host = self._host_dataset()
        return host if device == "cpu" else host.to(device, **options)

    def _host_dataset(self) -> Dataset:
        if self.resident:
            points, labels = self.points.copy_to_host(), self.labels.copy_to_host()
        else:
            points, labels = np.array(self.points), np.array(self.labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyClusterWarning)
            return Dataset(points, labels, self.targets, self.class_ids)

    def with_targets(self, targets) -> "DeviceDataset":
        """The same points and labels on the device with other targets (same number of clusters)."""
        tgt = check_targets(targets)
        if tgt.shape[0] != self.n_clusters:
            raise ValueError(f"targets have {tgt.shape[0]} rows but this dataset has Q = {self.n_clusters} "
                             f"clusters: move a dataset with other clusters to the device")
        other = object.__new__(DeviceDataset)
        other.__dict__.update(self.__dict__)
        other.targets = tgt
        return other

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points[idx] as float64, labels[idx]) for row indices idx (a data sample)."""
        idx = np.asarray(idx, dtype=np.int64)
        if not self.resident:
            return np.asarray(self.points[idx], dtype=np.float64), np.array(self.labels[idx])
        from ..kernels.cuda.observe import gather_rows_kernel
        cuda = self._cuda
        out = cuda.device_array((idx.size, self.width), dtype=np.float64)
        out_labels = cuda.device_array(idx.size, dtype=np.int64)
        if idx.size:
            gather_rows_kernel[math.ceil(idx.size / 128), 128](self.points, self.labels, cuda.to_device(idx), out,
                                                              out_labels)
        return out.copy_to_host(), out_labels.copy_to_host()

    def frozen_points(self, kern, chunk: int):
        """The kink integrator's per-point side on the GPU (``backends.cuda_frozen``; resident points)."""
        from .cuda_frozen import DeviceFrozenPoints
        return DeviceFrozenPoints(self, kern, chunk)

    # ------------------------------------------------------------ passes
    def _buffers(self, key, make):
        """Device or pinned memory made once per (use, shapes) and kept: no allocation per evaluation."""
        if key not in self._scratch:
            self._scratch[key] = _on_device(f"the scratch of a pass ({key[0]})", make)
        return self._scratch[key]

    def _run(self, key, chunk, rows, launch, per_point=False, writes_rows=False):
        """One pass: ``launch(points, labels, n, base, acc, stream_index, stream, hashes)`` over the
        points (resident: once; streamed: per batch, ``base`` its first chunk) into the partial sums
        of its chunks of ``chunk`` points, acc (chunks, S, K) = ``rows`` float64, zeroed first unless
        the kernel ``writes_rows`` (stores every entry of its chunks' rows instead of adding into
        them); returns their sum in the fixed order of ``launch.reduce_chunks``, (S, K) float64 on
        the host, and with ``per_point`` the pattern hashes (N,) uint64 the kernel wrote."""
        from ..kernels.cuda import launch as lc
        cuda = self._cuda
        R, S, K = rows
        acc = self._buffers(("acc",) + key, lambda: cuda.device_array((R, S, K), dtype=np.float64))
        fold = self._buffers(("fold",) + key, lambda: cuda.device_array(lc.fold_scratch_rows(R) * S * K))
        out = self._buffers(("sums",) + key, lambda: cuda.device_array((S, K), dtype=np.float64))
        host = self._buffers(("sums host",) + key, lambda: cuda.pinned_array((S, K), dtype=np.float64))
        if not writes_rows:
            lc.zero(acc)
        if self.resident:
            hashes = self._buffers(("hashes",), lambda: cuda.device_array(self.n_points, dtype=np.uint64)) \
                if per_point else None
            launch(self.points, self.labels, self.n_points, 0, acc, 0, 0, hashes)
            lc.reduce_chunks(acc, R, fold, out)
            out.copy_to_host(host)
            return np.array(host), (hashes.copy_to_host() if per_point else None)
        B = max(chunk, self.batch_points // chunk * chunk)          # batches start on chunk bounds
        streams = self._buffers(("streams",), lambda: [cuda.stream() for _ in range(2)])
        ring = self._buffers(("ring", B), lambda: [
            (cuda.pinned_array((B, self.width), dtype=self.dtype), cuda.pinned_array(B, dtype=np.int64),
             cuda.device_array((B, self.width), dtype=self.dtype), cuda.device_array(B, dtype=np.int64),
             cuda.device_array(B, dtype=np.uint64), cuda.pinned_array(B, dtype=np.uint64)) for _ in range(2)])
        all_hashes = np.empty(self.n_points, dtype=np.uint64) if per_point else None
        cuda.synchronize()                      # the zeroed sums (or the last pass's fold), before two other streams
        pending = [None, None]                  # per stream: the batch whose hashes are on their way back
        for b, a in enumerate(range(0, self.n_points, B)):
            s, z = b % 2, min(a + B, self.n_points)
            host_pts, host_lab, pts, lab, hsh, host_hsh = ring[s]
            streams[s].synchronize()            # the stream's previous batch is done with its buffers
            _take_hashes(pending, s, host_hsh, all_hashes)
            n = z - a
            host_pts[:n] = self.points[a:z]
            host_lab[:n] = self.labels[a:z]
            pts[:n].copy_to_device(host_pts[:n], stream=streams[s])
            lab[:n].copy_to_device(host_lab[:n], stream=streams[s])
            launch(pts, lab, n, a // chunk, acc, s, streams[s], hsh if per_point else None)
            if per_point:
                hsh[:n].copy_to_host(host_hsh[:n], stream=streams[s])
                pending[s] = (a, z)
        cuda.synchronize()
        for s in range(2):
            _take_hashes(pending, s, ring[s][5], all_hashes)
        lc.reduce_chunks(acc, R, fold, out)
        out.copy_to_host(host)
        return np.array(host), all_hashes

    def _sweep_scratch(self, G, T, L, Mp, R, dtype, n_streams):
        """Per stream: z, act, u, r in the sweep dtype and rr (float64), the generic kernels' scratch
        (one set per stream: kernels of two streams run at once)."""
        cuda = self._cuda

        def make():
            sets = []
            for _ in range(n_streams):
                z = cuda.to_device(np.zeros((G, L + 1, Mp, T), dtype=dtype))    # padding rows stay zero
                sets.append((z, cuda.device_array((G, L, Mp, T), dtype=dtype),
                             cuda.to_device(np.zeros((G, 2, Mp, T), dtype=dtype)),
                             cuda.device_array((G, R, T), dtype=dtype), cuda.device_array((G, T), dtype=np.float64)))
            return sets
        return self._buffers(("sweep", G, T, L, Mp, R, np.dtype(dtype).name), make)

    def _gradient_pass(self, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, moments, second,
                       frozen=None):
        """The gradient (and, with ``moments``, statistics) sums: dict name -> array (S, ...), padded to
        the width of ``cw``. ``frozen``: (patterns (N, L, W) uint64, flags (N,) uint8) on the device,
        resident points only: the frozen-pattern pass of the kink integrator (``backends.cuda_frozen``).
        The kernel compiled for the shape (``kernels.cuda.sweep``) where its block fits in shared
        memory and no moments are asked for, else the generic one (``kernels.cuda.gradient``)."""
        from ..kernels.cuda import sweep
        L, M, P = cw.shape[0], self.width, out_w.shape[0]
        shape = None if moments else sweep.plan(cw.dtype.name, M, L, P, bool(output_cost), int(n_slots),
                                                frozen is not None)
        if shape is None:
            return self._generic_gradient_pass(targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots,
                                               moments, second, frozen)
        return self._specialised_gradient_pass(shape, targets, cw, cb, inv, back, out_w, out_b, frozen)

    def _specialised_gradient_pass(self, shape, targets, cw, cb, inv, back, out_w, out_b, frozen):
        """The gradient sums with ``kernels.cuda.sweep``'s kernel for ``shape``: the parameters go up in
        one packed copy, the sums come down in one; every buffer is kept from the first pass."""
        from ..kernels.cuda import launch as lc
        from ..kernels.cuda import sweep
        cuda = self._cuda
        M, L, P, S, T = shape.M, shape.L, shape.P, shape.S, shape.T
        lay = sweep.layout(M, L, P)
        K = lay["K"]
        chunk, R = lc.chunking(self.n_points, S * K * 8)
        kernel = sweep.build(shape)
        size = sweep.param_offsets(M, L, P)["targets"] + targets.shape[0] * (P if P else M)
        host_par = self._buffers(("params host", shape, size), lambda: cuda.pinned_array(size, dtype=cw.dtype))
        par = self._buffers(("params", shape, size), lambda: cuda.device_array(size, dtype=cw.dtype))
        sweep.pack(cw, cb, inv, back, out_w, out_b, targets, M, out=host_par)
        par.copy_to_device(host_par)
        pats, flags = frozen if frozen is not None else self._buffers(("unused",), lambda: (
            cuda.device_array((1, 1, 1), dtype=np.uint64), cuda.device_array(1, dtype=np.uint8)))

        def launch(points, labels, n, base, acc, _, stream, __):
            n_chunks = -(-n // chunk)
            kernel[n_chunks, T, stream](points, labels, n, base, chunk // T, par, acc, pats, flags)

        sums, _ = self._run(("sweep", shape, R), chunk, (R, S, K), launch, writes_rows=S == 1)
        Mp = cw.shape[1]
        out = {"sq": sums[:, 0], "g_ob": sums[:, lay["g_ob"]:lay["g_ob"] + P]}
        out["g_ow"] = np.zeros((S, P, Mp))
        out["g_ow"][:, :, :M] = sums[:, 1:1 + P * M].reshape(S, P, M)
        layers = sums[:, lay["top"]:].reshape(S, L, M * M + M)
        out["g_w"], out["g_b"] = np.zeros((S, L, Mp, Mp)), np.zeros((S, L, Mp))
        out["g_w"][:, :, :M, :M] = layers[:, :, :M * M].reshape(S, L, M, M)
        out["g_b"][:, :, :M] = layers[:, :, M * M:]
        return out

    def _gradient_plan(self, L, Mp, P, dtype, S, moments, second, frozen=False):
        """(layout, chunking, G, T, kernel, scratch, offsets on the device) of a generic gradient pass of
        this shape: made at its first pass and kept, so an evaluation of a flow only uploads its parameters."""
        from ..kernels.cuda import gradient as gk
        from ..kernels.cuda import launch as lc

        def make():
            lay = gk.layout(L, Mp, self.width, P, moments, second)
            chunk, R = lc.chunking(self.n_points, S * lay["K"] * 8)
            G, T = lc.blocks(R), lc.threads()
            scratch = self._sweep_scratch(G, T, L, Mp, max(Mp, P), dtype, 1 if self.resident else 2)
            names = ("g_w", "g_b", "g_ow", "g_ob", "truncated", "free1", "con1", "free2", "con2")
            offsets = self._cuda.to_device(np.array([lay.get(name, 0) for name in names], dtype=np.int64))
            unused = self._cuda.device_array((1, 1, 1), dtype=np.uint64), self._cuda.device_array(1, dtype=np.uint8)
            return lay, (chunk, R), G, T, gk.build(dtype.name, frozen), scratch, offsets, unused
        return self._buffers(("gradient plan", L, Mp, P, dtype.name, S, moments, second, frozen), make)

    def _generic_gradient_pass(self, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, moments,
                               second, frozen):
        """``_gradient_pass`` with the generic kernel (every width, the statistics' moments)."""
        cuda = self._cuda
        L, Mp, M, P = cw.shape[0], cw.shape[1], self.width, out_w.shape[0]
        dtype, S = cw.dtype, int(n_slots)
        lay, (chunk, R), G, T, kernel, scratch, offsets, unused = self._gradient_plan(
            L, Mp, P, dtype, S, bool(moments), bool(second), frozen is not None)
        pats, flags = unused if frozen is None else frozen
        K = lay["K"]
        d = [cuda.to_device(np.ascontiguousarray(a)) for a in (targets, cw, cb, inv, back, out_w, out_b)] + [offsets]
        zero = dtype.type(0)

        def launch(points, labels, n, base, acc, s, stream, _):
            z, act, u, r, rr = scratch[s]
            kernel[G, T, stream](points, labels, n, base, chunk // T, d[0], d[1], d[2], d[3], d[4], d[5], d[6],
                                 bool(output_cost), S > 1, bool(moments), bool(second), M, d[7], z, act, u, r, rr,
                                 zero, acc, pats, flags)

        sums, _ = self._run(("gradient", S, K, R), chunk, (R, S, K), launch)
        shapes = {"sq": (), "g_w": (L, Mp, Mp), "g_b": (L, Mp), "g_ow": (P, Mp), "g_ob": (P,),
                  "truncated": (L, M), "free1": (L, M, M), "con1": (L, M, M), "free2": (L, M, M, M),
                  "con2": (L, M, M, M)}
        out = {}
        for name, shape in shapes.items():
            if name in lay:
                size = int(np.prod(shape, dtype=np.int64))
                out[name] = sums[:, lay[name]:lay[name] + size].reshape((S,) + shape)
        return out

    def gradient_sums(self, arrays: tuple, output_cost: bool, n_slots: int, chunk: int) -> tuple:
        """Per-"chunk" (sq, g_w, g_b, g_ow, g_ob): the CUDA gradient pass, its sums as one chunk."""
        s = self._gradient_pass(*arrays, output_cost, n_slots, False, False)
        return tuple(s[name][None] for name in ("sq", "g_w", "g_b", "g_ow", "g_ob"))

    def statistics_sums(self, arrays: tuple, output_cost: bool, n_clusters: int, second: bool, chunk: int) -> tuple:
        """The statistics pass (the gradient kernel with moments), laid out as ``kernels.statistics``'s."""
        Q = n_clusters
        s = self._gradient_pass(*arrays, output_cost, Q, True, second)
        M = self.width
        moved = [np.rint(s["truncated"]).astype(np.int64).swapaxes(0, 1), s["free1"].swapaxes(0, 1),
                 s["con1"].swapaxes(0, 1)]
        if second:
            moved += [s["free2"].swapaxes(0, 1), s["con2"].swapaxes(0, 1)]
        else:
            moved += [np.zeros((0, Q, M, M, M)), np.zeros((0, Q, M, M, M))]
        return tuple(a[None] for a in [s["sq"], s["g_w"], s["g_b"], s["g_ow"], s["g_ob"], *moved])

    def cluster_sums(self, n_clusters: int, chunk: int):
        return self._cluster_sums(n_clusters)[None]

    def _cluster_sums(self, n_clusters: int) -> np.ndarray:
        from ..kernels.cuda import launch as lc
        from ..kernels.cuda.observe import cluster_sums_kernel
        Q, M = int(n_clusters), self.width
        chunk, R = lc.chunking(self.n_points, Q * M * 8)
        G, T = lc.blocks(R), lc.threads()

        def launch(points, labels, n, base, acc, s, stream, _):
            cluster_sums_kernel[G, T, stream](points, labels, n, base, chunk // T, acc)

        sums, _ = self._run(("cluster_sums", Q, M, R), chunk, (R, Q, M), launch)
        return sums

    def observe(self, targets, shift, cw, cb, et, ow, ob, output_cost: bool, Q: int, chunk: int):
        """The observation pass: (sums with a leading axis of one "chunk", the distinct pattern
        hashes sorted, the per-point hashes (N,) uint64 on the host)."""
        from ..kernels.cuda import launch as lc
        from ..kernels.cuda import observe as ok
        cuda = self._cuda
        L, M = cw.shape[0], self.width
        Mp, P = padded_width(M), ow.shape[0]
        # the tiled kernels' padded layout (compute.tile_arrays): A^(l) from its transposed columns
        cwp, cbp, invp = (pad_to_width(cw, Mp, (1, 2)), pad_to_width(cb, Mp, (1,)),
                          pad_to_width(np.swapaxes(et, 1, 2), Mp, (1, 2)))
        K = ok.row_size(L, M)
        chunk, R = lc.chunking(self.n_points, Q * K * 8)
        G, T = lc.blocks(R), lc.threads()
        kernel = ok.build()
        scratch = self._sweep_scratch(G, T, L, Mp, Mp, np.dtype(np.float64), 1 if self.resident else 2)
        d = [cuda.to_device(np.ascontiguousarray(a, dtype=np.float64))
             for a in (targets, shift, cwp, cbp, invp, ow, ob)]

        def launch(points, labels, n, base, acc, s, stream, hashes):
            z, act, _, _, rr = scratch[s]
            kernel[G, T, stream](points, labels, n, base, chunk // T, d[0], d[1], d[2], d[3], d[4], d[5], d[6], bool(output_cost),
                                 z, act, rr, np.float64(0.0), hashes, acc)

        sums, hashes = self._run(("observe", Q, K, R), chunk, (R, Q, K), launch, per_point=True)
        # a row: sq | truncated (L, M) | any_trunc (L) | all_trunc (L) | s1 (L, M) | s2 (L, M)
        sq, LM = sums[:, 0], L * M
        count = lambda a: np.rint(a).astype(np.int64)
        truncated = count(sums[:, 1:1 + LM].reshape(Q, L, M)).swapaxes(0, 1)
        any_trunc = count(sums[:, 1 + LM:1 + LM + L]).T
        all_trunc = count(sums[:, 1 + LM + L:1 + LM + 2 * L]).T
        s1 = sums[:, 1 + LM + 2 * L:1 + 2 * LM + 2 * L].reshape(Q, L, M).swapaxes(0, 1)
        s2 = sums[:, 1 + 2 * LM + 2 * L:].reshape(Q, L, M).swapaxes(0, 1)
        parts = tuple(np.ascontiguousarray(a)[None] for a in (sq, truncated, any_trunc, all_trunc, s1, s2))
        return parts, np.sort(np.unique(hashes)), hashes


def _take_hashes(pending, s, host_hashes, all_hashes):
    """Copy stream s's last batch of hashes (its pinned buffer, after the stream is done) into place."""
    if pending[s] is not None:
        a, z = pending[s]
        all_hashes[a:z] = host_hashes[:z - a]
        pending[s] = None


def _on_device(what: str, make):
    """``make()``, with the GPU's out-of-memory error turned into a MemoryError naming ``what``."""
    try:
        return make()
    except Exception as exc:
        if "OUT_OF_MEMORY" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        raise MemoryError(f"the GPU has no room for {what}: {type(exc).__name__}: {exc} (stream the points with "
                          f"dataset.to('cuda', batch_points=...), or free device memory)") from None
