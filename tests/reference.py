"""The slow, obvious NumPy implementation of MODEL.md sections 1-7 that every kernel is held to.

Written for clarity, not speed: one point at a time, formulas exactly as MODEL.md
writes them, linear systems solved with ``np.linalg.solve`` (no precomputed
inverses). It imports nothing from truncflow, so it shares no code, and no bug,
with the package.

Conventions (MODEL.md section 5): sigma'(a) = 1 if a > 0 else 0; a coordinate with
``a_k == 0`` counts as truncated. Everything is float64; ``x`` is an (N, M) array of
points, ``labels`` an (N,) int array, ``targets`` a (Q, M) or (Q, P) array.

Parameters are plain arrays: layer form ``W (L, M, M), b (L, M)``, cumulative form
``cw (L, M, M), cb (L, M)``, optional output layer ``ow (P, M), ob (P,)``.

Costs and gradients are returned per cluster (leading axis Q); the totals are the
sums over that axis.
"""
from __future__ import annotations

import numpy as np


def relu(a):
    return np.maximum(a, 0.0)


def free_mask(a):
    """1.0 where a coordinate is free (a > 0), 0.0 where truncated (a <= 0)."""
    return (a > 0).astype(np.float64)


# ------------------------------------------------------------ section 2: parameters
def cumulative_from_layers(W, b):
    """W^(l) = W_l W^(l-1), b^(l) = W_l b^(l-1) + b_l, starting from W^(0) = I, b^(0) = 0."""
    L, M, _ = W.shape
    cw, cb = np.empty((L, M, M)), np.empty((L, M))
    prev_w, prev_b = np.eye(M), np.zeros(M)
    for l in range(L):
        cw[l] = W[l] @ prev_w
        cb[l] = W[l] @ prev_b + b[l]
        prev_w, prev_b = cw[l], cb[l]
    return cw, cb


def layers_from_cumulative(cw, cb):
    """W_l = W^(l) (W^(l-1))^-1, b_l = b^(l) - W_l b^(l-1)."""
    L, M, _ = cw.shape
    W, b = np.empty((L, M, M)), np.empty((L, M))
    prev_w, prev_b = np.eye(M), np.zeros(M)
    for l in range(L):
        # X = W^(l) prev_w^-1  <=>  prev_w^T X^T = W^(l)^T
        W[l] = np.linalg.solve(prev_w.T, cw[l].T).T
        b[l] = cb[l] - W[l] @ prev_b
        prev_w, prev_b = cw[l], cb[l]
    return W, b


# --------------------------------------------------------- section 3: truncation maps
def tau(cw_l, cb_l, z):
    """tau(z) = W^-1 (sigma(W z + b) - b) for one point z (M,)."""
    return np.linalg.solve(cw_l, relu(cw_l @ z + cb_l) - cb_l)


def images(cw, cb, x):
    """(L + 1, N, M): images[l] = x~^(l) of every point, images[0] = x."""
    L = cw.shape[0]
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((L + 1,) + x.shape)
    out[0] = x
    for l in range(L):
        for i in range(x.shape[0]):
            out[l + 1, i] = tau(cw[l], cb[l], out[l, i])
    return out


def cumulative_preacts(cw, cb, x):
    """(L, N, M): a = W^(l) x~^(l-1) + b^(l), the cone coordinates that decide truncation."""
    img = images(cw, cb, x)
    return np.stack([img[l] @ cw[l].T + cb[l] for l in range(cw.shape[0])])


def patterns(cw, cb, x):
    """(N, L, ceil(M/64)) uint64: bit k % 64 of word k // 64 set when coordinate k is free."""
    a = cumulative_preacts(cw, cb, x)
    L, N, M = a.shape
    n_words = (M + 63) // 64
    out = np.zeros((N, L, n_words), dtype=np.uint64)
    for i in range(N):
        for l in range(L):
            for k in range(M):
                if a[l, i, k] > 0:
                    out[i, l, k // 64] |= np.uint64(1) << np.uint64(k % 64)
    return out


def layer_forward(W, b, x):
    """Ordinary forward pass (section 1): xs (L + 1, N, M) with xs[0] = x, pre (L, N, M)."""
    L = W.shape[0]
    xs = [np.asarray(x, dtype=np.float64)]
    pre = []
    for l in range(L):
        a = xs[-1] @ W[l].T + b[l]
        pre.append(a)
        xs.append(relu(a))
    return np.stack(xs), np.stack(pre)


# ---------------------------------------------------------------- section 4: costs
def cost(cw, cb, x, labels, targets, kind="input", ow=None, ob=None):
    """(Q,) per-cluster costs C_c = 1/(2N) sum_{i in c} |residual_i|^2, from the truncation maps."""
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]
    Q = targets.shape[0]
    xt = images(cw, cb, x)[-1]
    if kind == "input":
        res = xt - targets[labels]
    else:
        # F = W^(L+1) x~^(L) + b^(L+1), W^(L+1) = W_out W^(L), b^(L+1) = W_out b^(L) + b_out
        res = xt @ (ow @ cw[-1]).T + (ow @ cb[-1] + ob) - targets[labels]
    out = np.zeros(Q)
    for i in range(N):
        out[labels[i]] += res[i] @ res[i] / (2 * N)
    return out


# ------------------------------------------- section 6: gradient in cumulative parameters
def grad_cumulative(cw, cb, x, labels, targets, kind="input", ow=None, ob=None):
    """Per-cluster cost and gradient in cumulative parameters by the per-point reverse sweep.

    Returns a dict with ``cost (Q,)``, ``weights (Q, L, M, M)``, ``biases (Q, L, M)`` and,
    for the output cost, ``out_weight (Q, P, M)``, ``out_bias (Q, P)``.
    """
    x = np.asarray(x, dtype=np.float64)
    N, M = x.shape
    L = cw.shape[0]
    Q = targets.shape[0]
    GW, GB = np.zeros((Q, L, M, M)), np.zeros((Q, L, M))
    C = np.zeros(Q)
    if kind == "output":
        P = ow.shape[0]
        GOW, GOB = np.zeros((Q, P, M)), np.zeros((Q, P))
    img = images(cw, cb, x)
    for i in range(N):
        c = labels[i]
        xt = [img[l, i] for l in range(L + 1)]          # x~^(0) .. x~^(L) of this point
        if kind == "input":
            r = xt[L] - targets[c]
            C[c] += r @ r / (2 * N)
            g = r / N
        else:
            xL = cw[L - 1] @ xt[L] + cb[L - 1]          # x^(L) = W^(L) x~^(L) + b^(L)
            e = ow @ xL + ob - targets[c]
            C[c] += e @ e / (2 * N)
            g = (ow @ cw[L - 1]).T @ e / N
            GW[c, L - 1] += np.outer(ow.T @ e, xt[L]) / N
            GB[c, L - 1] += ow.T @ e / N
            GOW[c] += np.outer(e, xL) / N
            GOB[c] += e / N
        for l in range(L, 0, -1):
            W, b = cw[l - 1], cb[l - 1]
            z, xtl = xt[l - 1], xt[l]
            a = W @ z + b
            D = np.diag(free_mask(a))
            P_ = np.eye(M) - D
            u = np.linalg.solve(W.T, g)                 # u = W^-T g
            GB[c, l - 1] += -P_ @ u
            GW[c, l - 1] += np.outer(D @ u, z) - np.outer(u, xtl)
            g = W.T @ D @ u
    out = dict(cost=C, weights=GW, biases=GB)
    if kind == "output":
        out.update(out_weight=GOW, out_bias=GOB)
    return out


# ------------------------------------------------ section 7: gradient in layer parameters
def grad_layers(W, b, x, labels, targets, kind="input", ow=None, ob=None):
    """Per-cluster cost and gradient in layer parameters by ordinary backpropagation.

    Input cost: the cost reads out x~^(L) = (W^(L))^-1 (x^(L) - b^(L)), which in layer
    coordinates is the inverse affine chain y_L = x^(L), y_{l-1} = W_l^-1 (y_l - b_l),
    x~^(L) = y_0. Its dependence on (W_l, b_l) is backpropagated too:
    with v = W_l^-T dC/dy_{l-1}:  dC/dy_l = v,  dC/db_l += -v,  dC/dW_l += -v y_{l-1}^T
    (from d(W^-1) = -W^-1 dW W^-1).
    Then the ReLU layers as usual: delta_a = D_l delta, dC/dW_l += delta_a x^(l-1)^T,
    dC/db_l += delta_a, delta <- W_l^T delta_a, with D_l = diag(1[a_l > 0]).
    """
    x = np.asarray(x, dtype=np.float64)
    N, M = x.shape
    L = W.shape[0]
    Q = targets.shape[0]
    GW, GB = np.zeros((Q, L, M, M)), np.zeros((Q, L, M))
    C = np.zeros(Q)
    if kind == "output":
        P = ow.shape[0]
        GOW, GOB = np.zeros((Q, P, M)), np.zeros((Q, P))
    xs, pre = layer_forward(W, b, x)
    for i in range(N):
        c = labels[i]
        xL = xs[L, i]
        if kind == "input":
            # read-out, forward: y[L] = x^(L), y[l-1] = W_l^-1 (y[l] - b_l)
            y = [None] * (L + 1)
            y[L] = xL
            for l in range(L, 0, -1):
                y[l - 1] = np.linalg.solve(W[l - 1], y[l] - b[l - 1])
            r = y[0] - targets[c]
            C[c] += r @ r / (2 * N)
            gbar = r / N                                # dC/dy_0
            for l in range(1, L + 1):
                v = np.linalg.solve(W[l - 1].T, gbar)   # dC/dy_l
                GW[c, l - 1] += -np.outer(v, y[l - 1])
                GB[c, l - 1] += -v
                gbar = v
            delta = gbar                                # dC/dx^(L)
        else:
            e = ow @ xL + ob - targets[c]
            C[c] += e @ e / (2 * N)
            GOW[c] += np.outer(e, xL) / N
            GOB[c] += e / N
            delta = ow.T @ e / N
        for l in range(L, 0, -1):
            da = free_mask(pre[l - 1, i]) * delta
            GW[c, l - 1] += np.outer(da, xs[l - 1, i])
            GB[c, l - 1] += da
            delta = W[l - 1].T @ da
    out = dict(cost=C, weights=GW, biases=GB)
    if kind == "output":
        out.update(out_weight=GOW, out_bias=GOB)
    return out
