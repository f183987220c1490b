"""Cost and exact gradient in cumulative parameters (MODEL.md sections 4-6).

One streaming pass over the points: each chunk runs the forward sweep and the
reverse sweep of section 6 point by point and accumulates into its own slot of
the per-chunk buffers; the caller adds the chunks in order. Nothing of size
N x L x M is allocated. Sums are unscaled: the caller divides by N (cost by 2N).
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS
from .forward import forward_point


@njit(parallel=True, **JIT_OPTIONS)
def gradient_kernel(points, labels, targets, cw, cb, edges_t, out_w, out_b,
                    output_cost, n_slots, chunk):
    """Per-chunk sums of squared residuals and of the cumulative gradient.

    Args:
        points (N, M), labels (N,) int64, targets (Q, M) input-space targets or
        (Q, P) output targets; cw, cb, edges_t as in ``forward``; out_w (P, M),
        out_b (P,) the output layer (P = 0 for the input cost); output_cost: bool;
        n_slots: 1 for totals or Q for a per-cluster split (slot = label);
        chunk: points per chunk.

    Returns, with C = ceil(N / chunk) and S = n_slots:
        sq   (C, S)          sum of |residual|^2
        g_w  (C, S, L, M, M) sum of dC_i/dW^(l) times N
        g_b  (C, S, L, M)    sum of dC_i/db^(l) times N
        g_ow (C, S, P, M)    sum of dC_i/dW_out times N   (output cost)
        g_ob (C, S, P)       sum of dC_i/db_out times N   (output cost)
    The kink convention of section 5: a coordinate with ``a_k == 0`` is truncated.
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
    for c in prange(C):
        images = np.empty((L + 1, M))
        acts = np.empty((L, M))
        g = np.empty(M)
        u = np.empty(M)
        d = np.empty(M)
        e = np.empty(P)
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            forward_point(points[i], cw, cb, edges_t, L, images, acts)
            lab = labels[i]
            s = lab if n_slots > 1 else 0
            if output_cost:
                # e = W_out x^(L) + b_out - y, with x^(L) = sigma(a_L) = W^(L) x~^(L) + b^(L).
                r2 = 0.0
                for p in range(P):
                    f = out_b[p]
                    for j in range(M):
                        a = acts[L - 1, j]
                        if a > 0.0:
                            f += out_w[p, j] * a
                    e[p] = f - targets[lab, p]
                    r2 += e[p] * e[p]
                    g_ob[c, s, p] += e[p]
                    for j in range(M):
                        a = acts[L - 1, j]
                        if a > 0.0:
                            g_ow[c, s, p, j] += e[p] * a
                sq[c, s] += r2
                # h = W_out^T e feeds W^(L), b^(L) directly; the adjoint starts at W^(L)^T h.
                for j in range(M):
                    h = 0.0
                    for p in range(P):
                        h += out_w[p, j] * e[p]
                    u[j] = h
                    g_b[c, s, L - 1, j] += h
                    for m in range(M):
                        g_w[c, s, L - 1, j, m] += h * images[L, m]
                for j in range(M):
                    acc = 0.0
                    for k in range(M):
                        acc += cw[L - 1, k, j] * u[k]
                    g[j] = acc
            else:
                r2 = 0.0
                for j in range(M):
                    g[j] = images[L, j] - targets[lab, j]
                    r2 += g[j] * g[j]
                sq[c, s] += r2
            # Reverse sweep: g = dC_i/dx~^(l+1) on entry to layer l (0-based).
            for l in range(L - 1, -1, -1):
                for k in range(M):
                    acc = 0.0
                    for j in range(M):
                        acc += edges_t[l, k, j] * g[j]
                    u[k] = acc
                for j in range(M):
                    d[j] = images[l, j] - images[l + 1, j]
                for j in range(M):
                    g[j] = 0.0
                for k in range(M):
                    uk = u[k]
                    if acts[l, k] > 0.0:
                        # free row: (D u) z^T - u x~^T = u_k (z - x~)
                        for j in range(M):
                            g_w[c, s, l, k, j] += uk * d[j]
                            g[j] += cw[l, k, j] * uk
                    else:
                        # truncated row: -u_k x~^T, and -u_k in the bias
                        g_b[c, s, l, k] -= uk
                        for j in range(M):
                            g_w[c, s, l, k, j] -= uk * images[l + 1, j]
    return sq, g_w, g_b, g_ow, g_ob
