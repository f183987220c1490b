"""Per-cluster flow derivatives: truncation counts, moments, cost and gradient in one pass.

One streaming pass over the points, tiled exactly like ``gradient.gradient_kernel``:
each chunk loads tiles of ``TILE`` points feature-major, runs ``_forward_tile`` once,
then

1. per layer l (0-based) and cluster s present in the tile, splits the cluster's points
   by the cone coordinates ``a = act[l] = W^(l+1) z + b^(l+1)`` of the layer's input
   images ``z = x~^(l)``: per coordinate k the number of truncated points (a_k <= 0),
   the sums of z over the free (a_k > 0) and over the truncated points, and optionally
   the sums of z z^T (upper triangle only; the caller mirrors it);
2. runs the per-cluster reverse sweep of ``gradient_kernel`` with the same helpers, so
   the cost and the per-cluster cumulative gradient come out of the same pass.

The kink is decided on the very ``act`` values the gradient uses (``a_k == 0`` is
truncated), so the counts agree with ``activation_patterns`` bit for bit. Each chunk
writes only its own slot of the per-chunk buffers; the caller adds them in chunk order,
so the result does not depend on the number of threads. Sums are unscaled.
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS_REDUCTION
from .gradient import (TILE, _first_slot, _forward_tile, _load_tile, _next_slot, _slot_mask, _tile_buffers,
                       _tile_gradient)


@njit(parallel=True, **JIT_OPTIONS_REDUCTION)
def statistics_kernel(points, labels, targets, cw, cb, inv, back, out_w, out_b,
                      output_cost, n_clusters, second_moments, chunk):
    """Per-chunk cluster statistics of every layer's input images, cost and gradient.

    Args:
        points (N, M) float32/float64 any layout, labels (N,) int64 in [0, Q); targets,
        cw, cb, inv, back, out_w, out_b padded to width Mp as for
        ``gradient_kernel`` (``compute.tile_arrays``); output_cost: bool; n_clusters: Q;
        second_moments: bool; chunk: points per chunk.

    Returns, with C = ceil(N / chunk), L2 = L if second_moments else 0:
        sq        (C, Q)             sum of |residual|^2
        g_w       (C, Q, L, Mp, Mp)  sum of dC_i/dW^(l) times N (padding rows, columns zero)
        g_b       (C, Q, L, Mp)      sum of dC_i/db^(l) times N
        g_ow      (C, Q, P, Mp)      sum of dC_i/dW_out times N   (output cost)
        g_ob      (C, Q, P)          sum of dC_i/db_out times N   (output cost)
        truncated (C, L, Q, M) int64         number of points with a_k <= 0
        free1     (C, L, Q, M, M)            [.., k, :] sum of z over the points with a_k > 0
        con1      (C, L, Q, M, M)            [.., k, :] sum of z over the points with a_k <= 0
        free2     (C, L2, Q, M, M, M)        [.., k, i, j] sum of z_i z_j, a_k > 0, j >= i only
        con2      (C, L2, Q, M, M, M)        likewise over a_k <= 0
    """
    sums = _statistics_sums(points, cw, out_w, n_clusters, second_moments, chunk)
    for c in prange(sums[0].shape[0]):
        _statistics_chunk(np.int64(c), points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_clusters,
                          second_moments, chunk, sums)
    return sums


@njit(**JIT_OPTIONS_REDUCTION)
def statistics_kernel_serial(points, labels, targets, cw, cb, inv, back, out_w, out_b,
                             output_cost, n_clusters, second_moments, chunk):
    """``statistics_kernel`` without a parallel region (the same chunks, the same sums): for a
    pass of one chunk, and on Dask workers (``truncflow.distributed``). A separate function:
    see ``gradient.gradient_kernel_serial``."""
    sums = _statistics_sums(points, cw, out_w, n_clusters, second_moments, chunk)
    for c in range(sums[0].shape[0]):
        _statistics_chunk(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_clusters,
                          second_moments, chunk, sums)
    return sums


@njit(**JIT_OPTIONS_REDUCTION)
def _statistics_sums(points, cw, out_w, n_clusters, second_moments, chunk):
    """The zeroed per-chunk sums of ``statistics_kernel``."""
    N, M = points.shape
    L, Mp, _ = cw.shape
    P = out_w.shape[0]
    Q = n_clusters
    C = (N + chunk - 1) // chunk
    L2 = L if second_moments else 0
    return (np.zeros((C, Q)), np.zeros((C, Q, L, Mp, Mp)), np.zeros((C, Q, L, Mp)), np.zeros((C, Q, P, Mp)),
            np.zeros((C, Q, P)), np.zeros((C, L, Q, M), dtype=np.int64), np.zeros((C, L, Q, M, M)),
            np.zeros((C, L, Q, M, M)), np.zeros((C, L2, Q, M, M, M)), np.zeros((C, L2, Q, M, M, M)))


@njit(**JIT_OPTIONS_REDUCTION)
def _statistics_chunk(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_clusters,
                      second_moments, chunk, sums):
    """Chunk c's points into row c of every sum."""
    sq, g_w, g_b, g_ow, g_ob, truncated, free1, con1, free2, con2 = sums
    N, M = points.shape
    L, Mp, _ = cw.shape
    P = out_w.shape[0]
    Q = n_clusters
    stop = min(N, (c + 1) * chunk)
    T = min(TILE, stop - c * chunk)
    z, act, cn, u, u_next, um, r, wt, lab = _tile_buffers(L, Mp, P, T, cw)
    wf = np.empty((M, T))            # slot mask times 1[a_k > 0]
    wc = np.empty((M, T))            # slot mask times 1[a_k <= 0]
    pair = np.empty(T)               # z_i z_j of the tile
    for start in range(c * chunk, stop, TILE):
        nb = min(TILE, stop - start)
        _load_tile(points, labels, start, nb, z[0], lab)
        _forward_tile(cw, cb, inv, z, act, cn, nb)
        _tile_moments(z, act, lab, nb, Q, second_moments, wt, wf, wc, pair,
                      truncated[c], free1[c], con1[c], free2[c], con2[c])
        _tile_gradient(back, targets, out_w, out_b, output_cost, Q, z, act, act, lab, lab, wt, False,
                       nb, u, u_next, um, r, wt, sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c])


@njit(**JIT_OPTIONS_REDUCTION)
def _tile_moments(z, act, lab, nb, n_slots, second_moments, wt, wf, wc, pair,
                  truncated, free1, con1, free2, con2):
    """Add the tile's truncation counts and moments, per layer and cluster present.

    z (L+1, Mp, T) images, act (L, Mp, T) cone coordinates (rows >= M are padding and
    ignored); wt (T,), wf, wc (M, T) and pair (T,) scratch; truncated (L, Q, M), free1/con1 (L, Q, M, M),
    free2/con2 (L, Q, M, M, M) (or (0, ...) without second moments): this chunk's slots.
    """
    L = act.shape[0]
    for l in range(L):
        s = _first_slot(lab, nb, n_slots)
        while s >= 0:
            _slot_mask(lab, nb, s, n_slots, wt)
            _split_mask(act[l], wt, nb, wf, wc)
            _first_moments(z[l], wf, wc, nb, truncated[l, s], free1[l, s], con1[l, s])
            if second_moments:
                _second_moments(z[l], wf, wc, pair, nb, free2[l, s], con2[l, s])
            s = _next_slot(lab, nb, s, n_slots)


@njit(**JIT_OPTIONS_REDUCTION)
def _split_mask(act_l, wt, nb, wf, wc):
    """wf[k, t] = wt[t] 1[a_k > 0], wc[k, t] = wt[t] 1[a_k <= 0] (the kink is truncated), k < M."""
    M = wf.shape[0]
    for k in range(M):
        for t in range(nb):
            f = wt[t] if act_l[k, t] > 0.0 else 0.0
            wf[k, t] = f
            wc[k, t] = wt[t] - f


@njit(**JIT_OPTIONS_REDUCTION)
def _first_moments(zl, wf, wc, nb, truncated, free1, con1):
    """truncated[k] += sum_t wc[k, t]; free1[k, j] += sum_t wf[k, t] z[j, t]; con1 likewise.

    zl (Mp, T) (rows >= M ignored); truncated (M,) int64; free1, con1 (M, M). The count
    is a sum of 0.0/1.0 over at most TILE terms, exact in float64.
    """
    M = free1.shape[0]
    for k in range(M):
        n = 0.0
        for t in range(nb):
            n += wc[k, t]
        truncated[k] += np.int64(n)
        for j in range(M):
            acc_f = 0.0
            acc_c = 0.0
            for t in range(nb):
                acc_f += wf[k, t] * zl[j, t]
                acc_c += wc[k, t] * zl[j, t]
            free1[k, j] += acc_f
            con1[k, j] += acc_c


@njit(**JIT_OPTIONS_REDUCTION)
def _second_moments(zl, wf, wc, pair, nb, free2, con2):
    """free2[k, i, j] += sum_t wf[k, t] z[i, t] z[j, t] for j >= i; con2 likewise with wc.

    zl (Mp, T) (rows >= M ignored), pair (T,) scratch, free2, con2 (M, M, M); the lower
    triangle is left alone.
    """
    M = free2.shape[0]
    for i in range(M):
        for j in range(i, M):
            for t in range(nb):
                pair[t] = zl[i, t] * zl[j, t]
            for k in range(M):
                acc_f = 0.0
                acc_c = 0.0
                for t in range(nb):
                    acc_f += wf[k, t] * pair[t]
                    acc_c += wc[k, t] * pair[t]
                free2[k, i, j] += acc_f
                con2[k, i, j] += acc_c
