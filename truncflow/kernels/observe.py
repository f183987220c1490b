"""Observables of a run (MODEL.md section 11) in one streaming pass over the points."""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS
from .forward import forward_point

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@njit(parallel=True, **JIT_OPTIONS)
def observe_kernel(points, labels, targets, shift, cw, cb, edges_t, out_w, out_b,
                   output_cost, n_clusters, chunk, pattern_hash):
    """Per-chunk cluster statistics of the images of every layer.

    Args:
        points (N, M), labels (N,) int64, targets (Q, M) or (Q, P), cw, cb, edges_t
        as in ``forward``; shift (Q, M): a per-cluster origin subtracted before the
        moments are summed (the cluster's input mean keeps them well conditioned);
        out_w (P, M), out_b (P,) and output_cost as in ``gradient_kernel``;
        pattern_hash (N,) uint64, written: a 64-bit FNV-1a hash of the point's
        activation pattern over all layers.

    Returns, with C chunks, Q clusters:
        sq        (C, Q)        sum of |residual|^2
        truncated (C, L, Q, M)  number of points with coordinate k truncated (a_k <= 0)
        any_trunc (C, L, Q)     number of points with at least one truncated coordinate
        all_trunc (C, L, Q)     number of points with every coordinate truncated
        s1        (C, L, Q, M)  sum of x~^(l) - shift
        s2        (C, L, Q, M)  sum of (x~^(l) - shift)^2
    """
    N, M = points.shape
    L = cw.shape[0]
    P = out_w.shape[0]
    Q = n_clusters
    C = (N + chunk - 1) // chunk
    sq = np.zeros((C, Q))
    truncated = np.zeros((C, L, Q, M), dtype=np.int64)
    any_trunc = np.zeros((C, L, Q), dtype=np.int64)
    all_trunc = np.zeros((C, L, Q), dtype=np.int64)
    s1 = np.zeros((C, L, Q, M))
    s2 = np.zeros((C, L, Q, M))
    for c in prange(C):
        images = np.empty((L + 1, M))
        acts = np.empty((L, M))
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            forward_point(points[i], cw, cb, edges_t, L, images, acts)
            q = labels[i]
            h = _FNV_OFFSET
            for l in range(L):
                n_trunc = 0
                word = np.uint64(0)
                for k in range(M):
                    if acts[l, k] <= 0.0:
                        truncated[c, l, q, k] += 1
                        n_trunc += 1
                    else:
                        word |= np.uint64(1) << np.uint64(k % 64)
                    if k % 64 == 63 or k == M - 1:
                        h = (h ^ word) * _FNV_PRIME
                        word = np.uint64(0)
                    v = images[l + 1, k] - shift[q, k]
                    s1[c, l, q, k] += v
                    s2[c, l, q, k] += v * v
                if n_trunc > 0:
                    any_trunc[c, l, q] += 1
                if n_trunc == M:
                    all_trunc[c, l, q] += 1
            pattern_hash[i] = h
            r2 = 0.0
            if output_cost:
                for p in range(P):
                    f = out_b[p]
                    for j in range(M):
                        a = acts[L - 1, j]
                        if a > 0.0:
                            f += out_w[p, j] * a
                    r = f - targets[q, p]
                    r2 += r * r
            else:
                for j in range(M):
                    r = images[L, j] - targets[q, j]
                    r2 += r * r
            sq[c, q] += r2
    return sq, truncated, any_trunc, all_trunc, s1, s2
