"""Cost and exact gradient in cumulative parameters (MODEL.md sections 4-6).

One streaming pass over the points. Each chunk runs the forward sweep and the
reverse sweep of section 6 on tiles of ``TILE`` points stored feature-major, so
the innermost loops run over points and vectorize, and accumulates into its own
slot of the per-chunk buffers; the caller adds the chunks in order. Nothing of
size N x L x M is allocated. Sums are unscaled: the caller divides by N (cost by 2N).

Per layer l (0-based) and tile, with z = x~^(l), x~ = x~^(l+1), a = W^(l+1) z + b^(l+1):
    forward   x~ = z - sum_{k: a_k <= 0} a_k v_k         (a free point stays exactly put)
    backward  u = A^T g;  rows k with a_k > 0 get u_k (z - x~)^T, the others -u_k x~^T
              and -u_k in the bias;  g <- W^T (D u)
The kink convention of section 5: a coordinate with ``a_k == 0`` is truncated.
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS, JIT_OPTIONS_REDUCTION

#: Points per tile: the length of the vectorized innermost loops.
TILE = 64


@njit(parallel=True, **JIT_OPTIONS_REDUCTION)
def gradient_kernel(points, labels, targets, cw, cb, edges_t, out_w, out_b,
                    output_cost, n_slots, chunk):
    """Per-chunk sums of squared residuals and of the cumulative gradient.

    Args:
        points (N, M) float32/float64 any layout, labels (N,) int64, targets (Q, M)
        input-space targets or (Q, P) output targets; cw (L, M, M), cb (L, M) the
        cumulative parameters; edges_t (L, M, M) with edges_t[l, k, :] = v_k^(l), the
        k-th column of (W^(l))^-1; out_w (P, M), out_b (P,) the output layer (P = 0 for
        the input cost); output_cost: bool; n_slots: 1 for totals or Q for a
        per-cluster split (slot = label); chunk: points per chunk.

    Returns, with C = ceil(N / chunk) and S = n_slots:
        sq   (C, S)          sum of |residual|^2
        g_w  (C, S, L, M, M) sum of dC_i/dW^(l) times N
        g_b  (C, S, L, M)    sum of dC_i/db^(l) times N
        g_ow (C, S, P, M)    sum of dC_i/dW_out times N   (output cost)
        g_ob (C, S, P)       sum of dC_i/db_out times N   (output cost)
    """
    N, M = points.shape
    L = cw.shape[0]
    P = out_w.shape[0]
    C = (N + chunk - 1) // chunk
    sq = np.zeros((C, n_slots))
    g_w = np.zeros((C, n_slots, L, M, M))
    g_b = np.zeros((C, n_slots, L, M))
    g_ow = np.zeros((C, n_slots, P, M))
    g_ob = np.zeros((C, n_slots, P))
    T = TILE
    for c in prange(C):
        z = np.empty((L + 1, M, T))      # images x~^(l) of the tile, feature-major
        act = np.empty((L, M, T))        # cumulative pre-activations
        g = np.empty((M, T))             # adjoint dC_i/dx~^(l)
        u = np.empty((M, T))
        uf = np.empty((M, T))            # u on free coordinates, 0 elsewhere
        ut = np.empty((M, T))            # u on truncated coordinates, 0 elsewhere
        d = np.empty((M, T))             # z - x~
        d2 = np.empty((M, T))            # scratch
        r = np.empty((max(M, P), T))     # residuals
        wt = np.empty(T)                 # slot mask of the tile
        lab = np.empty(T, dtype=np.int64)
        stop = min(N, (c + 1) * chunk)
        for start in range(c * chunk, stop, T):
            nb = min(T, stop - start)
            _load_tile(points, labels, start, nb, z[0], lab)
            _forward_tile(cw, cb, edges_t, z, act, nb)
            _tile_gradient(cw, edges_t, targets, out_w, out_b, output_cost, n_slots, z, act, lab, nb,
                           g, u, uf, ut, d, d2, r, wt, sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c])
    return sq, g_w, g_b, g_ow, g_ob


@njit(**JIT_OPTIONS)
def _load_tile(points, labels, start, nb, z0, lab):
    """Copy points start..start+nb feature-major into z0 (M, T) and their labels into lab."""
    M = z0.shape[0]
    for t in range(nb):
        lab[t] = labels[start + t]
        for j in range(M):
            z0[j, t] = points[start + t, j]


@njit(**JIT_OPTIONS_REDUCTION)
def _tile_gradient(cw, edges_t, targets, out_w, out_b, output_cost, n_slots, z, act, lab, nb,
                   g, u, uf, ut, d, d2, r, wt, sq, g_w, g_b, g_ow, g_ob):
    """The tile's residuals and reverse sweep (section 6), accumulated per slot.

    z, act from ``_forward_tile``; g, u, uf, ut, d, d2 (M, T), r (max(M, P), T), wt (T,)
    scratch; sq (S,), g_w (S, L, M, M), g_b (S, L, M), g_ow (S, P, M), g_ob (S, P): this
    chunk's slots, S = n_slots (1 for totals, Q per cluster).
    """
    L = cw.shape[0]
    M = g.shape[0]
    P = out_w.shape[0]
    if output_cost:
        _output_top(out_w, out_b, cw[L - 1], targets, lab, act[L - 1], r, u, g, nb)
        n_res = P
    else:
        for k in range(M):
            for t in range(nb):
                r[k, t] = z[L, k, t] - targets[lab[t], k]
                g[k, t] = r[k, t]
        n_res = M
    s = _first_slot(lab, nb, n_slots)
    while s >= 0:
        _slot_mask(lab, nb, s, n_slots, wt)
        sq[s] += _masked_sum_sq(r, n_res, wt, nb)
        if output_cost:
            # e = r: dC/dW_out = e x^(L)^T with x^(L) = sigma(a_L); h = W_out^T e (in u)
            # feeds W^(L), b^(L) directly: + h x~^(L)^T and + h.
            for k in range(M):
                for t in range(nb):
                    d[k, t] = act[L - 1, k, t] if act[L - 1, k, t] > 0.0 else 0.0
            _masked_outer(r, d, wt, nb, g_ow[s], g_ob[s], 1.0)
            _masked_outer(u, z[L], wt, nb, g_w[s, L - 1], g_b[s, L - 1], 1.0)
        s = _next_slot(lab, nb, s, n_slots)
    for l in range(L - 1, -1, -1):
        _backward_tile(l, cw, edges_t, z, act, g, u, uf, ut, d, nb)
        if n_slots == 1:
            _layer_sums(uf, ut, d, z[l + 1], nb, g_w[0, l], g_b[0, l])
            continue
        s = _first_slot(lab, nb, n_slots)
        while s >= 0:
            # restrict the tile to slot s: zero u on the other points (d, x~ need no mask)
            _slot_mask(lab, nb, s, n_slots, wt)
            for k in range(M):
                for t in range(nb):
                    u[k, t] = wt[t] * uf[k, t]
                    d2[k, t] = wt[t] * ut[k, t]
            _layer_sums(u, d2, d, z[l + 1], nb, g_w[s, l], g_b[s, l])
            s = _next_slot(lab, nb, s, n_slots)


@njit(**JIT_OPTIONS)
def _forward_tile(cw, cb, edges_t, z, act, nb):
    """act[l] = W^(l+1) z[l] + b^(l+1) and z[l+1] = z[l] - sum_{a_k <= 0} a_k v_k.

    Compiled without fast-math and summing in the order of ``forward.forward_point``,
    so the gradient and the activation patterns agree bit for bit on every kink.
    """
    L, M, _ = cw.shape
    for l in range(L):
        for k in range(M):
            for t in range(nb):
                act[l, k, t] = cb[l, k]
            for j in range(M):
                w = cw[l, k, j]
                for t in range(nb):
                    act[l, k, t] += w * z[l, j, t]
        for j in range(M):
            for t in range(nb):
                z[l + 1, j, t] = z[l, j, t]
        for k in range(M):
            for j in range(M):
                v = edges_t[l, k, j]
                for t in range(nb):
                    a = act[l, k, t]
                    # a free coordinate subtracts a zero: the same value as skipping it
                    z[l + 1, j, t] -= (a if a <= 0.0 else 0.0) * v


@njit(**JIT_OPTIONS_REDUCTION)
def _output_top(out_w, out_b, cw_last, targets, lab, act_last, r, h, g, nb):
    """r = W_out sigma(a_L) + b_out - y, h = W_out^T r, g = W^(L)^T h."""
    P, M = out_w.shape
    for p in range(P):
        for t in range(nb):
            r[p, t] = out_b[p] - targets[lab[t], p]
        for j in range(M):
            w = out_w[p, j]
            for t in range(nb):
                a = act_last[j, t]
                if a > 0.0:
                    r[p, t] += w * a
    for j in range(M):
        for t in range(nb):
            h[j, t] = 0.0
        for p in range(P):
            w = out_w[p, j]
            for t in range(nb):
                h[j, t] += w * r[p, t]
    for j in range(M):
        for t in range(nb):
            g[j, t] = 0.0
        for k in range(M):
            w = cw_last[k, j]
            for t in range(nb):
                g[j, t] += w * h[k, t]


@njit(**JIT_OPTIONS_REDUCTION)
def _backward_tile(l, cw, edges_t, z, act, g, u, uf, ut, d, nb):
    """u = A^T g split into free/truncated parts, d = z - x~, then g <- W^T (D u)."""
    M = g.shape[0]
    for k in range(M):
        for t in range(nb):
            u[k, t] = 0.0
        for j in range(M):
            e = edges_t[l, k, j]
            for t in range(nb):
                u[k, t] += e * g[j, t]
        for t in range(nb):
            if act[l, k, t] > 0.0:
                uf[k, t] = u[k, t]
                ut[k, t] = 0.0
            else:
                uf[k, t] = 0.0
                ut[k, t] = u[k, t]
    for j in range(M):
        for t in range(nb):
            d[j, t] = z[l, j, t] - z[l + 1, j, t]
            g[j, t] = 0.0
    for k in range(M):
        for j in range(M):
            w = cw[l, k, j]
            for t in range(nb):
                g[j, t] += w * uf[k, t]


@njit(**JIT_OPTIONS_REDUCTION)
def _layer_sums(uf, ut, d, xt, nb, gw, gb):
    """gw += sum_t (uf_t d_t^T - ut_t xt_t^T) and gb -= sum_t ut_t over the tile."""
    M = uf.shape[0]
    M2 = M - M % 2
    for k in range(M):
        acc = 0.0
        for t in range(nb):
            acc += ut[k, t]
        gb[k] -= acc
        for j in range(0, M2, 2):        # two columns at once: uf[k], ut[k] loaded once for both
            # four plain multiply-add sums (each fuses to FMA) instead of two sums of differences
            free0 = 0.0
            free1 = 0.0
            trunc0 = 0.0
            trunc1 = 0.0
            for t in range(nb):
                f = uf[k, t]
                r = ut[k, t]
                free0 += f * d[j, t]
                trunc0 += r * xt[j, t]
                free1 += f * d[j + 1, t]
                trunc1 += r * xt[j + 1, t]
            gw[k, j] += free0 - trunc0
            gw[k, j + 1] += free1 - trunc1
        if M2 < M:
            free0 = 0.0
            trunc0 = 0.0
            for t in range(nb):
                free0 += uf[k, t] * d[M - 1, t]
                trunc0 += ut[k, t] * xt[M - 1, t]
            gw[k, M - 1] += free0 - trunc0


@njit(**JIT_OPTIONS_REDUCTION)
def _masked_outer(a, bmat, wt, nb, out_outer, out_sum, sign):
    """out_outer += sign sum_t wt_t a[:, t] bmat[:, t]^T and out_sum += sign sum_t wt_t a[:, t]."""
    K = out_outer.shape[0]
    J = out_outer.shape[1]
    for k in range(K):
        acc = 0.0
        for t in range(nb):
            acc += wt[t] * a[k, t]
        out_sum[k] += sign * acc
        for j in range(J):
            acc = 0.0
            for t in range(nb):
                acc += wt[t] * a[k, t] * bmat[j, t]
            out_outer[k, j] += sign * acc


@njit(**JIT_OPTIONS_REDUCTION)
def _masked_sum_sq(r, n_res, wt, nb):
    acc = 0.0
    for k in range(n_res):
        for t in range(nb):
            acc += wt[t] * r[k, t] * r[k, t]
    return acc


@njit(**JIT_OPTIONS_REDUCTION)
def _slot_mask(lab, nb, s, n_slots, wt):
    for t in range(nb):
        wt[t] = 1.0 if (n_slots == 1 or lab[t] == s) else 0.0


@njit(**JIT_OPTIONS_REDUCTION)
def _first_slot(lab, nb, n_slots):
    return 0 if n_slots == 1 else _next_slot(lab, nb, -1, n_slots)


@njit(**JIT_OPTIONS_REDUCTION)
def _next_slot(lab, nb, s, n_slots):
    """The smallest label in the tile above s, or -1: slots are visited in increasing order."""
    if n_slots == 1:
        return -1
    nxt = n_slots
    for t in range(nb):
        if lab[t] > s and lab[t] < nxt:
            nxt = lab[t]
    return nxt if nxt < n_slots else -1
