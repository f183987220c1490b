"""The aligned model's effective equations and the cluster-separation check (MODEL.md section 9).

For aligned parameters ``W^(l) = diag(lambda^(l)) R^(l)`` layer l clips the rotated
coordinates ``w = R^(l) z`` from below at the thresholds ``t^(l) = -b^(l) / lambda^(l)``.
With one layer, or when the clusters are separated (layer l truncates only cluster
l - 1, counting clusters from 0, and leaves every other cluster free), the input
cost decouples into one scalar problem per layer and coordinate:

    dC/dt_k = (1/N) sum_c n_{c,k}(t_k) (t_k - eta_{c,k}),   n_{c,k}(t) = #{i in c : w_{i,k} <= t},
    dt_k/ds = -kappa_k dC/dt_k,   kappa_k = (1 + t_k^2)^2 / r_k^2 (all), 1 / lambda_k^2 (biases).

:func:`separation_report` checks the hypothesis on the data (it is never assumed);
:func:`threshold_gradient` and :func:`threshold_velocity` evaluate the effective
equations directly from the points, independently of the gradient kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import choice
from .compute import _require_dataset, _require_params, activation_patterns
from .data import Dataset
from .params import Params

__all__ = ["SeparationReport", "separation_report", "threshold_gradient", "threshold_velocity",
           "layer_point_sets"]

ALIGNED_TRAIN = ("all", "biases")


@dataclass(frozen=True, eq=False)
class SeparationReport:
    """Which layer truncates which cluster, and whether the clusters are separated.

    Attributes:
        truncated_counts (L, Q) int64: points of cluster c with at least one truncated
            coordinate (``a_k <= 0``) in layer l (0-based indices).
        cluster_sizes    (Q,) int64: points per cluster.
        holds            bool: the cluster-separated hypothesis of MODEL.md section 9:
            L = Q and layer l truncates no point of any cluster other than cluster l.
        violations       list of (layer, cluster, count), 1-based layer, 0-based cluster:
            a layer truncating ``count`` points of a cluster that is not its own.
        reason           str: why the hypothesis fails ("" when it holds).
    """

    truncated_counts: np.ndarray
    cluster_sizes: np.ndarray
    holds: bool
    violations: list
    reason: str

    def __str__(self) -> str:
        L, Q = self.truncated_counts.shape
        lines = [f"cluster-separated hypothesis (layer l truncates only cluster l-1): "
                 f"{'holds' if self.holds else 'fails'}" + (f": {self.reason}" if self.reason else "")]
        for l in range(L):
            parts = [f"cluster {c}: {self.truncated_counts[l, c]}/{self.cluster_sizes[c]}" for c in range(Q)]
            lines.append(f"layer {l + 1} truncates " + ", ".join(parts))
        return "\n".join(lines)


def separation_report(params: Params, dataset: Dataset) -> SeparationReport:
    """For every layer, how many points of each cluster it truncates, and whether the
    cluster-separated hypothesis of MODEL.md section 9 holds (see :class:`SeparationReport`).

    A layer truncates a point when at least one cone coordinate of the point's image
    entering the layer is ``<= 0``. One streaming pass (the activation-pattern kernel).
    """
    params = _require_params(params)
    dataset = _require_dataset(dataset, params, None)      # the targets play no part here
    L, M, Q = params.n_layers, params.width, dataset.n_clusters
    patterns = activation_patterns(params, dataset.points)           # (N, L, words)
    full = _all_free_words(M)
    truncated_any = np.any(patterns != full, axis=2)                  # (N, L)
    counts = np.stack([np.bincount(dataset.labels, weights=truncated_any[:, l], minlength=Q)
                       for l in range(L)]).astype(np.int64)
    sizes = dataset.counts.astype(np.int64)
    violations = [(l + 1, c, int(counts[l, c])) for l in range(L) for c in range(Q)
                  if c != l and counts[l, c] > 0]
    if L != Q:
        reason = f"it needs one layer per cluster (L = Q), but L = {L} and Q = {Q}"
    elif violations:
        reason = "; ".join(f"layer {l} truncates {n} point(s) of cluster {c}" for l, c, n in violations)
    else:
        reason = ""
    return SeparationReport(counts, sizes, not reason, violations, reason)


def _all_free_words(M: int) -> np.ndarray:
    """The bit-packed pattern of a point free in every coordinate, (ceil(M/64),) uint64."""
    n_words = -(-M // 64)
    words = np.full(n_words, np.iinfo(np.uint64).max, dtype=np.uint64)
    if M % 64:
        words[-1] = np.uint64((1 << (M % 64)) - 1)
    return words


def layer_point_sets(params: Params, dataset: Dataset) -> list[np.ndarray]:
    """Indices of the points whose thresholds equations each layer carries: every point for
    one layer, cluster l's points for layer l in the separated case (L = Q)."""
    L = params.n_layers
    if L == 1:
        return [np.arange(dataset.n_points)]
    if L != dataset.n_clusters:
        raise ValueError(f"the effective equations of {L} layers need the cluster-separated case "
                         f"with one layer per cluster, but there are {dataset.n_clusters} clusters")
    return [np.flatnonzero(dataset.labels == l) for l in range(L)]


def _require_aligned_input(params, dataset):
    params = _require_params(params)
    if not params.is_aligned:
        raise ValueError("the effective equations need aligned parameters: build them with Params.aligned")
    dataset = _require_dataset(dataset, params, "input")
    return params, dataset


def threshold_gradient(params: Params, dataset: Dataset) -> np.ndarray:
    """``dC/dt^(l)_k`` (L, M) of the input cost from the effective equation of MODEL.md section 9.

    Valid for one layer, or when the clusters are separated (check with
    :func:`separation_report`); computed from the points directly, not by the kernels.
    """
    params, dataset = _require_aligned_input(params, dataset)
    N = dataset.n_points
    t = params.thresholds
    out = np.zeros_like(t)
    for l, idx in enumerate(layer_point_sets(params, dataset)):
        R = params.frames[l]
        w = np.asarray(dataset.points[idx], dtype=np.float64) @ R.T            # (n_l, M)
        eta = dataset.targets @ R.T                                           # (Q, M)
        truncated = w <= t[l]
        out[l] = np.sum(truncated * (t[l] - eta[dataset.labels[idx]]), axis=0) / N
    return out


def threshold_velocity(params: Params, dataset: Dataset, train: str = "all") -> np.ndarray:
    """``dt^(l)_k/ds = -kappa_k dC/dt_k`` (L, M) of the aligned flow (MODEL.md section 9).

    ``train="all"``: ``kappa = (1 + t^2)^2 / (lambda^2 + b^2)``; ``train="biases"``:
    ``kappa = 1 / lambda^2``.
    """
    choice(train, "train", ALIGNED_TRAIN)
    grad = threshold_gradient(params, dataset)
    lam, b, t = params.scales, params.cum_biases, params.thresholds
    kappa = (1 + t * t) ** 2 / (lam * lam + b * b) if train == "all" else 1.0 / (lam * lam)
    return -kappa * grad
