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
    sq, truncated, any_trunc, all_trunc, s1, s2 = _observe_sums(points, cw, n_clusters, chunk)
    for c in prange(sq.shape[0]):
        _observe_chunk(np.int64(c), points, labels, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost, chunk,
                       pattern_hash, sq, truncated, any_trunc, all_trunc, s1, s2)
    return sq, truncated, any_trunc, all_trunc, s1, s2


@njit(**JIT_OPTIONS)
def observe_kernel_serial(points, labels, targets, shift, cw, cb, edges_t, out_w, out_b,
                          output_cost, n_clusters, chunk, pattern_hash):
    """``observe_kernel`` without a parallel region (the same chunks, the same sums): for a pass
    of one chunk (a separate function: see ``gradient.gradient_kernel_serial``)."""
    sq, truncated, any_trunc, all_trunc, s1, s2 = _observe_sums(points, cw, n_clusters, chunk)
    for c in range(sq.shape[0]):
        _observe_chunk(c, points, labels, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost, chunk,
                       pattern_hash, sq, truncated, any_trunc, all_trunc, s1, s2)
    return sq, truncated, any_trunc, all_trunc, s1, s2


@njit(**JIT_OPTIONS)
def _observe_sums(points, cw, n_clusters, chunk):
    """The zeroed per-chunk sums of ``observe_kernel``."""
    N, M = points.shape
    L = cw.shape[0]
    Q = n_clusters
    C = (N + chunk - 1) // chunk
    sq = np.zeros((C, Q))
    truncated = np.zeros((C, L, Q, M), dtype=np.int64)
    any_trunc = np.zeros((C, L, Q), dtype=np.int64)
    all_trunc = np.zeros((C, L, Q), dtype=np.int64)
    s1 = np.zeros((C, L, Q, M))
    s2 = np.zeros((C, L, Q, M))
    return sq, truncated, any_trunc, all_trunc, s1, s2


@njit(**JIT_OPTIONS)
def _observe_chunk(c, points, labels, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost, chunk,
                   pattern_hash, sq, truncated, any_trunc, all_trunc, s1, s2):
    """Chunk c's points into row c of every sum, and their pattern hashes."""
    N, M = points.shape
    L = cw.shape[0]
    P = out_w.shape[0]
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



@njit(**JIT_OPTIONS)
def summarize(sq, truncated, any_trunc, all_trunc, s1, s2, counts, shift, sorted_hashes):
    """The observables from the per-chunk sums of ``observe_kernel`` (chunks added in order).

    Args: the kernel's sums; counts (Q,) int64 points per cluster; shift (Q, M) as given
    to the kernel; sorted_hashes: the pattern hashes (any number of each), sorted.
    Returns (sq (Q,), coordinate fraction (L, Q, M), spread (L, Q), collapse ratio (L,),
    truncated fraction (L, Q), collapsed fraction (L, Q), number of distinct patterns).
    A cluster without points has NaN fractions and spread; the collapse ratio is NaN
    where the clusters' centres coincide (MODEL.md section 11).
    """
    C, L, Q, M = s1.shape
    sq_t, tr, an, al = sq[0].copy(), truncated[0].copy(), any_trunc[0].copy(), all_trunc[0].copy()
    m1, m2 = s1[0].copy(), s2[0].copy()
    for c in range(1, C):
        sq_t += sq[c]
        tr += truncated[c]
        an += any_trunc[c]
        al += all_trunc[c]
        m1 += s1[c]
        m2 += s2[c]
    N = 0
    for q in range(Q):
        N += counts[q]
    coord = np.full((L, Q, M), np.nan)
    spread = np.full((L, Q), np.nan)
    trunc_frac = np.full((L, Q), np.nan)
    coll_frac = np.full((L, Q), np.nan)
    ratio = np.full(L, np.nan)
    centers = np.empty((L, Q, M))
    for l in range(L):
        for q in range(Q):
            n = float(counts[q])
            if n == 0.0:
                continue
            trunc_frac[l, q] = an[l, q] / n
            coll_frac[l, q] = al[l, q] / n
            s = 0.0
            for k in range(M):
                coord[l, q, k] = tr[l, q, k] / n
                mean = m1[l, q, k] / n
                v = m2[l, q, k] / n - mean * mean
                s += 0.0 if v < 0.0 else v            # round-off below zero; NaN and inf kept
                centers[l, q, k] = mean + shift[q, k]
            spread[l, q] = s
        within = between = 0.0
        overall = np.zeros(M)
        for q in range(Q):
            if counts[q] > 0:
                for k in range(M):
                    overall[k] += counts[q] * centers[l, q, k]
        for k in range(M):
            overall[k] /= N
        for q in range(Q):
            if counts[q] > 0:
                within += counts[q] * spread[l, q]
                d = 0.0
                for k in range(M):
                    d += (centers[l, q, k] - overall[k]) ** 2
                between += counts[q] * d
        if between > 0.0:
            ratio[l] = within / between
    hashes = sorted_hashes
    n_patterns = 1 if hashes.size else 0
    for i in range(1, hashes.size):
        if hashes[i] != hashes[i - 1]:
            n_patterns += 1
    return sq_t, coord, spread, ratio, trunc_frac, coll_frac, n_patterns


@njit(parallel=True, **JIT_OPTIONS)
def observe_many(cw, cb, edges_t, out_w, out_b, shift, data_of, points, labels, targets, counts, output_cost,
                 n_clusters, chunk, sq, coord, spread, ratio, trunc_frac, coll_frac, n_patterns, pattern_hash):
    """``observe_kernel_serial`` and ``summarize`` for B networks at once, in parallel over them
    (the records of an ensemble's members): each network's results are those of its own call.

    Args: per network b (leading axis B): cw, cb, edges_t, out_w, out_b, shift as in
    ``observe_kernel``; data_of (B,) int64 its dataset, whose points (D, N, M), labels
    (D, N), targets (D, Q, .) and counts (D, Q) are stacked; output_cost, n_clusters, chunk
    as in ``observe_kernel``. Outputs, written per network: sq (B, Q), coord (B, L, Q, M),
    spread (B, L, Q), ratio (B, L), trunc_frac, coll_frac (B, L, Q), n_patterns (B,) int64,
    pattern_hash (B, N) uint64 (see ``summarize``).
    """
    for b in prange(cw.shape[0]):
        d = data_of[b]
        parts = observe_kernel_serial(points[d], labels[d], targets[d], shift[b], cw[b], cb[b], edges_t[b],
                                      out_w[b], out_b[b], output_cost, n_clusters, chunk, pattern_hash[b])
        s, c, sp, r, tf, cf, n = summarize(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], counts[d],
                                           shift[b], np.sort(pattern_hash[b]))
        sq[b] = s
        coord[b] = c
        spread[b] = sp
        ratio[b] = r
        trunc_frac[b] = tf
        coll_frac[b] = cf
        n_patterns[b] = n


@njit(**JIT_OPTIONS)
def cluster_sums_kernel(points, labels, n_clusters, chunk):
    """(C, Q, M) float64: per chunk, the sum of each cluster's points, in point order (the
    caller adds the chunks in order: the same bits on one process and on a Dask cluster)."""
    N, M = points.shape
    C = (N + chunk - 1) // chunk
    sums = np.zeros((C, n_clusters, M))
    for c in range(C):
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            q = labels[i]
            for j in range(M):
                sums[c, q, j] += points[i, j]
    return sums
