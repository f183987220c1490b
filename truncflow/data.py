"""Training data: points, cluster labels and per-cluster targets; generators and loaders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._validate import as_float_array, integer, require_finite

__all__ = ["Dataset", "check_points", "gaussian_clusters", "uniform_balls", "load_points"]


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


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training points with cluster labels and one target per cluster.

    Args:
        points:  (N, M) float32 or float64, any memory layout (kept without copying).
        labels:  (N,) integers in ``[0, Q)``: the cluster of each point.
        targets: (Q, M) input-space targets (input cost) or (Q, P) output targets
                 (output cost). Q, the number of clusters, is ``targets.shape[0]``.
    """

    points: np.ndarray
    labels: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        pts = check_points(self.points)
        N = pts.shape[0]
        lab = np.asarray(self.labels)
        if lab.ndim != 1 or lab.shape[0] != N:
            raise ValueError(f"labels have shape {lab.shape}, expected ({N},): one label per point")
        if not (np.issubdtype(lab.dtype, np.integer) or (np.issubdtype(lab.dtype, np.floating)
                                                          and np.all(lab == np.round(lab)))):
            raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
        tgt = as_float_array(self.targets, "targets", ndim=2)
        if tgt.shape[0] == 0 or tgt.shape[1] == 0:
            raise ValueError(f"targets have shape {tgt.shape}: need (Q, M) or (Q, P) with Q, P >= 1")
        require_finite(tgt, "targets")
        Q = tgt.shape[0]
        lo, hi = lab.min(), lab.max()
        if lo < 0 or hi >= Q:
            bad = lo if lo < 0 else hi
            raise ValueError(f"label {bad} out of range: labels must lie in [0, {Q}) for {Q} targets (Q = targets.shape[0])")
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        lab.setflags(write=False)
        tgt = np.ascontiguousarray(tgt)
        tgt.setflags(write=False)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "labels", lab)
        object.__setattr__(self, "targets", tgt)
        object.__setattr__(self, "_counts", np.bincount(lab, minlength=Q))

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

    def with_targets(self, targets) -> "Dataset":
        """The same points and labels with other targets."""
        return Dataset(self.points, self.labels, targets)

    def __repr__(self) -> str:
        return (f"Dataset(N={self.n_points}, M={self.width}, Q={self.n_clusters}, "
                f"dtype={self.points.dtype}, targets={self.targets.shape})")


# ---------------------------------------------------------------- generators
def _split_sizes(n_points: int, n_clusters: int) -> np.ndarray:
    sizes = np.full(n_clusters, n_points // n_clusters)
    sizes[: n_points % n_clusters] += 1
    return sizes


def _check_generator(centers, n_points, spread, spread_name, dtype):
    """Validated (centers (Q, M), n_points, per-cluster spread (Q,), dtype) of a generator."""
    centers = as_float_array(centers, "centers", ndim=2)
    require_finite(centers, "centers")
    Q, M = centers.shape
    if Q == 0 or M == 0:
        raise ValueError(f"centers have shape {centers.shape}: need at least one cluster and one coordinate")
    n_points = integer(n_points, "n_points", low=1)
    if n_points < Q:
        raise ValueError(f"n_points={n_points} is smaller than the number of clusters {Q}")
    spread = np.asarray(spread, dtype=np.float64)
    if spread.ndim > 1 or spread.size not in (1, Q):
        raise ValueError(f"{spread_name} must be one number or one per cluster ({Q}), got shape {spread.shape}")
    spread = np.broadcast_to(spread.reshape(-1), (Q,))
    if np.any(~np.isfinite(spread)) or np.any(spread < 0):
        raise ValueError(f"{spread_name} must be finite and >= 0, got {spread}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return centers, n_points, spread, dtype


def gaussian_clusters(n_points: int, centers, std=1.0, *, seed=None, dtype=np.float64):
    """Gaussian clusters around ``centers`` (Q, M), sizes as equal as possible.

    ``std`` is a scalar or one value per cluster. Returns ``(points (N, M), labels (N,))``;
    points are ordered by cluster.
    """
    centers, n_points, std, dtype = _check_generator(centers, n_points, std, "std", dtype)
    Q, M = centers.shape
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(Q), _split_sizes(n_points, Q))
    points = centers[labels] + std[labels, None] * rng.standard_normal((labels.size, M))
    return points.astype(dtype, copy=False), labels


def uniform_balls(n_points: int, centers, radius=1.0, *, seed=None, dtype=np.float64):
    """Points uniform in balls of ``radius`` around ``centers`` (Q, M).

    Returns ``(points (N, M), labels (N,))``, ordered by cluster.
    """
    centers, n_points, radius, dtype = _check_generator(centers, n_points, radius, "radius", dtype)
    Q, M = centers.shape
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(Q), _split_sizes(n_points, Q))
    direction = rng.standard_normal((labels.size, M))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = radius[labels] * rng.random(labels.size) ** (1.0 / M)
    points = centers[labels] + r[:, None] * direction
    return points.astype(dtype, copy=False), labels


# ------------------------------------------------------------------- loaders
def load_points(path, *, points_key: str = "points", labels_key: str = "labels"):
    """Load points and labels from ``.npy``, ``.npz`` or ``.csv``.

    - ``.npz``: arrays named ``points_key`` (N, M) and ``labels_key`` (N,).
    - ``.npy`` and ``.csv``: one (N, M + 1) table whose last column is the label.

    Returns ``(points (N, M), labels (N,) int64)``; float32 points stay float32, other
    numeric points become float64. Raises ValueError naming
    the file and the problem (missing file, unknown suffix, missing key, bad shape).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for key in (points_key, labels_key):
                    if key not in z.files:
                        raise ValueError(f"{path}: no array named {key!r} (found {', '.join(z.files) or 'none'})")
                points, labels = z[points_key], z[labels_key]
        elif suffix in (".npy", ".csv"):
            if suffix == ".npy":
                table = np.load(path, allow_pickle=False)
            else:
                table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
            if table.ndim != 2 or table.shape[1] < 2:
                raise ValueError(f"{path}: expected a table of shape (N, M+1) with the label last, got shape {table.shape}")
            points, labels = table[:, :-1], table[:, -1]
        else:
            raise ValueError(f"{path}: unknown data format {suffix!r} (use .npy, .npz or .csv)")
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if str(path) in msg else f"{path}: {msg}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    labels = np.asarray(labels)
    points = np.asarray(points)
    if labels.ndim != 1 or points.ndim != 2 or labels.shape[0] != points.shape[0]:
        raise ValueError(f"{path}: expected points (N, M) and labels (N,), got {points.shape} and {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{path}: labels must be integers")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if points.dtype not in (np.float32, np.float64):
        points = points.astype(np.float64)
    return points, labels.astype(np.int64, copy=False)
