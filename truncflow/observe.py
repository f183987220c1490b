"""What a run observes about the data at one instant (MODEL.md section 11)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import threads
from ._validate import as_float_array, choice, require_finite
from .compute import (COST_KINDS, _require_dataset, _require_params, kernel_arrays, require_finite_outputs,
                      require_partials_fit)
from .data import Dataset, by_identity
from .kernels import config
from .kernels.observe import observe_many, summarize
from .params import Params

__all__ = ["Observation", "observe", "cluster_means"]


@dataclass(frozen=True, eq=False)
class Observation:
    """Cluster statistics of the images of every layer, for L layers, Q clusters, width M.

    Attributes:
        cost                 float   the cost of ``kind``
        cost_per_cluster     (Q,)    its split over clusters (sums to ``cost``)
        truncated_fraction   (L, Q)  fraction of the cluster's points with at least one
                                     truncated coordinate (``a_k <= 0``) in layer l
        collapsed_fraction   (L, Q)  fraction with every coordinate truncated (mapped to the apex)
        coordinate_truncated_fraction (L, Q, M)  fraction truncated in coordinate k
        free_coordinates     (L, Q)  mean number of free coordinates ("complexity"):
                                     M for an untouched cluster, 0 for a collapsed one
        spread               (L, Q)  ``tr Cov(x~^(l))`` over the cluster's images
        collapse_ratio       (L,)    within-cluster over between-cluster scatter of the images
                                     (NaN when there is no between-cluster scatter, e.g. Q = 1)
        n_patterns           int     number of distinct activation patterns (all layers jointly)
        pattern_hash         (N,) uint64  per-point hash of the pattern, to count changes (for a
                                     distributed dataset a ``distributed.PartitionedHashes``
                                     kept on the workers: ``.to_dask()`` gives a dask.array;
                                     for a dataset on a GPU it is copied back, 8 bytes a point)
    Empty clusters give NaN in the per-cluster fractions and spreads.
    """

    cost: float
    cost_per_cluster: np.ndarray
    truncated_fraction: np.ndarray
    collapsed_fraction: np.ndarray
    coordinate_truncated_fraction: np.ndarray
    free_coordinates: np.ndarray
    spread: np.ndarray
    collapse_ratio: np.ndarray
    n_patterns: int
    pattern_hash: np.ndarray


def pattern_changes(new, old) -> int:
    """Points whose pattern hash differs between two observations of one dataset (counted
    on the workers for hashes kept on a Dask cluster; else in blocks, no N booleans)."""
    if hasattr(new, "count_changes"):         # hashes kept where the points are (a Dask cluster)
        return new.count_changes(old)
    step = 1 << 22
    return sum(int(np.count_nonzero(new[a:a + step] != old[a:a + step])) for a in range(0, new.size, step))


def cluster_means(dataset: Dataset) -> np.ndarray:
    """(Q, M) mean of each cluster's points (zeros for an empty cluster), summed chunk by chunk
    (``kernels.config``) and the chunks in order: the same bits for a distributed dataset."""
    chunk = config.chunk_size(dataset.n_points)
    per_chunk = dataset.cluster_sums(dataset.n_clusters, chunk)
    sums = per_chunk[0].copy()
    for c in range(1, per_chunk.shape[0]):
        sums += per_chunk[c]
    counts = dataset.counts
    return np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)


def observe(params: Params, dataset: Dataset, kind: str = "input", *, shift=None) -> Observation:
    """Observe the data under ``params`` in one pass (see :class:`Observation`).

    ``shift`` (Q, M), optional: the per-cluster origin for the moment sums; the
    cluster means of the input points by default (pass them in when observing often).
    """
    params = _require_params(params)
    choice(kind, "kind", COST_KINDS)
    dataset = _require_dataset(dataset, params, kind, distributed=True)
    M, Q = dataset.width, dataset.n_clusters
    if shift is None:
        shift = cluster_means(dataset)
    shift = as_float_array(shift, "shift", ndim=2)
    if shift.shape != (Q, M):
        raise ValueError(f"shift has shape {shift.shape}, expected (Q, M) = {(Q, M)}")
    require_finite(shift, "shift")
    return observe_checked(params, dataset, kind, np.ascontiguousarray(shift))


def observe_checked(params: Params, dataset: Dataset, kind: str, shift: np.ndarray) -> Observation:
    """:func:`observe` of arguments already checked (a run's records): shift (Q, M) float64 C-contiguous."""
    N, M, L, Q = dataset.n_points, dataset.width, params.n_layers, dataset.n_clusters
    cw, cb, et = kernel_arrays(params)
    if kind == "output":
        ow, ob = np.array(params.out_weight), np.array(params.out_bias)
    else:
        ow, ob = np.zeros((0, M)), np.zeros(0)
    partial_bytes = 8 * (Q + L * Q * (3 * M + 2))
    chunk = require_partials_fit(N, partial_bytes, "the observables' per-chunk sums")
    # the hashes: here (N,) uint64; on a cluster they stay on the workers, their distinct values
    # per partition come back; on a GPU they come back (8 bytes a point). distinct: sorted.
    parts, distinct, hashes = dataset.observe(dataset.targets, shift, cw, cb, et, ow, ob, kind == "output", Q, chunk)
    sq, coord_frac, spread, ratio, truncated_fraction, collapsed_fraction, n_patterns = summarize(
        *parts, dataset.counts, shift, distinct)
    require_finite_outputs(params, dataset.points, sq, spread=spread[:, dataset.counts > 0])
    return Observation(
        cost=float(sq.sum() / (2 * N)),
        cost_per_cluster=sq / (2 * N),
        truncated_fraction=truncated_fraction,
        collapsed_fraction=collapsed_fraction,
        coordinate_truncated_fraction=coord_frac,
        free_coordinates=M - coord_frac.sum(axis=2),
        spread=spread,
        collapse_ratio=ratio,
        n_patterns=int(n_patterns),
        pattern_hash=hashes,
    )


def observe_members(params: list[Params], datasets: list[Dataset], kind: str,
                    shifts: list[np.ndarray]) -> list[Observation | None]:
    """:func:`observe_checked` of B networks, each on its own dataset (of one shape), in one
    compiled call parallel over them: the records of an ensemble (``engine.ensemble``).

    Entry b equals ``observe_checked(params[b], datasets[b], kind, shifts[b])``, or is None
    where that call would raise (outputs not finite): the caller makes it, for its message.
    A dataset shared by several networks (the same object) is passed once.
    """
    first = datasets[0]
    N, M, L, Q = first.n_points, first.width, params[0].n_layers, first.n_clusters
    data_of, stacked = by_identity(datasets)
    cw, cb = np.stack([p.cum_weights for p in params]), np.stack([p.cum_biases for p in params])
    et = np.ascontiguousarray(np.swapaxes(np.stack([p.inverses for p in params]), 2, 3))   # as kernel_arrays
    if kind == "output":
        ow, ob = np.stack([p.out_weight for p in params]), np.stack([p.out_bias for p in params])
    else:
        ow, ob = np.zeros((len(params), 0, M)), np.zeros((len(params), 0))
    points, labels, targets, counts = (np.stack([getattr(d, name) for d in stacked])
                                       for name in ("points", "labels", "targets", "counts"))
    shift = np.stack(shifts)
    B = len(params)
    sq, coord, spread, ratio = np.empty((B, Q)), np.empty((B, L, Q, M)), np.empty((B, L, Q)), np.empty((B, L))
    trunc_frac, coll_frac = np.empty((B, L, Q)), np.empty((B, L, Q))
    n_patterns, hashes = np.empty(B, dtype=np.int64), np.empty((B, N), dtype=np.uint64)
    threads.apply()
    chunk = require_partials_fit(N, 8 * (Q + L * Q * (3 * M + 2)), "the observables' per-chunk sums")
    observe_many(cw, cb, et, ow, ob, shift, data_of, points, labels, targets, counts, kind == "output", Q, chunk,
                 sq, coord, spread, ratio, trunc_frac, coll_frac, n_patterns, hashes)
    free = M - coord.sum(axis=3)
    cost = sq.sum(axis=1) / (2 * N)
    per_cluster = sq / (2 * N)
    # what observe_checked's require_finite_outputs checks: the cost and the occupied clusters' spreads
    occupied = (counts > 0)[data_of][:, None, :]
    finite = np.isfinite(sq).all(axis=1) & (np.isfinite(spread) | ~occupied).all(axis=(1, 2))
    return [Observation(cost=float(cost[b]), cost_per_cluster=per_cluster[b], truncated_fraction=trunc_frac[b],
                        collapsed_fraction=coll_frac[b], coordinate_truncated_fraction=coord[b],
                        free_coordinates=free[b], spread=spread[b], collapse_ratio=ratio[b],
                        n_patterns=int(n_patterns[b]), pattern_hash=hashes[b]) if finite[b] else None
            for b in range(B)]
