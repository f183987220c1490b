"""The network's parameter maps (MODEL.md sections 2, 3, 7 and 9), O(L M^3), in Numba.

Layer form <-> cumulative form, the inverses ``A_l = (W^(l))^-1`` with their
condition numbers, and the pull-back of a cumulative gradient to the layer or
aligned parametrization. :class:`truncflow.Params`, the public gradient and the
flow's per-evaluation path (:mod:`truncflow.kernels.flow`) all call these
functions, so the same state gives the same bits whichever way it is evaluated.

IEEE arithmetic (``JIT_OPTIONS``: no reassociation, no fused multiply-adds); every
product sums over its inner index in increasing order. Inputs are float64
C-contiguous; outputs are new arrays. Overflow gives inf/NaN, which the callers
report (nothing here raises).
"""
import numpy as np
from numba import njit

from .config import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _matmul_into(a, b, out):
    """out = a @ b for (M, K) a, (K, N) b: each entry summed over k = 0, 1, ... in order."""
    n, K = a.shape
    out[:, :] = 0.0
    for i in range(n):
        for k in range(K):
            aik = a[i, k]
            for j in range(b.shape[1]):
                out[i, j] += aik * b[k, j]


@njit(**JIT_OPTIONS)
def _matvec_into(a, x, out):
    """out = a @ x for (M, K) a, (K,) x: each entry summed over k = 0, 1, ... in order."""
    for i in range(a.shape[0]):
        s = 0.0
        for k in range(a.shape[1]):
            s += a[i, k] * x[k]
        out[i] = s


@njit(**JIT_OPTIONS)
def _invert_into(a, out, lu, perm, xt):
    """out = a^-1 by LU with partial pivoting (rows), then one triangular solve per column.

    lu, xt (M, M) float64 and perm (M,) int64 are scratch. A zero pivot (an exactly
    singular matrix) fills out with inf.
    """
    M = a.shape[0]
    lu[:, :] = a
    for i in range(M):
        perm[i] = i
    for k in range(M):
        p = k
        big = abs(lu[k, k])
        for i in range(k + 1, M):
            if abs(lu[i, k]) > big:
                big, p = abs(lu[i, k]), i
        if big == 0.0:
            out[:, :] = np.inf
            return
        if p != k:
            for j in range(M):
                lu[k, j], lu[p, j] = lu[p, j], lu[k, j]
            perm[k], perm[p] = perm[p], perm[k]
        pivot = lu[k, k]
        for i in range(k + 1, M):
            f = lu[i, k] / pivot
            lu[i, k] = f
            for j in range(k + 1, M):
                lu[i, j] -= f * lu[k, j]
    # Solve L U X = P I column by column (out is written transposed, then flipped).
    for c in range(M):
        x = xt[c]
        for i in range(M):
            x[i] = 1.0 if perm[i] == c else 0.0
        for i in range(M):
            s = x[i]
            for j in range(i):
                s -= lu[i, j] * x[j]
            x[i] = s
        for i in range(M - 1, -1, -1):
            s = x[i]
            for j in range(i + 1, M):
                s -= lu[i, j] * x[j]
            x[i] = s / lu[i, i]
    for i in range(M):
        for j in range(M):
            out[i, j] = xt[j, i]


@njit(**JIT_OPTIONS)
def _one_norm(a):
    """max_j sum_i |a_ij| (NaN when a has a NaN)."""
    M = a.shape[0]
    best = 0.0
    for j in range(M):
        s = 0.0
        for i in range(M):
            s += abs(a[i, j])
        if s > best or s != s:
            best = s
            if s != s:
                return s
    return best


@njit(**JIT_OPTIONS)
def invert_stack(cw):
    """Inverses (L, M, M) of the cumulative weights and their 1-norm condition numbers (L,):
    ``|W|_1 |W^-1|_1``, inf for an exactly singular matrix, NaN when W is not finite."""
    L, M = cw.shape[0], cw.shape[1]
    inv = np.empty_like(cw)
    cond = np.empty(L)
    lu, xt, perm = np.empty((M, M)), np.empty((M, M)), np.empty(M, dtype=np.int64)
    for l in range(L):
        _invert_into(cw[l], inv[l], lu, perm, xt)
        cond[l] = np.inf if np.isinf(inv[l, 0, 0]) else _one_norm(cw[l]) * _one_norm(inv[l])
    return inv, cond


@njit(**JIT_OPTIONS)
def cumulative_from_layers(w, b):
    """``W^(l) = W_l W^(l-1)``, ``b^(l) = W_l b^(l-1) + b_l`` (W^(1) = W_1, b^(1) = b_1): (L, M, M), (L, M)."""
    L, M = b.shape
    cw = np.empty_like(w)
    cb = np.empty_like(b)
    cw[0] = w[0]
    cb[0] = b[0]
    wb = np.empty(M)
    for l in range(1, L):
        _matmul_into(w[l], cw[l - 1], cw[l])
        _matvec_into(w[l], cb[l - 1], wb)
        for i in range(M):
            cb[l, i] = wb[i] + b[l, i]
    return cw, cb


@njit(**JIT_OPTIONS)
def layers_from_cumulative(cw, cb, inv):
    """``W_l = W^(l) A_(l-1)``, ``b_l = b^(l) - W_l b^(l-1)`` (W_1 = W^(1), b_1 = b^(1)): (L, M, M), (L, M)."""
    L, M = cb.shape
    w = np.empty_like(cw)
    b = np.empty_like(cb)
    w[0] = cw[0]
    b[0] = cb[0]
    wb = np.empty(M)
    for l in range(1, L):
        _matmul_into(cw[l], inv[l - 1], w[l])
        _matvec_into(w[l], cb[l - 1], wb)
        for i in range(M):
            b[l, i] = cb[l, i] - wb[i]
    return w, b


@njit(**JIT_OPTIONS)
def aligned_weights(frames, scales):
    """``W^(l) = diag(lambda^(l)) R^(l)``: (L, M, M) from frames (L, M, M) and scales (L, M)."""
    L, M = scales.shape
    cw = np.empty_like(frames)
    for l in range(L):
        for k in range(M):
            for j in range(M):
                cw[l, k, j] = scales[l, k] * frames[l, k, j]
    return cw


@njit(**JIT_OPTIONS)
def layer_gradient(w, cw, cb, gw, gb):
    """Pull a cumulative gradient (gw (L, M, M), gb (L, M)) back to the layer parameters (MODEL.md section 7).

    Sweep l = L..1 with ``Gb = G^(L)``, ``Bb = B^(L)``:
    ``dC/dW_l = Gb W^(l-1)^T + Bb b^(l-1)^T`` (``Gb`` for l = 1), ``dC/db_l = Bb``, then
    ``Gb <- G^(l-1) + W_l^T Gb``, ``Bb <- B^(l-1) + W_l^T Bb``. Returns (L, M, M), (L, M).
    """
    L, M = cb.shape
    lw = np.empty_like(gw)
    lb = np.empty_like(gb)
    g_bar = gw[L - 1].copy()
    b_bar = gb[L - 1].copy()
    g_next = np.empty((M, M))
    b_next = np.empty(M)
    for l in range(L - 1, -1, -1):
        if l == 0:
            lw[0] = g_bar
        else:
            for i in range(M):
                for j in range(M):
                    s = 0.0
                    for k in range(M):
                        s += g_bar[i, k] * cw[l - 1, j, k]
                    lw[l, i, j] = s + b_bar[i] * cb[l - 1, j]
        lb[l] = b_bar
        if l > 0:
            for i in range(M):
                for j in range(M):
                    s = 0.0
                    for k in range(M):
                        s += w[l, k, i] * g_bar[k, j]
                    g_next[i, j] = gw[l - 1, i, j] + s
                s = 0.0
                for k in range(M):
                    s += w[l, k, i] * b_bar[k]
                b_next[i] = gb[l - 1, i] + s
            g_bar[:, :] = g_next
            b_bar[:] = b_next
    return lw, lb


@njit(**JIT_OPTIONS)
def scale_gradient(gw, frames):
    """``dC/dlambda^(l)_k = sum_j (dC/dW^(l))_kj R^(l)_kj``: (L, M) from gw and frames (L, M, M)."""
    L, M, _ = gw.shape
    out = np.empty((L, M))
    for l in range(L):
        for k in range(M):
            s = 0.0
            for j in range(M):
                s += gw[l, k, j] * frames[l, k, j]
            out[l, k] = s
    return out
