"""The CUDA backend: a dataset whose points live on a GPU, every pass run there (issue 13).

:class:`DeviceDataset` (made by ``dataset.to("cuda")``, see :mod:`truncflow.device`) implements
the named operations of ``truncflow.backends.base`` with the CUDA kernels of
:mod:`truncflow.kernels.cuda`; each returns its sums, added in a fixed order, as one "chunk".

Two placements:
  resident  the points and labels live in device memory for as long as the dataset;
  streamed  when they do not fit (or when ``batch_points`` is given): they stay in pinned
            host memory and every pass streams them in batches of ``batch_points``
            points on two CUDA streams, the copy of one batch overlapping the kernel of
            the other. Each stream adds into its own per-block sums; the sums are added
            in a fixed order, so the result differs from the resident one by the order
            of summation only.

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

CUDA = Capabilities(
    name="CUDA", where="on a GPU", points_here=False, serial_steps=False, checkpoints=False,
    methods=frozenset({"rk45", "gd", "sgd", "kinks"}), float32=True, ensembles=False,
    operations=frozenset(OPERATIONS + FROZEN_PASSES),
    bring_here="use dataset.to('cpu')")


class DeviceDataset(DatasetElsewhere, Backend):
    """A :class:`truncflow.Dataset` whose points live on a GPU (made by ``dataset.to("cuda")``).

    It has the Dataset's read-only attributes (``targets``, ``class_ids``, ``counts``,
    ``n_points``, ``width``, ``n_clusters``, ``dtype``); ``points`` and ``labels`` are
    Numba device arrays when resident, pinned host arrays when streamed
    (``resident``, ``batch_points``). ``to("cpu")`` gives a :class:`truncflow.Dataset` back.
    """

    capabilities = CUDA

    def __init__(self, cuda, dataset: Dataset, batch_points: int | None):
        self._cuda = cuda
        self.targets, self.class_ids, self._counts = dataset.targets, dataset.class_ids, dataset.counts
        self._n_points, self._width = dataset.n_points, dataset.width
        self.dtype = dataset.points.dtype
        N, M = self._n_points, self._width
        need = N * (M * self.dtype.itemsize + 8)
        free = cuda.current_context().get_memory_info()[0]
        self.resident = batch_points is None and need <= RESIDENT_FRACTION * free
        if self.resident:
            self.points, self.labels = _on_device(f"the points ({format_bytes(need)})", lambda: (
                cuda.to_device(np.ascontiguousarray(dataset.points)),
                cuda.to_device(np.ascontiguousarray(dataset.labels))))
            self.batch_points = N
        else:
            if batch_points is None:
                batch_points = min(DEFAULT_BATCH, max(1, int(free * RESIDENT_FRACTION / 2 / (M * 16 + 8))))
            self.batch_points = min(int(batch_points), N)
            try:
                self.points = cuda.pinned_array((N, M), dtype=self.dtype)
                self.labels = cuda.pinned_array((N,), dtype=np.int64)
            except Exception as exc:   # the host cannot pin that much
                raise MemoryError(f"cannot pin {format_bytes(need)} of host memory for streaming the points to "
                                  f"the GPU ({type(exc).__name__}: {exc})") from None
            for a in range(0, N, 1 << 22):          # blockwise: a memory-mapped source is read once
                self.points[a:a + (1 << 22)] = dataset.points[a:a + (1 << 22)]
            self.labels[:] = dataset.labels
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
    def _batches(self):
        """(start, stop) of each batch of the points."""
        b = self.batch_points
        return [(a, min(a + b, self.n_points)) for a in range(0, self.n_points, b)]

    def _buffers(self, key, make):
        """Scratch made once per (pass kind, shapes) and kept: no allocation per evaluation."""
        if key not in self._scratch:
            self._scratch[key] = _on_device(f"the scratch of a pass ({key[0]})", make)
        return self._scratch[key]

    def _run(self, key, n_rows, launch, per_point=False):
        """Launch a pass: ``launch(points, labels, n, acc, scratch_index, stream, hashes)`` per
        batch, on one or two streams, into per-stream sums acc (G, S, K) = ``n_rows`` (kept under
        ``key``); returns the sums of all rows added in a fixed order, (S, K) float64, and with
        ``per_point`` the pattern hashes (N,) uint64 the kernel wrote."""
        from ..kernels.cuda import launch as lc
        cuda = self._cuda
        G, S, K = n_rows
        n_streams = 1 if self.resident else 2
        acc = self._buffers(("acc",) + key, lambda: cuda.device_array((n_streams * G, S, K), dtype=np.float64))
        lc.zero(acc)
        if self.resident:
            hashes = cuda.device_array(self.n_points, dtype=np.uint64) if per_point else None
            launch(self.points, self.labels, self.n_points, acc[:G], 0, 0, hashes)
            cuda.synchronize()
            sums = lc.reduce_rows(acc)
            return sums, (hashes.copy_to_host() if per_point else None)
        cuda.synchronize()              # the zeroed sums, before two other streams add into them
        streams = self._buffers(("streams",), lambda: [cuda.stream() for _ in range(2)])
        B, M = self.batch_points, self.width
        staging = self._buffers(("staging",), lambda: [
            (cuda.device_array((B, M), dtype=self.dtype), cuda.device_array(B, dtype=np.int64),
             cuda.device_array(B, dtype=np.uint64)) for _ in range(2)])
        host_hashes = self._buffers(("hashes",), lambda: cuda.pinned_array(self.n_points, dtype=np.uint64)) \
            if per_point else None
        for b, (a, z) in enumerate(self._batches()):
            s = b % 2
            pts, lab, hsh = staging[s]
            n = z - a
            pts[:n].copy_to_device(self.points[a:z], stream=streams[s])
            lab[:n].copy_to_device(self.labels[a:z], stream=streams[s])
            launch(pts, lab, n, acc[s * G:(s + 1) * G], s, streams[s], hsh if per_point else None)
            if per_point:
                hsh[:n].copy_to_host(host_hashes[a:z], stream=streams[s])
        cuda.synchronize()
        sums = lc.reduce_rows(acc)
        return sums, (np.array(host_hashes) if per_point else None)

    def _sweep_scratch(self, G, T, L, Mp, R, dtype, n_streams):
        """Per stream: z, act, u, r in the sweep dtype and rr (float64), the kernels' scratch (one set
        per stream: kernels of two streams run at once)."""
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

    def _gradient_plan(self, L, Mp, P, dtype, S, moments, second, frozen=False):
        """(layout, G, T, kernel, scratch, offsets on the device) of a gradient pass of this shape:
        made at its first pass and kept, so an evaluation of a flow only uploads its parameters."""
        from ..kernels.cuda import gradient as gk
        from ..kernels.cuda.launch import geometry

        def make():
            lay = gk.layout(L, Mp, self.width, P, moments, second)
            G, T = geometry(self.n_points, S * lay["K"] * 8)
            scratch = self._sweep_scratch(G, T, L, Mp, max(Mp, P), dtype, 1 if self.resident else 2)
            names = ("g_w", "g_b", "g_ow", "g_ob", "truncated", "free1", "con1", "free2", "con2")
            offsets = self._cuda.to_device(np.array([lay.get(name, 0) for name in names], dtype=np.int64))
            unused = self._cuda.device_array((1, 1, 1), dtype=np.uint64), self._cuda.device_array(1, dtype=np.uint8)
            return lay, G, T, gk.build(dtype.name, frozen), scratch, offsets, unused
        return self._buffers(("gradient plan", L, Mp, P, dtype.name, S, moments, second, frozen), make)

    def _gradient_pass(self, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, moments, second,
                       frozen=None):
        """The gradient (and, with ``moments``, statistics) sums: dict name -> array (S, ...).
        ``frozen``: (patterns (N, L, W) uint64, flags (N,) uint8) on the device, resident points
        only: the frozen-pattern pass of the kink integrator (``backends.cuda_frozen``)."""
        cuda = self._cuda
        L, Mp, M, P = cw.shape[0], cw.shape[1], self.width, out_w.shape[0]
        dtype, S = cw.dtype, int(n_slots)
        lay, G, T, kernel, scratch, offsets, unused = self._gradient_plan(L, Mp, P, dtype, S, bool(moments),
                                                                          bool(second), frozen is not None)
        pats, flags = unused if frozen is None else frozen
        K = lay["K"]
        # per evaluation only the parameters go up
        d = [cuda.to_device(np.ascontiguousarray(a)) for a in (targets, cw, cb, inv, back, out_w, out_b)] + [offsets]
        zero = dtype.type(0)

        def launch(points, labels, n, acc, s, stream, _):
            z, act, u, r, rr = scratch[s]
            kernel[G, T, stream](points, labels, n, d[0], d[1], d[2], d[3], d[4], d[5], d[6], bool(output_cost),
                                 S > 1, bool(moments), bool(second), M, d[7], z, act, u, r, rr, zero, acc, pats,
                                 flags)

        sums, _ = self._run(("gradient", G, S, K), (G, S, K), launch)
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
        from ..kernels.cuda.launch import geometry
        from ..kernels.cuda.observe import cluster_sums_kernel
        Q, M = int(n_clusters), self.width
        G, T = geometry(self.n_points, Q * M * 8)

        def launch(points, labels, n, acc, s, stream, _):
            cluster_sums_kernel[G, T, stream](points, labels, n, acc)

        sums, _ = self._run(("cluster_sums", G, Q, M), (G, Q, M), launch)
        return sums

    def observe(self, targets, shift, cw, cb, et, ow, ob, output_cost: bool, Q: int, chunk: int):
        """The observation pass: (sums with a leading axis of one "chunk", the distinct pattern
        hashes sorted, the per-point hashes (N,) uint64 on the host)."""
        from ..kernels.cuda import observe as ok
        from ..kernels.cuda.launch import geometry
        cuda = self._cuda
        L, M = cw.shape[0], self.width
        Mp, P = padded_width(M), ow.shape[0]
        # the tiled kernels' padded layout (compute.tile_arrays): A^(l) from its transposed columns
        cwp, cbp, invp = (pad_to_width(cw, Mp, (1, 2)), pad_to_width(cb, Mp, (1,)),
                          pad_to_width(np.swapaxes(et, 1, 2), Mp, (1, 2)))
        K = ok.row_size(L, M)
        G, T = geometry(self.n_points, Q * K * 8)
        kernel = ok.build()
        scratch = self._sweep_scratch(G, T, L, Mp, Mp, np.dtype(np.float64), 1 if self.resident else 2)
        d = [cuda.to_device(np.ascontiguousarray(a, dtype=np.float64))
             for a in (targets, shift, cwp, cbp, invp, ow, ob)]

        def launch(points, labels, n, acc, s, stream, hashes):
            z, act, _, _, rr = scratch[s]
            kernel[G, T, stream](points, labels, n, d[0], d[1], d[2], d[3], d[4], d[5], d[6], bool(output_cost),
                                 z, act, rr, np.float64(0.0), hashes, acc)

        sums, hashes = self._run(("observe", G, Q, K), (G, Q, K), launch, per_point=True)
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


def _on_device(what: str, make):
    """``make()``, with the GPU's out-of-memory error turned into a MemoryError naming ``what``."""
    try:
        return make()
    except Exception as exc:
        if "OUT_OF_MEMORY" not in str(exc) and "out of memory" not in str(exc).lower():
            raise
        raise MemoryError(f"the GPU has no room for {what}: {type(exc).__name__}: {exc} (stream the points with "
                          f"dataset.to('cuda', batch_points=...), or free device memory)") from None
