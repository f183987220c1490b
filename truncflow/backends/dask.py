"""The Dask backend: datasets on a Dask cluster, the same flows, bit for bit, over data no one machine holds (issue 14).

:func:`distribute` splits the points into *partitions* of whole chunks of truncflow's
fixed chunking (``kernels.config.chunk_size``: the chunking depends on N only) and
persists them on the workers of a ``distributed.Client`` for as long as the
:class:`DistributedDataset` lives. Every pass over the points is then one task per
partition: the worker runs the same serial Numba kernel as one process would run
on those chunks, and sends back the per-chunk partial sums; the client concatenates
them in partition order, which is the global chunk order, and adds them as one
process does. So ``gradient``, ``cost``, ``cluster_statistics``, ``observe`` and
``simulate`` give the same bits on a cluster as on one process. Per pass only the
parameters (L*M^2 numbers) go out and the per-chunk sums (a few KB) come back.

Threads. A task runs its kernel without a parallel region, so a worker with t Dask
threads runs t kernels on t threads, never more (Numba's threading layer is not
shared between Dask threads).

Faults. Each partition is a task whose inputs are its source (a slice of the
client's array, rows of a ``.npy`` file, blocks of a ``dask.array``): when a worker
dies, Dask computes the partitions it held again from their source and runs the
lost tasks again, and the pass returns the same sums. When the cluster cannot
finish a pass within ``timeout`` seconds (no worker left, a source that cannot be
read) the pass raises :class:`ClusterError`; ``simulate`` then stops with status
``failed`` and returns what it recorded.

Dask is an optional dependency: ``pip install "truncflow[distributed]"``.
"""
from __future__ import annotations

import importlib
import operator
import os
import warnings

import numpy as np

from .._validate import format_bytes
from ..data import (Dataset, DatasetElsewhere, EmptyClusterWarning, _check_class_ids, _require_in_range,
                    check_labels, check_points, check_targets, warn_empty_clusters)
from ..kernels import config
from ..kernels.gradient import gradient_kernel_serial
from ..kernels.observe import cluster_sums_kernel, observe_kernel_serial
from ..kernels.statistics import statistics_kernel_serial
from .base import FROZEN_PASSES, OPERATIONS, Backend, Capabilities, register_placement

__all__ = ["distribute", "DistributedDataset", "ClusterError", "require_dask", "describe_cluster", "DASK"]

INSTALL = 'pip install "truncflow[distributed]"'

DASK = Capabilities(
    name="Dask", where="on a Dask cluster", points_here=False, serial_steps=False, checkpoints=False,
    methods=frozenset({"rk45", "gd", "sgd", "kinks"}), float32=True, ensembles=False,
    operations=frozenset(OPERATIONS + FROZEN_PASSES),
    bring_here="use a local truncflow.Dataset (DistributedDataset.gather() makes one, if it fits)")


class ClusterError(RuntimeError):
    """The Dask cluster could not finish a pass over the points (workers lost for good, a
    source that cannot be read, a pass that did not finish within the dataset's timeout)."""


def require_dask():
    """(dask.array, distributed), or an ImportError that says what to install."""
    try:
        import dask.array as da
        import distributed
    except ImportError as exc:
        raise ImportError(f"truncflow's Dask backend needs the package {exc.name!r}, which is not installed: "
                          f"{INSTALL}") from None
    return da, distributed


# ------------------------------------------------------------------ worker side
def _npy_rows(filename, dtype, shape, offset, order, start, stop):
    """Rows start..stop of a ``.npy`` file (read on the worker: the file never passes through the client)."""
    data = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape), order=order)
    return np.array(data[start:stop])


def _checked_partition(points, labels, n_clusters, start):
    """(points, labels int64, summary) of one partition, checked as :class:`truncflow.Dataset`
    checks its arrays; summary = {"counts": (Q,) int64} or {"error": message}."""
    try:
        pts = check_points(np.asarray(points))
        lab = check_labels(np.asarray(labels), pts.shape[0])
        _require_in_range(lab, n_clusters)
    except ValueError as exc:
        return None, None, {"error": f"{exc} (index within the partition starting at row {start})"}
    pts = np.ascontiguousarray(pts)
    pts.setflags(write=False)
    lab.setflags(write=False)
    return pts, lab, {"counts": np.bincount(lab, minlength=n_clusters)}


def _partition_pass(part, kernel, args):
    """``kernel(points, labels, *args)`` on one partition: its per-chunk results. ``kernel`` is
    (module, name) of a serial kernel: a Numba dispatcher sent by value would be pickled
    with its function's code at every pass."""
    return getattr(importlib.import_module(kernel[0]), kernel[1])(part[0], part[1], *args)


def _observe_partition(part, args):
    """The observation kernel on one partition: (per-chunk sums, pattern hashes (n,) uint64,
    the distinct hashes)."""
    hashes = np.empty(part[0].shape[0], dtype=np.uint64)
    sums = observe_kernel_serial(part[0], part[1], *args, hashes)
    return sums, hashes, np.unique(hashes)


def _rows(part, idx):
    return np.asarray(part[0][idx], dtype=np.float64), np.array(part[1][idx])


def _count_changes(new, old):
    return int(np.count_nonzero(new != old))


# ------------------------------------------------------------------ client side
class DistributedDataset(DatasetElsewhere, Backend):
    """A :class:`truncflow.Dataset` whose points live on the workers of a Dask cluster.

    Made by :func:`distribute`. It has the Dataset's read-only attributes (``targets``,
    ``class_ids``, ``counts``, ``n_points``, ``width``, ``n_clusters``, ``dtype``) and
    ``points`` and ``labels`` as ``dask.array`` views of the persisted partitions (use
    :meth:`gather` for a local :class:`truncflow.Dataset`, if it fits). Accepted by
    ``cost``, ``gradient``, ``cluster_statistics``, ``observe`` and ``simulate``
    (``method`` "rk45", "kinks", "gd" or "sgd").

    The Dask backend: each named operation (``truncflow.backends.base``) sends the same serial
    kernel, by name, to every partition and concatenates the per-chunk results in partition
    (= chunk) order.
    """

    capabilities = DASK

    def __init__(self, client, parts, bounds, n_points, width, dtype, targets, class_ids, counts, chunk, timeout):
        self.client = client
        self._parts = parts                # futures of (points, labels, summary), in row order
        self.bounds = bounds               # [(start, stop)] of each partition
        self._n_points, self._width, self.dtype = n_points, width, np.dtype(dtype)
        self.targets, self.class_ids, self._counts = targets, class_ids, counts
        self.chunk = chunk                 # the chunking the partitions are made of
        self.timeout = timeout

    @property
    def n_partitions(self) -> int:
        return len(self._parts)

    @property
    def points(self):
        """(N, M) ``dask.array`` of the persisted points."""
        return self._dask_array(0, (self.width,), self.dtype)

    @property
    def labels(self):
        """(N,) int64 ``dask.array`` of the persisted labels."""
        return self._dask_array(1, (), np.int64)

    def _dask_array(self, item, tail, dtype):
        """A view of item 0 (points) or 1 (labels) of every partition, made once."""
        views = self.__dict__.setdefault("_views", {})
        if item not in views:
            views[item] = self.as_dask([self.client.submit(operator.getitem, f, item) for f in self._parts],
                                       tail, dtype)
        return views[item]

    def as_dask(self, futures, tail: tuple, dtype):
        """A ``dask.array`` of per-partition futures of arrays (rows of partition p: its bounds)."""
        da, _ = require_dask()
        return da.concatenate([da.from_delayed(f, (b - a,) + tail, dtype=dtype)
                               for f, (a, b) in zip(futures, self.bounds)])

    def __repr__(self) -> str:
        return (f"DistributedDataset(N={self.n_points}, M={self.width}, Q={self.n_clusters}, {self.dtype}, "
                f"{self.n_partitions} partitions of up to {self.bounds[0][1] - self.bounds[0][0]} points)")

    def __reduce__(self):
        raise TypeError("a DistributedDataset lives on its Dask cluster and cannot be pickled: send the "
                        "source of its points instead")

    # -------------------------------------------------------------- passes
    def _gather(self, futures, what: str):
        _, distributed = require_dask()
        try:
            distributed.wait(futures, timeout=self.timeout)
            return self.client.gather(futures)
        except Exception as exc:   # TimeoutError, KilledWorker, a lost scheduler, an unreadable source
            raise ClusterError(f"the Dask cluster could not finish {what} ({type(exc).__name__}: {exc})") from None

    def _require_chunking(self, chunk: int):
        if any(a % chunk for a, _ in self.bounds):
            raise ValueError(f"this pass sums the points in chunks of {chunk} (its per-chunk partial sums are "
                             f"large), which straddle the dataset's partitions (made of chunks of {self.chunk}): "
                             f"distribute the points again with partition_rows a multiple of {chunk}")

    def _serial_pass(self, serial_kernel, args: tuple, chunk: int) -> tuple:
        """The serial kernel on each partition, the per-chunk results concatenated in
        partition (= chunk) order: :meth:`truncflow.Dataset`'s pass, on the cluster."""
        self._require_chunking(chunk)
        ref = (serial_kernel.py_func.__module__, serial_kernel.py_func.__name__)
        futures = [self.client.submit(_partition_pass, part, ref, args, pure=False) for part in self._parts]
        results = self._gather(futures, f"a pass over the points ({serial_kernel.__name__})")
        if isinstance(results[0], np.ndarray):
            return np.concatenate(results)
        return tuple(np.concatenate([r[i] for r in results]) for i in range(len(results[0])))

    def gradient_sums(self, arrays: tuple, output_cost: bool, n_slots: int, chunk: int) -> tuple:
        return self._serial_pass(gradient_kernel_serial, (*arrays, output_cost, n_slots, chunk), chunk)

    def statistics_sums(self, arrays: tuple, output_cost: bool, n_clusters: int, second: bool, chunk: int) -> tuple:
        return self._serial_pass(statistics_kernel_serial, (*arrays, output_cost, n_clusters, second, chunk), chunk)

    def cluster_sums(self, n_clusters: int, chunk: int):
        return self._serial_pass(cluster_sums_kernel, (n_clusters, chunk), chunk)

    def observe(self, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost: bool, n_clusters: int, chunk: int):
        """The observation pass: (per-chunk sums, the distinct pattern hashes of every partition,
        sorted, the per-point hashes as a :class:`PartitionedHashes` that stays on the workers)."""
        self._require_chunking(chunk)
        args = (targets, shift, cw, cb, edges_t, out_w, out_b, output_cost, n_clusters, chunk)
        results = [self.client.submit(_observe_partition, part, args, pure=False) for part in self._parts]
        sums = [self.client.submit(operator.getitem, r, 0) for r in results]
        distinct = [self.client.submit(operator.getitem, r, 2) for r in results]
        hashes = [self.client.submit(operator.getitem, r, 1) for r in results]
        got = self._gather(sums + distinct, "the observation pass")
        sums, distinct = got[:len(results)], got[len(results):]
        parts = tuple(np.concatenate([s[i] for s in sums]) for i in range(len(sums[0])))
        return parts, np.sort(np.concatenate(distinct)), PartitionedHashes(self, hashes)

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`truncflow.Dataset.rows` for sorted row indices idx, gathered from the workers."""
        idx = np.asarray(idx, dtype=np.int64)
        futures, pieces = [], []
        for part, (a, b) in zip(self._parts, self.bounds):
            local = idx[(idx >= a) & (idx < b)] - a
            if local.size:
                futures.append(self.client.submit(_rows, part, local, pure=False))
        for pts, lab in self._gather(futures, "the rows of a data sample"):
            pieces.append((pts, lab))
        if not pieces:
            return np.zeros((0, self.width)), np.zeros(0, dtype=np.int64)
        return np.concatenate([p for p, _ in pieces]), np.concatenate([q for _, q in pieces])

    def with_targets(self, targets) -> "DistributedDataset":
        """The same persisted points and labels with other targets (same number of clusters)."""
        tgt = check_targets(targets)
        if tgt.shape[0] != self.n_clusters:
            raise ValueError(f"targets have {tgt.shape[0]} rows but this distributed dataset has "
                             f"Q = {self.n_clusters} clusters: distribute the points again for other clusters")
        return DistributedDataset(self.client, self._parts, self.bounds, self.n_points, self.width, self.dtype,
                                  tgt, self.class_ids, self.counts, self.chunk, self.timeout)

    def frozen_points(self, kern, chunk: int):
        """The kink integrator's per-point side on the workers (``backends.dask_frozen``)."""
        from .dask_frozen import DaskFrozenPoints
        return DaskFrozenPoints(self, kern, chunk)

    def gather(self):
        """A local :class:`truncflow.Dataset` of the same points, labels and targets (it must fit here)."""
        got = self._gather(list(self._parts), "gathering the points")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyClusterWarning)
            return Dataset(np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), self.targets,
                           self.class_ids)


class PartitionedHashes:
    """Per-point pattern hashes that stay on the workers, one future per partition."""

    def __init__(self, dataset: DistributedDataset, futures):
        self.dataset, self.futures = dataset, futures

    def count_changes(self, previous: "PartitionedHashes") -> int:
        """Points whose hash differs from ``previous`` (computed on the workers)."""
        ds = self.dataset
        futures = [ds.client.submit(_count_changes, a, b, pure=False) for a, b in zip(self.futures, previous.futures)]
        return int(sum(ds._gather(futures, "counting pattern changes")))

    def to_dask(self):
        """(N,) uint64 ``dask.array`` of the hashes."""
        return self.dataset.as_dask(self.futures, (), np.uint64)


def _source(points, labels, da):
    """(kind, N, M, dtype) of the points source and the labels' length; refuses what is not a source."""
    if isinstance(points, (str, os.PathLike)):
        raise ValueError("give the points as an array: np.load(path, mmap_mode='r') for a .npy file, or a "
                         "dask.array")
    if isinstance(points, da.Array):
        kind = "dask"
    elif isinstance(points, np.memmap) and getattr(points, "filename", None) and _whole_file(points):
        kind = "npy"
    elif isinstance(points, np.ndarray):
        kind = "numpy"
    else:
        raise ValueError(f"points must be a NumPy array, a memory-mapped .npy (np.load(..., mmap_mode='r')) or a "
                         f"dask.array, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"points have shape {points.shape}, expected (N, M) with N, M >= 1")
    if not (isinstance(labels, (np.ndarray, da.Array)) and labels.ndim == 1 and labels.shape[0] == points.shape[0]):
        raise ValueError(f"labels must be a NumPy array or dask.array of shape ({points.shape[0]},), one label per "
                         f"point; got {type(labels).__name__} of shape {getattr(labels, 'shape', None)}")
    dtype = points.dtype if points.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    return kind, points.shape[0], points.shape[1], dtype


def _whole_file(a: np.memmap) -> bool:
    """Whether a memmap is a whole file as np.load(..., mmap_mode="r") opens it (not a view of
    one: a slice or the columns of a table, which are sent from here like a NumPy array)."""
    return not isinstance(a.base, np.memmap) and (a.flags.c_contiguous or a.flags.f_contiguous)


def _memmap_spec(a: np.memmap):
    """(filename, dtype, shape, offset, order) of the file behind a memmap from np.load."""
    return a.filename, a.dtype.str, a.shape, a.offset, "F" if a.flags.f_contiguous and not a.flags.c_contiguous \
        else "C"


def _blocks(array, kind, bounds, client, da):
    """One future (or source value) per partition of ``array``'s rows."""
    if kind == "npy":
        spec = _memmap_spec(array)
        return [client.submit(_npy_rows, *spec, a, b, pure=False) for a, b in bounds]
    if kind == "dask":
        rows = tuple(b - a for a, b in bounds)
        chunks = (rows,) + tuple((n,) for n in array.shape[1:])
        delayed = array.rechunk(chunks).to_delayed().ravel()
        return list(client.compute(list(delayed)))
    return [np.asarray(array[a:b]) for a, b in bounds]       # a slice of the client's array, sent with its task


def distribute(points, labels, targets, client, *, class_ids=None, partition_rows: int | None = None,
               timeout: float = 600.0) -> DistributedDataset:
    """Spread a dataset over the workers of a Dask cluster, persisted there for the flows to come.

    Args:
        points: (N, M) float32 or float64 (other numbers become float64): a NumPy array
            (its partitions are sent from here), a memory-mapped ``.npy``
            (``np.load(path, mmap_mode="r")``: the workers read their rows from the file,
            which they must see at the same path), or a ``dask.array`` (e.g.
            ``da.from_zarr`` or ``da.from_npy_stack`` on shared storage: computed on the
            workers, never through this process).
        labels: (N,) cluster indices in [0, Q), a NumPy array or a ``dask.array``.
        targets: (Q, M) input-space or (Q, P) output targets.
        client: a ``distributed.Client``.
        class_ids: optional (Q,) original class IDs (as :class:`truncflow.Dataset`).
        partition_rows: points per partition, a multiple of the chunk size
            ``kernels.config.chunk_size(N)`` (default: the chunks shared out in about two
            partitions per worker thread).
        timeout: seconds a pass over the points may wait for the cluster before it fails
            with :class:`ClusterError`.
    Returns:
        a :class:`DistributedDataset`.
    Raises:
        ImportError: Dask is not installed (the message says what to install).
        ValueError: bad arrays (the message names the problem and, for a bad value, its row).
    """
    da, distributed = require_dask()
    if not isinstance(client, distributed.Client):
        raise ValueError(f"client must be a distributed.Client, got {type(client).__name__}")
    kind, N, M, dtype = _source(points, labels, da)
    tgt = check_targets(targets)
    Q = tgt.shape[0]
    ids = _check_class_ids(class_ids, Q)
    chunk = config.chunk_size(N)
    n_chunks = -(-N // chunk)
    if partition_rows is None:
        threads = max(1, sum(client.nthreads().values()))
        per = -(-n_chunks // min(n_chunks, 2 * threads))
        partition_rows = per * chunk
    elif isinstance(partition_rows, bool) or not isinstance(partition_rows, (int, np.integer)) \
            or partition_rows < chunk or partition_rows % chunk:
        raise ValueError(f"partition_rows must be a positive multiple of the chunk size {chunk} "
                         f"(kernels.config.chunk_size({N})), got {partition_rows!r}")
    partition_rows = int(partition_rows)
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    bounds = [(a, min(N, a + partition_rows)) for a in range(0, N, partition_rows)]
    point_blocks = _blocks(points, kind, bounds, client, da)
    label_kind = "dask" if isinstance(labels, da.Array) else "numpy"
    label_blocks = _blocks(labels, label_kind, bounds, client, da)
    parts = [client.submit(_checked_partition, p, lab, Q, a, pure=False)
             for p, lab, (a, _) in zip(point_blocks, label_blocks, bounds)]
    summaries = [client.submit(operator.getitem, part, 2, pure=False) for part in parts]
    dataset = DistributedDataset(client, parts, bounds, N, M, dtype, tgt, ids, None, chunk, float(timeout))
    got = dataset._gather(summaries, "checking the points")
    errors = [s["error"] for s in got if "error" in s]
    if errors:
        raise ValueError(errors[0])
    counts = np.sum([s["counts"] for s in got], axis=0).astype(np.int64)
    counts.setflags(write=False)
    warn_empty_clusters(counts, stacklevel=3)
    dataset._counts = counts
    return dataset


register_placement("distribute", distribute)


def describe_cluster(client) -> list[str]:
    """Lines describing the workers of a cluster: address, threads, memory limit."""
    info = client.scheduler_info()
    lines = [f"scheduler {info.get('address', '?')}: {len(info['workers'])} worker(s)"]
    for address, w in sorted(info["workers"].items()):
        lines.append(f"  {address}: {w.get('nthreads', '?')} thread(s), memory limit "
                     f"{format_bytes(w.get('memory_limit') or 0) if w.get('memory_limit') else 'none'}")
    return lines
