"""Kernels of the nonsmooth integrator (``engine.kinks``): frozen activation patterns.

The flow's right-hand side is smooth while no point changes activation pattern.
These kernels evaluate the *frozen-pattern extension* of the cost: every point's
truncation and reverse sweep follow a pattern given as input (bit-packed as
``compute.activation_patterns`` returns it: bit ``k % 64`` of word ``k // 64`` of
``patterns[i, l]`` set = coordinate k of layer l free), not the sign of its
pre-activation. Where the given pattern is the true one the result is the
package's gradient bit for bit (same tiles, same sums in the same order as
``gradient.gradient_kernel``); elsewhere it is the smooth continuation of the
piece the pattern names.

    frozen_gradient_kernel   one streaming pass over all points (chunked like
                             gradient_kernel: deterministic), plus a per-point flag
                             "the pattern differs from the signs of a" (a crossing)
    subset_contributions_kernel  the same tile code on a gathered index list, each entry
                             with its own pattern: every entry's own gradient contribution,
                             one row each (jumps and quadratures are weighted sums of rows)
    subset_preacts_kernel    frozen-pattern pre-activations a (n, L, M) of listed points
    subset_jvp_kernel        the same and their derivative along a parameter direction
    preacts_jvp_kernel       pre-activations of all points and their derivative along
                             one direction (the flow's velocity)
    hermite_dips_kernel      from those at both ends of a step: the points that may
                             touch a hyperplane inside the step and come back

The all-points kernels have serial twins (``*_serial``: the same chunk or point bodies,
the same bits, no parallel region) that a Dask worker runs on its partition
(``backends.dask_frozen``).
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS, JIT_OPTIONS_REDUCTION
from .gradient import (TILE, _FROM_BIAS, _FROM_SRC, _back_product, _first_slot, _layer_sums, _load_tile, _masked_outer,
                       _masked_sum_sq, _matvec, _next_slot, _output_top, _slot_mask, _tile_gradient)


@njit(parallel=True, **JIT_OPTIONS_REDUCTION)
def frozen_gradient_kernel(points, labels, patterns, targets, cw, cb, inv, back, out_w, out_b, output_cost,
                           n_slots, chunk):
    """``gradient.gradient_kernel`` with the activation patterns as input.

    patterns (N, L, n_words) uint64. Returns the five per-chunk sums of
    ``gradient_kernel`` (same layout, unscaled) and ``mismatch`` (N,) uint8: 1 where
    the point's frozen-pattern pre-activations disagree in sign with its pattern
    (``a > 0`` on a cleared bit or ``a <= 0`` on a set bit), i.e. where it crossed.
    """
    sq, g_w, g_b, g_ow, g_ob, mismatch = _frozen_sums(points, cw, out_w, n_slots, chunk)
    for c in prange(sq.shape[0]):
        # np.int64: prange's index is uint64, the serial kernel's int64 (one compilation of the chunk)
        _frozen_chunk(np.int64(c), points, labels, patterns, targets, cw, cb, inv, back, out_w, out_b, output_cost,
                      n_slots, chunk, sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c], mismatch)
    return sq, g_w, g_b, g_ow, g_ob, mismatch


@njit(**JIT_OPTIONS_REDUCTION)
def frozen_gradient_kernel_serial(points, labels, patterns, targets, cw, cb, inv, back, out_w, out_b, output_cost,
                                  n_slots, chunk):
    """``frozen_gradient_kernel`` without a parallel region (the same chunks, the same bits): one
    partition's pass on a Dask worker (``backends.dask_frozen``)."""
    sq, g_w, g_b, g_ow, g_ob, mismatch = _frozen_sums(points, cw, out_w, n_slots, chunk)
    for c in range(sq.shape[0]):
        _frozen_chunk(c, points, labels, patterns, targets, cw, cb, inv, back, out_w, out_b, output_cost,
                      n_slots, chunk, sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c], mismatch)
    return sq, g_w, g_b, g_ow, g_ob, mismatch


@njit(**JIT_OPTIONS)
def _frozen_sums(points, cw, out_w, n_slots, chunk):
    """The zeroed per-chunk sums of a frozen-pattern pass and its (N,) uint8 flags."""
    N = points.shape[0]
    L, M, _ = cw.shape
    P = out_w.shape[0]
    C = (N + chunk - 1) // chunk
    return (np.zeros((C, n_slots)), np.zeros((C, n_slots, L, M, M)), np.zeros((C, n_slots, L, M)),
            np.zeros((C, n_slots, P, M)), np.zeros((C, n_slots, P)), np.zeros(N, dtype=np.uint8))


@njit(**JIT_OPTIONS_REDUCTION)
def _frozen_chunk(c, points, labels, patterns, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                  sq, g_w, g_b, g_ow, g_ob, mismatch):
    """Chunk c of a frozen-pattern pass: its sums into sq, g_w, g_b, g_ow, g_ob, its flags into mismatch."""
    N = points.shape[0]
    L, M, _ = cw.shape
    P = out_w.shape[0]
    z, act, sg, cn, u, u_next, um, r, wt, lab, idx, pw, words = _buffers(L, M, P)
    flags = np.zeros(TILE, dtype=np.uint8)
    stop = min(N, (c + 1) * chunk)
    for start in range(c * chunk, stop, TILE):
        nb = min(TILE, stop - start)
        for t in range(nb):
            idx[t] = start + t
        _load_tile(points, labels, start, nb, z[0], lab)
        flags[:nb] = 0
        _forward_tile_pat(cw, cb, inv, patterns, idx, z, act, sg, cn, words, flags, points.shape[1], nb)
        for t in range(nb):
            mismatch[start + t] = flags[t]
        _tile_gradient(back, targets, out_w, out_b, output_cost, n_slots, z, act, sg, lab, lab, pw, False,
                       nb, u, u_next, um, r, wt, sq, g_w, g_b, g_ow, g_ob)


@njit(**JIT_OPTIONS_REDUCTION)
def subset_contributions_kernel(points, labels, idx, pats, targets, cw, cb, inv, back, out_w, out_b, output_cost):
    """Each listed entry's own gradient contribution: point ``idx[e]`` under pattern ``pats[e]``.

    The per-point terms that ``frozen_gradient_kernel`` sums (the same forward sweep by
    pattern, residuals and reverse sweep, in tiles of entries), written one entry per row
    instead of summed, so that any number of weighted sums of them is one matrix product
    (``FrozenModel.subset_matrix``) rather than one pass per weight. Returns (g_w (n, L, Mp,
    Mp), g_b (n, L, Mp), g_ow (n, P, Mp), g_ob (n, P)), unscaled (divide by N) like the
    gradient kernel's sums.
    """
    n = idx.shape[0]
    L, M, _ = cw.shape
    P = out_w.shape[0]
    g_w = np.zeros((n, L, M, M))
    g_b = np.zeros((n, L, M))
    g_ow = np.zeros((n, P, M))
    g_ob = np.zeros((n, P))
    z, act, sg, cn, u, u_next, um, r, wt, lab, tidx, pw, words = _buffers(L, M, P)
    tpat = np.empty((TILE, pats.shape[1], pats.shape[2]), dtype=np.uint64)
    local = np.empty(TILE, dtype=np.int64)
    no_flags = np.zeros(TILE, dtype=np.uint8)       # (m_true = 0: never written)
    for start in range(0, n, TILE):
        nb = min(TILE, n - start)
        for t in range(nb):
            tidx[t] = idx[start + t]
            local[t] = t
            for l in range(pats.shape[1]):
                for w in range(pats.shape[2]):
                    tpat[t, l, w] = pats[start + t, l, w]
        _load_gather(points, labels, tidx, nb, z[0], lab)
        _forward_tile_pat(cw, cb, inv, tpat, local, z, act, sg, cn, words, no_flags, 0, nb)
        if output_cost:
            _output_top(out_w, out_b, targets, lab, act[L - 1], sg[L - 1], r, u, nb)
            for t in range(nb):
                e = start + t
                for p in range(P):
                    g_ob[e, p] = r[p, t]
                    for j in range(M):
                        g_ow[e, p, j] = r[p, t] * act[L - 1, j, t] if sg[L - 1, j, t] > 0.0 else 0.0
                for k in range(M):
                    g_b[e, L - 1, k] = u[k, t]
                    for j in range(M):
                        g_w[e, L - 1, k, j] = u[k, t] * z[L, j, t]
        else:
            for k in range(M):
                for t in range(nb):
                    r[k, t] = z[L, k, t] - targets[lab[t], k]
            _matvec(back[L - 1], r, u, u, wt[:0], _FROM_BIAS, nb)
        for l in range(L - 1, -1, -1):
            for t in range(nb):
                e = start + t
                for k in range(M):
                    uk = u[k, t]
                    free = sg[l, k, t] > 0.0
                    if not free:
                        g_b[e, l, k] -= uk
                    for j in range(M):
                        x = z[l + 1, j, t]
                        g_w[e, l, k, j] -= uk * ((x - z[l, j, t]) if free else x)
            if l > 0:
                _back_product(back[l - 1], u, sg[l], u_next, nb)
                u, u_next = u_next, u
    return g_w, g_b, g_ow, g_ob


@njit(**JIT_OPTIONS)
def serial_matmul(a, b):
    """a (m, n) @ b (n, k), float64, in the calling thread: row by row, each row of b scaled and
    added in order (vectorized along b's rows). For the kink integrator's small products, which a
    multithreaded BLAS would run on threads that then spin and take the cores from the next
    parallel pass over the points."""
    m, n = a.shape
    k = b.shape[1]
    out = np.zeros((m, k))
    for i in range(m):
        row = out[i]
        for j in range(n):
            aij = a[i, j]
            if aij != 0.0:
                bj = b[j]
                for c in range(k):
                    row[c] += aij * bj[c]
    return out


@njit(**JIT_OPTIONS)
def scatter_rows(weights, slots, n_slots, b):
    """out (n_slots, k) float64 with out[slots[e]] += weights[e] * b[e] for e = 0, 1, ... in order
    (zero weights skipped): ``serial_matmul`` of the sparse (n_slots, n) matrix with
    weights[e] at (slots[e], e), the same additions in the same order, without the matrix."""
    k = b.shape[1]
    out = np.zeros((n_slots, k))
    for e in range(b.shape[0]):
        w = weights[e]
        if w != 0.0:
            row = out[slots[e]]
            be = b[e]
            for c in range(k):
                row[c] += w * be[c]
    return out


@njit(**JIT_OPTIONS)
def _buffers(L, M, P):
    """A tile's scratch: those of ``gradient._tile_buffers`` (z, act, cn, u, u_next, um, r, wt,
    lab) with sg (L, M, T) the pattern's signs, idx (T,) the tile's point indices, pw (T,) weights
    and words (T,) uint64 the tile's pattern words of one layer."""
    T = TILE
    return (np.zeros((L + 1, M, T)), np.empty((L, M, T)), np.empty((L, M, T)), np.empty((M, T)),
            np.empty((M, T)), np.empty((M, T)), np.empty((M, T)),
            np.empty((max(M, P), T)), np.empty(T), np.empty(T, dtype=np.int64), np.empty(T, dtype=np.int64),
            np.ones(T), np.empty(T, dtype=np.uint64))


@njit(**JIT_OPTIONS)
def _load_gather(points, labels, idx, nb, z0, lab):
    M = points.shape[1]
    for t in range(nb):
        i = idx[t]
        lab[t] = labels[i]
        for j in range(M):
            z0[j, t] = points[i, j]


@njit(**JIT_OPTIONS)
def _is_free(patterns, i, l, k):
    return (patterns[i, l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)


@njit(**JIT_OPTIONS)
def _forward_tile_pat(cw, cb, inv, patterns, idx, z, act, sg, cn, words, flags, m_true, nb):
    """``gradient._forward_tile`` with truncation by pattern; sg[l] = +1 free, -1 truncated.

    Padded coordinates (k >= the patterns' width 64 * n_words, or bits never set) are
    truncated with a = 0: they add nothing, as in the tile kernel. ``words`` (T,) uint64
    scratch. ``flags[t]`` (T,) uint8 is set to 1 where point t's pre-activations disagree in
    sign with its pattern on one of the first ``m_true`` coordinates of a layer (a crossing),
    and left as it was elsewhere.
    """
    L = cw.shape[0]
    M = cw.shape[1]
    for l in range(L):
        _matvec(cw[l], z[l], act[l], z[l], cb[l], _FROM_BIAS, nb)
        _tile_signs(patterns, idx, l, nb, sg[l], words)
        for k in range(M):
            for t in range(nb):
                free = sg[l, k, t] > 0.0
                a = act[l, k, t]
                cn[k, t] = 0.0 if free else -a
                if k < m_true and (a > 0.0) != free:
                    flags[t] = 1
        _matvec(inv[l], cn, z[l + 1], z[l], cb[l], _FROM_SRC, nb)


@njit(**JIT_OPTIONS)
def _tile_signs(patterns, idx, l, nb, sg_l, words):
    """sg_l[k, t] = +1.0 where bit k of point idx[t]'s layer-l pattern is set, else -1.0 (rows of
    sg_l beyond the patterns' 64 * n_words bits: -1.0). The tile's words are gathered once, then
    each row is one loop over the tile's points (vectorized)."""
    M = sg_l.shape[0]
    W = patterns.shape[2]
    one = np.uint64(1)
    for w in range(W):
        for t in range(nb):
            words[t] = patterns[idx[t], l, w]
        for b in range(min(64, M - 64 * w)):
            shift = np.uint64(b)
            row = sg_l[64 * w + b]
            for t in range(nb):
                row[t] = np.float64((words[t] >> shift) & one) * 2.0 - 1.0
    for k in range(min(M, 64 * W), M):
        for t in range(nb):
            sg_l[k, t] = -1.0


@njit(**JIT_OPTIONS)
def _forward_point_pat(x, pat, cw, cb, edges_t, images, acts):
    """``forward.forward_point`` through all layers, truncating by the pattern pat (L, n_words)."""
    L = cw.shape[0]
    M = x.shape[0]
    for j in range(M):
        images[0, j] = x[j]
    for l in range(L):
        for k in range(M):
            s = cb[l, k]
            for j in range(M):
                s += cw[l, k, j] * images[l, j]
            acts[l, k] = s
        for j in range(M):
            images[l + 1, j] = images[l, j]
        for k in range(M):
            if not ((pat[l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)):
                a = acts[l, k]
                for j in range(M):
                    images[l + 1, j] -= a * edges_t[l, k, j]


@njit(**JIT_OPTIONS)
def subset_preacts_kernel(points, idx, pats, cw, cb, edges_t):
    """Frozen-pattern pre-activations (n, L, M) of points idx[e] under patterns pats[e] (unpadded arrays)."""
    n = idx.shape[0]
    L, M, _ = cw.shape
    out = np.empty((n, L, M))
    images = np.empty((L + 1, M))
    acts = np.empty((L, M))
    x = np.empty(M)
    for e in range(n):
        for j in range(M):
            x[j] = points[idx[e], j]
        _forward_point_pat(x, pats[e], cw, cb, edges_t, images, acts)
        out[e] = acts
    return out


@njit(**JIT_OPTIONS)
def _jvp_point(x, pat, cw, cb, edges_t, dcw, dcb, dedges_t, z, dz, a, da, a_out, d_out):
    """Frozen-pattern pre-activations a_out (L, M) of one point x under pattern pat (L, n_words)
    and d_out (L, M), their derivative along the tangent (dcw, dcb, dedges_t) of (cw, cb, edges_t).
    z, dz, a, da: (M,) work buffers."""
    L, M, _ = cw.shape
    for j in range(M):
        z[j] = x[j]
        dz[j] = 0.0
    for l in range(L):
        for k in range(M):
            s = cb[l, k]
            ds = dcb[l, k]
            for j in range(M):
                s += cw[l, k, j] * z[j]
                ds += dcw[l, k, j] * z[j] + cw[l, k, j] * dz[j]
            a[k] = s
            da[k] = ds
            a_out[l, k] = s
            d_out[l, k] = ds
        for k in range(M):
            if not ((pat[l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)):
                for j in range(M):
                    z[j] -= a[k] * edges_t[l, k, j]
                    dz[j] -= da[k] * edges_t[l, k, j] + a[k] * dedges_t[l, k, j]


@njit(**JIT_OPTIONS)
def subset_jvp_kernel(points, idx, pats, cw, cb, edges_t, dcw, dcb, dedges_t):
    """Frozen-pattern pre-activations a (n, L, M) and their derivatives along a direction.

    (dcw, dcb, dedges_t) is the direction's tangent of (cw, cb, edges_t), one per entry
    (n, L, M, M), (n, L, M), (n, L, M, M): with dA = -A dW A, dedges_t[e, l] = dA^T.
    """
    n = idx.shape[0]
    L, M, _ = cw.shape
    a_out = np.empty((n, L, M))
    d_out = np.empty((n, L, M))
    z, dz, a, da = np.empty(M), np.empty(M), np.empty(M), np.empty(M)
    for e in range(n):
        _jvp_point(points[idx[e]], pats[e], cw, cb, edges_t, dcw[e], dcb[e], dedges_t[e], z, dz, a, da,
                   a_out[e], d_out[e])
    return a_out, d_out


@njit(parallel=True, **JIT_OPTIONS)
def preacts_jvp_kernel(points, pats, cw, cb, edges_t, dcw, dcb, dedges_t, chunk):
    """Frozen-pattern pre-activations a (N, L, M) of all points and their derivative along one direction.

    ``subset_jvp_kernel`` on every point with the tangent shared, (dcw, dcb,
    dedges_t) of shapes (L, M, M), (L, M), (L, M, M). Parallel over fixed chunks.
    """
    N, M = points.shape
    L = cw.shape[0]
    a_out = np.empty((N, L, M))
    d_out = np.empty((N, L, M))
    C = (N + chunk - 1) // chunk
    for c in prange(C):
        z, dz, a, da = np.empty(M), np.empty(M), np.empty(M), np.empty(M)
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            _jvp_point(points[i], pats[i], cw, cb, edges_t, dcw, dcb, dedges_t, z, dz, a, da, a_out[i], d_out[i])
    return a_out, d_out


@njit(**JIT_OPTIONS)
def preacts_jvp_serial(points, pats, cw, cb, edges_t, dcw, dcb, dedges_t):
    """``preacts_jvp_kernel`` in the calling thread (per point, the same bits): a Dask partition's pass."""
    N, M = points.shape
    L = cw.shape[0]
    a_out = np.empty((N, L, M))
    d_out = np.empty((N, L, M))
    z, dz, a, da = np.empty(M), np.empty(M), np.empty(M), np.empty(M)
    for i in range(N):
        _jvp_point(points[i], pats[i], cw, cb, edges_t, dcw, dcb, dedges_t, z, dz, a, da, a_out[i], d_out[i])
    return a_out, d_out


@njit(parallel=True, **JIT_OPTIONS)
def hermite_dips_kernel(pats, a0, da0, a1, da1, h, margin, chunk):
    """Points that may touch or cross a hyperplane inside a step and come back: (N,) uint8.

    For every coordinate on the side its pattern names at both ends of the step
    (values a0, a1 and time derivatives da0, da1 at t0 and t0 + h), the cubic
    Hermite interpolant p(s), s in [0, 1], of its distance sigma * a (sigma = +1 free,
    -1 truncated) is examined: flagged when its interior minimum falls below
    ``margin * min(sigma a0, sigma a1)`` (0 < margin < 1: the coordinate approaches
    its hyperplane and recedes; a sign change in between is possible). Exact for any
    path that is a cubic in time; the flagged points are then examined on the
    step's dense output.
    """
    N = a0.shape[0]
    flags = np.zeros(N, dtype=np.uint8)
    C = (N + chunk - 1) // chunk
    for c in prange(C):
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            flags[i] = _dips_point(pats[i], a0[i], da0[i], a1[i], da1[i], h, margin)
    return flags


@njit(**JIT_OPTIONS)
def hermite_dips_serial(pats, a0, da0, a1, da1, h, margin):
    """``hermite_dips_kernel`` in the calling thread (a Dask partition's pass)."""
    N = a0.shape[0]
    flags = np.zeros(N, dtype=np.uint8)
    for i in range(N):
        flags[i] = _dips_point(pats[i], a0[i], da0[i], a1[i], da1[i], h, margin)
    return flags


@njit(**JIT_OPTIONS)
def _dips_point(pat, a0, da0, a1, da1, h, margin):
    """1 where a coordinate of one point (pattern (L, W), values and rates (L, M) at both ends)
    dips towards its hyperplane inside the step (``hermite_dips_kernel``), else 0."""
    L, M = a0.shape
    for l in range(L):
        for k in range(M):
            free = (pat[l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)
            sig = 1.0 if free else -1.0
            p0 = sig * a0[l, k]
            p1 = sig * a1[l, k]
            if not (p0 > 0.0 and p1 > 0.0):
                continue
            m0 = sig * da0[l, k] * h
            m1 = sig * da1[l, k] * h
            c1 = m0
            c2 = -3.0 * p0 - 2.0 * m0 + 3.0 * p1 - m1
            c3 = 2.0 * p0 + m0 - 2.0 * p1 + m1
            lo = margin * min(p0, p1)
            # interior critical points of p: c1 + 2 c2 s + 3 c3 s^2 = 0
            qa, qb, qc = 3.0 * c3, 2.0 * c2, c1
            if qa == 0.0:
                if qb != 0.0:
                    s = -qc / qb
                    if 0.0 < s < 1.0 and p0 + s * (c1 + s * (c2 + s * c3)) < lo:
                        return 1
            else:
                disc = qb * qb - 4.0 * qa * qc
                if disc >= 0.0:
                    r = np.sqrt(disc)
                    for s in ((-qb - r) / (2.0 * qa), (-qb + r) / (2.0 * qa)):
                        if 0.0 < s < 1.0 and p0 + s * (c1 + s * (c2 + s * c3)) < lo:
                            return 1
    return 0


@njit(**JIT_OPTIONS)
def _poly(coef, c, x):
    K = coef.shape[0]
    v = coef[K - 1, c]
    for j in range(K - 2, -1, -1):
        v = v * x + coef[j, c]
    return v


@njit(**JIT_OPTIONS)
def _dpoly(coef, c, x):
    K = coef.shape[0]
    d = 0.0
    for j in range(K - 1, 0, -1):
        d = d * x + j * coef[j, c]
    return d


@njit(**JIT_OPTIONS)
def _leave(coef, c, lo, hi, free):
    """Bisection: the first x in [lo, hi] where sum_j coef[j, c] x^j is off its old side."""
    if (_poly(coef, c, lo) > 0.0) != free:
        return lo
    for _ in range(56):
        mid = 0.5 * (lo + hi)
        if (_poly(coef, c, mid) > 0.0) == free:
            lo = mid
        else:
            hi = mid
    return hi


@njit(**JIT_OPTIONS)
def first_crossings(coef, after, free, held, n_scan):
    """Per column c, the first x in (after[c], 1] where the polynomial p_c leaves its side.

    coef (K, C): monomial coefficients in x in [-1, 1] of each column's pre-activation
    along a step; free (C,) bool: its side (p > 0 free); held (C,) bool: skipped.
    A sign change is looked for on a grid of n_scan + 1 points; where none is seen, the
    grid's interior local minima of the distance sigma * p within a quarter of its
    largest value are polished by golden-section search, so that a dip narrower than
    the grid is not missed. Returns (x, slope) (C,): x = inf where p stays on its
    side, slope = dp/dx at x.
    """
    C = coef.shape[1]
    roots = np.full(C, np.inf)
    slopes = np.zeros(C)
    dx = 2.0 / n_scan
    g = 0.6180339887498949
    for c in range(C):
        if held[c]:
            continue
        fr = free[c]
        sig = 1.0 if fr else -1.0
        thr = after[c]
        prev_x = thr
        found = False
        s_m2 = np.inf
        s_m1 = np.inf
        x_m1 = thr
        big = 0.0
        cand_x = np.inf
        cand_s = np.inf
        for k in range(n_scan + 1):
            x = -1.0 + k * dx
            if x <= thr:
                continue
            s = sig * _poly(coef, c, x)
            if s <= 0.0:
                roots[c] = _leave(coef, c, prev_x, x, fr)
                found = True
                break
            big = max(big, s)
            if s_m1 <= s_m2 and s_m1 <= s and s_m1 < cand_s:
                cand_s = s_m1
                cand_x = x_m1
            s_m2, s_m1, x_m1 = s_m1, s, x
            prev_x = x
        if not found and cand_x < np.inf and cand_s < 0.25 * big:
            a = max(thr, cand_x - dx)
            b = min(1.0, cand_x + dx)
            for _ in range(60):
                u = b - g * (b - a)
                v = a + g * (b - a)
                su = sig * _poly(coef, c, u)
                sv = sig * _poly(coef, c, v)
                if su <= 0.0:
                    roots[c] = _leave(coef, c, a, u, fr)
                    found = True
                    break
                if sv <= 0.0:
                    roots[c] = _leave(coef, c, a, v, fr)
                    found = True
                    break
                if su < sv:
                    b = v
                else:
                    a = u
        if found:
            slopes[c] = _dpoly(coef, c, roots[c])
    return roots, slopes
