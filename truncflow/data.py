"""Training data: points, cluster labels and per-cluster targets; generators and loaders."""
from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._scratch import per_point_array
from ._validate import as_float_array, format_bytes, integer, require_finite, require_memory
from .backends.base import placement
from .backends.local import LocalBackend

__all__ = ["Dataset", "EmptyClusterWarning", "check_points", "check_labels", "encode_labels",
           "gaussian_clusters", "uniform_balls", "load_points"]

#: Largest magnitude a float label may have: it must convert to int64 exactly.
_INT64_LIMIT = 2.0 ** 63


class EmptyClusterWarning(UserWarning):
    """A Dataset has a cluster (a label value in [0, Q)) that no point carries."""


def check_points(points, width: int | None = None, name: str = "points") -> np.ndarray:
    """Validate an ``(N, M)`` array of points and return it without copying.

    float32 and float64 arrays in any memory layout are passed through as they are;
    other numeric dtypes are converted to float64. NaN/inf, a wrong number of
    dimensions, an empty array and a width other than ``width`` are refused.
    """
    pts = as_float_array(points, name, ndim=2, allow_float32=True)
    if pts.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {pts.shape}): need at least one point")
    if pts.shape[1] == 0:
        raise ValueError(f"{name} has shape {pts.shape}: points need at least one coordinate")
    if width is not None and pts.shape[1] != width:
        raise ValueError(f"{name} have width {pts.shape[1]} but the network has width M={width}")
    # One streaming reduction instead of an (N, M) boolean temporary; locate only on failure.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(pts, dtype=np.float64)
    if not np.isfinite(total):
        require_finite(pts, name)
    return pts


def check_labels(labels, n_points: int | None = None, name: str = "labels") -> np.ndarray:
    """Validate class labels and return them as a new (N,) int64 array.

    Accepted: any integer dtype (values within int64), and floats whose values are
    all finite and integral (as a .csv or a float table stores them: 2.0 is class 2).
    Refused with a ValueError naming the problem: booleans, strings, complex or
    object arrays, NaN/inf, non-integral floats (``labels[3] = 0.5``), values beyond
    int64, a shape other than ``(n_points,)``, and an empty array.
    """
    if labels is None:
        raise ValueError(f"{name} are missing")
    lab = np.asarray(labels)
    if n_points is not None and (lab.ndim != 1 or lab.shape[0] != n_points):
        raise ValueError(f"{name} have shape {lab.shape}, expected ({n_points},): one label per point")
    if lab.ndim != 1 or lab.size == 0:
        raise ValueError(f"{name} have shape {lab.shape}: need a non-empty 1-d array, one label per point")
    integral = np.issubdtype(lab.dtype, np.integer)
    if not (integral or np.issubdtype(lab.dtype, np.floating)):
        raise ValueError(f"{name} must be integers (an integer dtype, or floats with integral values), "
                         f"got dtype {lab.dtype}")
    if lab.dtype == np.int64 and not lab.flags.writeable and not isinstance(lab.base, np.ndarray):
        return lab      # a Dataset's own labels, or a read-only file of int64: nothing to convert or copy
    out = per_point_array(lab.shape[0], np.int64)
    for a in range(0, lab.shape[0], _LABEL_BLOCK):     # in blocks: no temporaries of size N
        out[a:a + _LABEL_BLOCK] = _check_label_block(lab[a:a + _LABEL_BLOCK], a, integral, name)
    return out


#: Labels checked and converted per block of this many (memory-mapped tables stay out of memory).
_LABEL_BLOCK = 1 << 22


def _check_label_block(lab: np.ndarray, offset: int, integral: bool, name: str) -> np.ndarray:
    if integral:
        if lab.dtype == np.uint64 and lab.max() > np.iinfo(np.int64).max:
            i = int(np.argmax(lab > np.iinfo(np.int64).max))
            raise ValueError(f"{name} must be integers within int64: {name}[{offset + i}] = {lab[i]}")
        return lab
    lab = lab.astype(np.float64)            # float16/float32 compared with 2^63 would overflow
    ok = np.isfinite(lab)
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(f"{name} must be integers: {name}[{offset + i}] = {float(lab[i])} (NaN or inf)")
    whole = (lab == np.round(lab)) & (np.abs(lab) < _INT64_LIMIT)
    if not whole.all():
        i = int(np.argmin(whole))
        raise ValueError(f"{name} must be integers: {name}[{offset + i}] = {float(lab[i])!r} is not an integer "
                         "within int64")
    return lab


def by_identity(items: list) -> tuple[np.ndarray, list]:
    """(index (B,) int64 into the distinct objects, the distinct objects in order of first
    appearance), objects told apart by identity: the members of an ensemble that share a
    dataset object have it stacked once."""
    index, distinct = {}, []
    for item in items:
        if id(item) not in index:
            index[id(item)] = len(distinct)
            distinct.append(item)
    return np.array([index[id(item)] for item in items], dtype=np.int64), distinct


def check_targets(targets) -> np.ndarray:
    """(Q, M) or (Q, P) targets as read-only C-contiguous float64, checked (shape, finite)."""
    tgt = as_float_array(targets, "targets", ndim=2)
    if tgt.shape[0] == 0 or tgt.shape[1] == 0:
        raise ValueError(f"targets have shape {tgt.shape}: need (Q, M) or (Q, P) with Q, P >= 1")
    require_finite(tgt, "targets")
    tgt = np.ascontiguousarray(tgt)
    tgt.setflags(write=False)
    return tgt


def warn_empty_clusters(counts: np.ndarray, stacklevel: int) -> None:
    """An :class:`EmptyClusterWarning` naming the clusters whose count is zero, if any."""
    if counts.all():
        return
    empty = np.flatnonzero(counts == 0)
    warnings.warn(EmptyClusterWarning(
        f"{empty.size} of the {counts.size} clusters have no points: cluster(s) {_id_list(empty)} (no label "
        f"takes these values); their cost and gradient are zero and their fractions NaN"), stacklevel=stacklevel)


def encode_labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary integer class IDs to clusters 0..Q-1, in sorted order of the IDs.

    Args:
        labels: (N,) class IDs, checked by :func:`check_labels` (any integers, e.g.
            {1, 2} or {-3, 10**6}).
    Returns:
        ``(codes (N,) int64 in [0, Q), read-only, class_ids (Q,) int64)``: the distinct IDs sorted,
        and each point's index into them, so ``class_ids[codes] == labels``. Every
        cluster 0..Q-1 has at least one point.
    """
    lab = check_labels(labels)
    blocks = range(0, lab.shape[0], _LABEL_BLOCK)          # in blocks: no sort of all N labels
    class_ids = np.unique(np.concatenate([np.unique(lab[a:a + _LABEL_BLOCK]) for a in blocks]))
    if class_ids[0] == 0 and class_ids[-1] == class_ids.size - 1:
        codes = lab if lab is not labels else lab.copy()          # already 0..Q-1
    else:
        codes = per_point_array(lab.shape[0], np.int64)
        for a in blocks:
            codes[a:a + _LABEL_BLOCK] = np.searchsorted(class_ids, lab[a:a + _LABEL_BLOCK])
    codes.setflags(write=False)         # a Dataset takes them without a copy
    return codes, class_ids


def _check_class_ids(class_ids, n_clusters: int) -> np.ndarray:
    """(Q,) int64 distinct class IDs, read-only; ``arange(Q)`` when None."""
    if class_ids is None:
        ids = np.arange(n_clusters, dtype=np.int64)
    else:
        ids = check_labels(class_ids, name="class_ids")
        if ids.shape != (n_clusters,):
            raise ValueError(f"class_ids have shape {ids.shape}, expected ({n_clusters},): one ID per cluster "
                             f"(Q = targets.shape[0])")
        if np.unique(ids).size != n_clusters:
            raise ValueError(f"class_ids must be distinct, got {ids.tolist()[:20]}")
    ids.setflags(write=False)
    return ids


def _id_list(ids: np.ndarray, limit: int = 8) -> str:
    """'1, 2, 5' or '0, 1, 2, ..., 999' for messages."""
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids)) if len(ids) <= limit else \
        ", ".join(map(str, ids[:limit - 1])) + f", ..., {ids[-1]}"


@dataclass(frozen=True, eq=False)
class Dataset(LocalBackend):
    """Training points with cluster labels and one target per cluster.

    The local backend (``truncflow.backends.local``): every pass over the points runs on
    this process's threads.

    Args:
        points:  (N, M) float32 or float64, any memory layout (kept without copying).
        labels:  (N,) cluster indices in ``[0, Q)``, Q = ``targets.shape[0]``: an integer
                 dtype, or floats with integral values (booleans, NaN and fractions are
                 refused). A label outside ``[0, Q)`` is an error naming it; for class
                 IDs that are not 0..Q-1 (e.g. {1, 2}, or {0, 10**6}) use
                 :meth:`from_class_ids`, which maps the sorted distinct IDs to 0..Q-1.
                 A cluster in ``[0, Q)`` that no point carries is allowed (its cost and
                 gradient are zero, its fractions NaN) but warns with an
                 :class:`EmptyClusterWarning`.
        targets: (Q, M) input-space targets (input cost) or (Q, P) output targets
                 (output cost). Q, the number of clusters, is ``targets.shape[0]``.
        class_ids: optional (Q,) distinct integers, the original class ID of each
                 cluster, kept for display only (default ``0..Q-1``).
    Stored: ``labels`` as read-only int64 (N,), ``targets`` read-only float64,
    ``class_ids`` read-only int64 (Q,).
    """

    points: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    class_ids: np.ndarray | None = None

    def __post_init__(self):
        pts = check_points(self.points)
        N = pts.shape[0]
        lab = check_labels(self.labels, N)
        tgt = check_targets(self.targets)
        Q = tgt.shape[0]
        _require_in_range(lab, Q)
        counts = np.bincount(lab, minlength=Q)
        ids = _check_class_ids(self.class_ids, Q)
        warn_empty_clusters(counts, stacklevel=4)
        lab.setflags(write=False)
        counts.setflags(write=False)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", lab)
        object.__setattr__(self, "targets", tgt)
        object.__setattr__(self, "class_ids", ids)
        object.__setattr__(self, "_counts", counts)

    def __getstate__(self):
        return {**self.__dict__, "_points_writeable": bool(self.points.flags.writeable)}

    def __setstate__(self, state):
        # A pickled array comes back writeable: restore the flags, so that a Dataset sent to
        # another process (simulate_ensemble's workers) gives the kernels the same array
        # types as here, and they load the compiled code from the cache, not compile anew.
        state = dict(state)
        points_writeable = state.pop("_points_writeable", True)
        for name, value in state.items():
            object.__setattr__(self, name, value)
        for name in ("labels", "targets", "class_ids", "_counts"):
            a = state.get(name)
            if isinstance(a, np.ndarray):
                a.setflags(write=False)
        if not points_writeable:
            self.points.setflags(write=False)

    @classmethod
    def from_class_ids(cls, points, labels, targets) -> "Dataset":
        """A Dataset from arbitrary integer class IDs (see :func:`encode_labels`).

        The distinct IDs in ``labels``, sorted, become clusters 0..Q-1 (kept in
        :attr:`class_ids`); ``targets`` (Q, M) or (Q, P) holds one row per distinct ID
        in that order. No cluster is empty.
        """
        codes, ids = encode_labels(labels)
        tgt = as_float_array(targets, "targets", ndim=2)
        if tgt.shape[0] != ids.size:
            raise ValueError(f"targets have {tgt.shape[0]} rows but the labels hold {ids.size} distinct class "
                             f"IDs ({_id_list(ids)}): give one target row per class, in increasing order of ID")
        return cls(points, codes, tgt, ids)

    @property
    def n_points(self) -> int:
        """N."""
        return self.points.shape[0]

    @property
    def width(self) -> int:
        """M, the dimension of the points."""
        return self.points.shape[1]

    @property
    def n_clusters(self) -> int:
        """Q."""
        return self.targets.shape[0]

    @property
    def counts(self) -> np.ndarray:
        """(Q,) int64: number of points in each cluster."""
        return self._counts

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(points[idx] as float64, labels[idx]) for row indices idx (a data sample)."""
        return np.asarray(self.points[idx], dtype=np.float64), np.asarray(self.labels[idx])

    def to(self, device: str, *, batch_points: int | None = None):
        """This dataset on ``device``: "cuda" gives a :class:`truncflow.device.DeviceDataset`
        (the points copied to the GPU once; every pass of ``cost``, ``gradient``,
        ``cluster_statistics``, ``observe`` and ``simulate`` then runs there), "cpu" this
        dataset. Points that do not fit in device memory, or any with ``batch_points``
        given, are streamed from pinned host memory in batches of that many points. Needs
        ``pip install "truncflow[cuda]"`` and a GPU (or NUMBA_ENABLE_CUDASIM=1): otherwise
        :class:`truncflow.device.CudaUnavailableError` says what is missing."""
        return placement("to_device")(self, device, batch_points=batch_points)     # truncflow.device.to_device

    def distribute(self, client, **options):
        """This dataset on a Dask cluster: ``truncflow.distribute(points, labels, targets, client,
        class_ids=..., **options)`` (a memory-mapped points array is read by the workers)."""
        return placement("distribute")(self.points, self.labels, self.targets, client, class_ids=self.class_ids, **options)

    def with_targets(self, targets) -> "Dataset":
        """The same points, labels and class IDs with other targets (a different number of
        rows drops the class IDs)."""
        same_q = np.ndim(targets) == 2 and np.shape(targets)[0] == self.n_clusters
        with warnings.catch_warnings():
            if same_q:          # the same clusters: this dataset has already warned about empty ones
                warnings.simplefilter("ignore", EmptyClusterWarning)
            return Dataset(self.points, self.labels, targets, self.class_ids if same_q else None)

    def __repr__(self) -> str:
        ids = "" if np.array_equal(self.class_ids, np.arange(self.n_clusters)) else \
            f", class_ids=[{_id_list(self.class_ids)}]"
        return (f"Dataset(N={self.n_points}, M={self.width}, Q={self.n_clusters}, "
                f"dtype={self.points.dtype}, targets={self.targets.shape}{ids})")


class DatasetElsewhere:
    """The sizes of a dataset whose points are not in this process's memory (on a Dask cluster,
    on a GPU): set ``_n_points``, ``_width``, ``targets`` and ``_counts``."""

    @property
    def n_points(self) -> int:
        """N."""
        return self._n_points

    @property
    def width(self) -> int:
        """M, the dimension of the points."""
        return self._width

    @property
    def n_clusters(self) -> int:
        """Q."""
        return self.targets.shape[0]

    @property
    def counts(self) -> np.ndarray:
        """(Q,) int64: number of points in each cluster."""
        return self._counts


def _require_in_range(labels: np.ndarray, n_clusters: int) -> None:
    """Raise ValueError naming the first label outside [0, Q)."""
    lo, hi = labels.min(), labels.max()
    if lo >= 0 and hi < n_clusters:
        return
    for a in range(0, labels.shape[0], _LABEL_BLOCK):
        block = labels[a:a + _LABEL_BLOCK]
        bad = (block < 0) | (block >= n_clusters)
        if bad.any():
            i = a + int(np.argmax(bad))
            break
    raise ValueError(f"label {labels[i]} out of range (labels[{i}]): labels must lie in [0, {n_clusters}) for "
                     f"{n_clusters} targets (Q = targets.shape[0]); for other class IDs use "
                     f"Dataset.from_class_ids, which maps the sorted distinct IDs to 0..Q-1")


# ---------------------------------------------------------------- generators
def _split_sizes(n_points: int, n_clusters: int) -> np.ndarray:
    sizes = np.full(n_clusters, n_points // n_clusters)
    sizes[: n_points % n_clusters] += 1
    return sizes


def _check_generator(centers, n_points, spread, spread_name, dtype):
    """Validated (centers (Q, M), n_points, per-cluster spread (Q,), dtype) of a generator.

    Refuses, before anything is allocated, an ``n_points`` whose points (and the
    generator's float64 temporaries) would not fit in the memory available now.
    """
    centers = as_float_array(centers, "centers", ndim=2)
    require_finite(centers, "centers")
    Q, M = centers.shape
    if Q == 0 or M == 0:
        raise ValueError(f"centers have shape {centers.shape}: need at least one cluster and one coordinate")
    n_points = integer(n_points, "n_points", low=1)
    if n_points < Q:
        raise ValueError(f"n_points={n_points} is smaller than the number of clusters {Q}")
    spread = np.asarray(spread)
    if not (np.issubdtype(spread.dtype, np.number) and not np.issubdtype(spread.dtype, np.complexfloating)):
        raise ValueError(f"{spread_name} must be a number or one number per cluster, got dtype {spread.dtype}")
    spread = spread.astype(np.float64)
    if spread.ndim > 1 or spread.size not in (1, Q):
        raise ValueError(f"{spread_name} must be one number or one per cluster ({Q}), got shape {spread.shape}")
    spread = np.broadcast_to(spread.reshape(-1), (Q,))
    if np.any(~np.isfinite(spread)) or np.any(spread < 0):
        raise ValueError(f"{spread_name} must be finite and >= 0, got {spread}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    # labels (int64) + three float64 (N, M) temporaries + the result in ``dtype``
    require_memory(n_points * (8 + (24 + dtype.itemsize) * M),
                   f"n_points={n_points} points of width M={M}")
    return centers, n_points, spread, dtype


def _finish_points(points: np.ndarray, dtype: np.dtype, spread_name: str) -> np.ndarray:
    """Cast generated float64 points to ``dtype``, refusing an overflow (no RuntimeWarning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = points.astype(dtype, copy=False)
        total = np.sum(out, dtype=np.float64)
    if not np.isfinite(total) and not np.isfinite(out).all():
        limit = np.finfo(dtype).max
        raise ValueError(f"the generated points overflow {dtype} (beyond {limit:.3g}): centers and "
                         f"{spread_name} are too large")
    return out


def gaussian_clusters(n_points: int, centers, std=1.0, *, seed=None, dtype=np.float64):
    """Gaussian clusters around ``centers`` (Q, M), sizes as equal as possible.

    ``std`` is a scalar or one value per cluster. Returns ``(points (N, M) dtype,
    labels (N,) int64)``: labels 0..Q-1, every cluster non-empty, points ordered by
    cluster. An ``n_points`` that does not fit in the memory available is refused
    before anything is allocated, and points that overflow ``dtype`` are refused.
    """
    centers, n_points, std, dtype = _check_generator(centers, n_points, std, "std", dtype)
    Q, M = centers.shape
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(Q), _split_sizes(n_points, Q))
    with np.errstate(over="ignore", invalid="ignore"):
        points = centers[labels] + std[labels, None] * rng.standard_normal((labels.size, M))
    return _finish_points(points, dtype, "std"), labels


def uniform_balls(n_points: int, centers, radius=1.0, *, seed=None, dtype=np.float64):
    """Points uniform in balls of ``radius`` around ``centers`` (Q, M).

    Returns ``(points (N, M) dtype, labels (N,) int64)`` as :func:`gaussian_clusters`.
    """
    centers, n_points, radius, dtype = _check_generator(centers, n_points, radius, "radius", dtype)
    Q, M = centers.shape
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(Q), _split_sizes(n_points, Q))
    direction = rng.standard_normal((labels.size, M))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = radius[labels] * rng.random(labels.size) ** (1.0 / M)
    with np.errstate(over="ignore", invalid="ignore"):
        points = centers[labels] + r[:, None] * direction
    return _finish_points(points, dtype, "radius"), labels


# ------------------------------------------------------------------- loaders
def load_points(path, *, points_key: str = "points", labels_key: str = "labels"):
    """Load points and labels from ``.npy``, ``.npz`` or ``.csv``.

    - ``.npz``: arrays named ``points_key`` (N, M) and ``labels_key`` (N,).
    - ``.npy`` and ``.csv``: one (N, M + 1) table whose last column is the label. An
      ``.npy`` table is memory-mapped: the points are a view of the file, read by each
      pass over the points (a file larger than memory works); the labels become int64
      (in a scratch file when large, ``truncflow._scratch``).

    Returns ``(points (N, M), labels (N,) int64)``; float32 points stay float32, other
    real numeric points become float64. The labels are the file's class IDs as they
    are (checked by :func:`check_labels`: integers, or integral floats; not
    remapped): pass them to :meth:`Dataset.from_class_ids` (or :func:`encode_labels`)
    when they are not 0..Q-1. Raises ValueError naming the file and the problem:
    missing file, unknown suffix, missing key, bad shape or dtype, no points,
    NaN/inf points or labels, non-integral labels, or an array whose header claims
    more data than the file holds or than fits in the memory available (checked
    before reading).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            points, labels = _read_npz(path, points_key, labels_key)
        elif suffix in (".npy", ".csv"):
            if suffix == ".npy":
                with open(path, "rb") as f:
                    _check_npy_header(f, path.stat().st_size, "table", in_memory=False)
                # memory-mapped: the points are read from the file pass by pass, never loaded
                table = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                require_memory(16 * path.stat().st_size, f"reading {format_bytes(path.stat().st_size)} of text")
                with warnings.catch_warnings():      # an empty file is refused below, not warned about
                    warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
                    table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
            if table.ndim != 2 or table.shape[1] < 2:
                raise ValueError(f"expected a table of shape (N, M+1) with the label last, got shape {table.shape}")
            points, labels = table[:, :-1], table[:, -1]
        else:
            raise ValueError(f"unknown data format {suffix!r} (use .npy, .npz or .csv)")
        points = check_points(points)
        labels = check_labels(labels, points.shape[0])
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    return points, labels


def _read_npz(path: Path, points_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The two named arrays of an .npz file, each header checked before it is read."""
    with zipfile.ZipFile(path) as archive:
        members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
        for key in (points_key, labels_key):
            if key not in members:
                raise ValueError(f"no array named {key!r} (found {', '.join(members) or 'none'})")
            info = archive.getinfo(members[key])
            with archive.open(info) as f:
                _check_npy_header(f, info.file_size, key)
    with np.load(path, allow_pickle=False) as z:
        return z[points_key], z[labels_key]


def _check_npy_header(f, size: int, what: str, in_memory: bool = True) -> None:
    """Read an .npy header from ``f`` (``size`` bytes in all) and refuse an array that is
    not plain numbers, claims more bytes than the file holds, or (``in_memory``: it is to
    be loaded, not memory-mapped) would not fit in memory."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:                   # format 3.0 (utf-8 field names): leave it to np.load
            return
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise ValueError(f"{what}: not a valid .npy array ({exc})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{what}: dtype {dtype} is not plain numbers")
    n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - f.tell()
    if n_bytes > held:
        raise ValueError(f"{what}: the header claims shape {shape} ({format_bytes(n_bytes)}) but the file "
                         f"holds only {format_bytes(max(held, 0))}: truncated or corrupt")
    if in_memory:
        require_memory(2 * n_bytes, f"{what} of shape {shape}")
