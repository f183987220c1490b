"""Per-cluster flow derivatives (MODEL.md sections 3-6, 9, 11) in one streaming pass.

For each layer, cluster and cone coordinate: how many of the cluster's points the layer
truncates, and the first (optionally second) moments of the layer's input images over
the free and over the truncated points -- the quantities that drive the flow of the
layer's cumulative parameters -- together with the cost and the per-cluster gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import choice
from .compute import (COST_KINDS, Gradient, _require_dataset, _require_params, require_finite_outputs,
                      require_partials_fit, tile_arrays)
from .data import Dataset
from .params import Params

__all__ = ["ClusterStatistics", "cluster_statistics"]


@dataclass(frozen=True, eq=False)
class ClusterStatistics:
    """Per-cluster statistics of every layer's input images, for L layers, Q clusters, width M.

    For layer index l = 0..L-1 (layer l+1), ``z_i = x~^(l)_i`` is the layer's input
    image of point i and ``a = W^(l+1) z_i + b^(l+1)`` its cone coordinates; coordinate
    k is free when ``a_k > 0`` and truncated when ``a_k <= 0`` (a point on the
    hyperplane counts as truncated, MODEL.md section 5).

    Attributes:
        counts             (Q,) int64             points per cluster
        truncated_counts   (L, Q, M) int64        ``#{i in c : a_k <= 0}``
        free_sums          (L, Q, M, M) float64   ``[l, c, k, :] = sum_{i in c, a_k > 0} z_i``
        constrained_sums   (L, Q, M, M) float64   ``[l, c, k, :] = sum_{i in c, a_k <= 0} z_i``
        free_second        (L, Q, M, M, M) float64 or None
                           ``[l, c, k] = sum_{i in c, a_k > 0} z_i z_i^T`` (symmetric);
                           None unless asked for with ``second_moments=True``
        constrained_second (L, Q, M, M, M) float64 or None   likewise over ``a_k <= 0``
        cost               float      the cost of ``kind`` (MODEL.md section 4)
        cost_per_cluster   (Q,)       its split over clusters (sums to ``cost``)
        gradient           Gradient   per-cluster cumulative gradient: leading axis Q on
                                      every array, as ``gradient(..., per_cluster=True)``
        kind               "input" or "output"
    An empty cluster has zero counts, sums and gradient.
    """

    counts: np.ndarray
    truncated_counts: np.ndarray
    free_sums: np.ndarray
    constrained_sums: np.ndarray
    free_second: np.ndarray | None
    constrained_second: np.ndarray | None
    cost: float
    cost_per_cluster: np.ndarray
    gradient: Gradient
    kind: str = "input"

    @property
    def free_counts(self) -> np.ndarray:
        """(L, Q, M) int64: ``#{i in c : a_k > 0}``."""
        return self.counts[None, :, None] - self.truncated_counts

    @property
    def truncated_fraction(self) -> np.ndarray:
        """(L, Q, M) float64: truncated_counts / counts (NaN for an empty cluster)."""
        return _ratio(self.truncated_counts, self.counts[None, :, None])

    @property
    def cluster_sums(self) -> np.ndarray:
        """(L, Q, M) float64: ``sum_{i in c} z_i``, the free plus the constrained sum (k = 0)."""
        return self.free_sums[:, :, 0, :] + self.constrained_sums[:, :, 0, :]

    @property
    def free_means(self) -> np.ndarray:
        """(L, Q, M, M) float64: ``[l, c, k]`` mean of z over the cluster's points free in k
        (NaN where there are none)."""
        return _ratio(self.free_sums, self.free_counts[..., None])

    @property
    def constrained_means(self) -> np.ndarray:
        """(L, Q, M, M) float64: ``[l, c, k]`` mean of z over the cluster's points truncated
        in k (NaN where there are none)."""
        return _ratio(self.constrained_sums, self.truncated_counts[..., None])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den broadcast, NaN where den == 0."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _require_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _partial_bytes(L: int, M: int, Mp: int, Q: int, P: int, second_moments: bool) -> int:
    """Bytes of one chunk's partial results: gradient (padded width Mp), counts, moments."""
    gradient_part = Q * (1 + L * Mp * (Mp + 1) + P * (Mp + 1))
    moments = L * Q * M * (1 + 2 * M) + (2 * L * Q * M ** 3 if second_moments else 0)
    return 8 * (gradient_part + moments)


def _mirror_upper(upper: np.ndarray) -> np.ndarray:
    """A symmetric (..., M, M) array from one whose strict lower triangle is zero."""
    return upper + np.swapaxes(np.triu(upper, 1), -1, -2)


def cluster_statistics(params: Params, dataset: Dataset, kind: str = "input", *,
                       second_moments: bool = False) -> ClusterStatistics:
    """Truncation counts, free/constrained moments, cost and per-cluster gradient, one pass.

    Args:
        params: the network.
        dataset: points (float32 read as they are, or float64), labels and targets.
        kind: "input" or "output" cost (the cost and gradient reported).
        second_moments: also sum ``z z^T`` over the free and the truncated points
            (costs ``2 L Q M^3`` doubles per chunk and O(M^3) work per point and layer).
    Returns:
        a :class:`ClusterStatistics`; its gradient equals ``gradient(params, dataset,
        kind, per_cluster=True)`` to round-off.
    """
    params = _require_params(params)
    choice(kind, "kind", COST_KINDS)
    second_moments = _require_bool(second_moments, "second_moments")
    dataset = _require_dataset(dataset, params, kind, distributed=True)
    N, M, L, Q = dataset.n_points, params.width, params.n_layers, dataset.n_clusters
    arrays = tile_arrays(params, dataset.targets, kind)
    Mp, P = arrays[1].shape[1], arrays[5].shape[0]
    chunk = require_partials_fit(N, _partial_bytes(L, M, Mp, Q, P, second_moments), "the statistics' per-chunk sums")
    parts = dataset.statistics_sums(arrays, kind == "output", Q, second_moments, chunk)
    # Merge chunks in a fixed order (axis 0): the result does not depend on threads.
    with np.errstate(over="ignore", invalid="ignore"):
        sq, gw, gb, gow, gob, truncated, free1, con1, free2, con2 = (p.sum(axis=0) for p in parts)
    gw, gb, gow = gw[..., :M, :M], gb[..., :M], gow[..., :M]    # drop the padding
    out = (gow / N, gob / N) if kind == "output" else (None, None)
    grad = Gradient(gw / N, gb / N, out[0], out[1], "cumulative")
    cost_per_cluster = sq / (2 * N)
    require_finite_outputs(params, dataset.points, cost_per_cluster, grad, free_sums=free1, constrained_sums=con1)
    return ClusterStatistics(
        counts=np.array(dataset.counts, dtype=np.int64),
        truncated_counts=truncated,
        free_sums=free1,
        constrained_sums=con1,
        free_second=_mirror_upper(free2) if second_moments else None,
        constrained_second=_mirror_upper(con2) if second_moments else None,
        cost=float(cost_per_cluster.sum()),
        cost_per_cluster=cost_per_cluster,
        gradient=grad,
        kind=kind,
    )
