"""Cost and exact gradient in cumulative parameters (MODEL.md sections 4-6).

One streaming pass over the points. Each chunk runs the forward sweep and the
reverse sweep of section 6 on tiles of ``TILE`` points stored feature-major, so
the innermost loops run over points and vectorize, and accumulates into its own
slot of the per-chunk buffers; the caller adds the chunks in order. Nothing of
size N x L x M is allocated. Sums are unscaled: the caller divides by N (cost by 2N).

Per layer l (0-based) and tile, with z = x~^(l), x~ = x~^(l+1), a = W^(l+1) z + b^(l+1):
    forward   x~ = z - sum_{k: a_k <= 0} a_k v_k         (a free point stays exactly put)
    backward  u = A^T g;  rows k with a_k > 0 get u_k (z - x~)^T, the others -u_k x~^T
              and -u_k in the bias;  g <- W^T (D u), carried as u <- W_l^T (D u)
The kink convention of section 5: a coordinate with ``a_k == 0`` is truncated.

Register blocking. The widths of the parameter arrays are padded with zeros to a
multiple of ``BLOCK`` (``compute.tile_arrays``), so every matrix-vector product runs
in 4 x 4 blocks whose 16 weights stay in registers while the points stream past, and
the gradient sums in 4 x 4 blocks. Padded coordinates stay exactly zero, and the
forward products keep the order of ``forward.forward_point`` (bias first, then
j = 0, 1, ... ; adding the padding's zeros changes no value), so the gradient and
the activation patterns agree on every kink.
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS, JIT_OPTIONS_REDUCTION

#: Points per tile: the length of the vectorized innermost loops.
TILE = 256
#: Parameter widths are padded to a multiple of this (the register block).
BLOCK = 4

# Where ``_matvec`` starts each output row.
_ACCUMULATE = 0     # y += W x
_FROM_SRC = 1       # y = src + W x
_FROM_BIAS = 2      # y = bias + W x   (a zero bias: y = W x)


@njit(parallel=True, **JIT_OPTIONS_REDUCTION)
def gradient_kernel(points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk):
    """Per-chunk sums of squared residuals and of the cumulative gradient.

    Args:
        points (N, M) float32/float64 any layout, labels (N,) int64; the rest padded to
        width Mp (a multiple of BLOCK, >= M) by ``compute.tile_arrays``: targets (Q, Mp)
        input-space targets or (Q, P) output targets; cw (L, Mp, Mp), cb (L, Mp) the
        cumulative parameters; inv (L, Mp, Mp) their inverses A^(l) (columns v_k);
        back (L, Mp, Mp) the transposed layer matrices W_(l+1)^T, l < L - 1, and
        back[L - 1] = A^(L)^T (see ``_tile_gradient``); out_w (P, Mp), out_b (P,)
        the output layer (P = 0 for the input cost); output_cost: bool; n_slots: 1 for
        totals or Q for a per-cluster split (slot = label); chunk: points per chunk.

    Returns, with C = ceil(N / chunk) and S = n_slots (rows and columns >= M are zero):
        sq   (C, S)            sum of |residual|^2
        g_w  (C, S, L, Mp, Mp) sum of dC_i/dW^(l) times N
        g_b  (C, S, L, Mp)     sum of dC_i/db^(l) times N
        g_ow (C, S, P, Mp)     sum of dC_i/dW_out times N   (output cost)
        g_ob (C, S, P)         sum of dC_i/db_out times N   (output cost)
    """
    sq, g_w, g_b, g_ow, g_ob = _gradient_sums(points, out_w, cw, n_slots, chunk)
    for c in prange(sq.shape[0]):
        # np.int64: prange's index is uint64, the serial kernel's int64 (one compilation of the chunk, not two)
        _gradient_chunk(np.int64(c), points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                        sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c])
    return sq, g_w, g_b, g_ow, g_ob


@njit(**JIT_OPTIONS_REDUCTION)
def gradient_kernel_serial(points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk):
    """``gradient_kernel`` without a parallel region (the same chunks, bit-identical sums): for a
    pass of one chunk, where waking the workers would cost more than the pass (``compute``).
    A separate function, not ``njit(parallel=False)`` of the same one: Numba's cache keys a
    function's compiled code by its source, not its options (numba/numba#6845)."""
    sq, g_w, g_b, g_ow, g_ob = _gradient_sums(points, out_w, cw, n_slots, chunk)
    for c in range(sq.shape[0]):
        _gradient_chunk(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                        sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c])
    return sq, g_w, g_b, g_ow, g_ob


@njit(**JIT_OPTIONS)
def _gradient_sums(points, out_w, cw, n_slots, chunk):
    """The zeroed per-chunk sums (sq, g_w, g_b, g_ow, g_ob) of ``gradient_kernel``."""
    N = points.shape[0]
    L, M, _ = cw.shape
    P = out_w.shape[0]
    C = (N + chunk - 1) // chunk
    return (np.zeros((C, n_slots)), np.zeros((C, n_slots, L, M, M)), np.zeros((C, n_slots, L, M)),
            np.zeros((C, n_slots, P, M)), np.zeros((C, n_slots, P)))


@njit(**JIT_OPTIONS_REDUCTION)
def _gradient_chunk(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                    sq, g_w, g_b, g_ow, g_ob):
    """Chunk c's sums into its slots sq (S,), g_w (S, L, M, M), g_b (S, L, M), g_ow (S, P, M), g_ob (S, P)."""
    L, M, _ = cw.shape
    stop = min(points.shape[0], (c + 1) * chunk)
    _gradient_chunk_in(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                       sq, g_w, g_b, g_ow, g_ob, _tile_buffers(L, M, out_w.shape[0], min(TILE, stop - c * chunk), cw))


@njit(**JIT_OPTIONS_REDUCTION)
def _gradient_chunk_in(c, points, labels, targets, cw, cb, inv, back, out_w, out_b, output_cost, n_slots, chunk,
                       sq, g_w, g_b, g_ow, g_ob, buffers):
    """``_gradient_chunk`` in the scratch ``buffers`` of ``_tile_buffers`` (of at least as many
    points as the chunk's first tile; reused from call to call, its padded rows stay zero)."""
    N = points.shape[0]
    z, act, cn, u, u_next, um, r, wt, lab = buffers
    stop = min(N, (c + 1) * chunk)
    for start in range(c * chunk, stop, TILE):
        nb = min(TILE, stop - start)
        _load_tile(points, labels, start, nb, z[0], lab)
        _forward_tile(cw, cb, inv, z, act, cn, nb)
        _tile_gradient(back, targets, out_w, out_b, output_cost, n_slots, z, act, act, lab, lab, wt, False,
                       nb, u, u_next, um, r, wt, sq, g_w, g_b, g_ow, g_ob)


@njit(**JIT_OPTIONS)
def _tile_buffers(L, M, P, T, like):
    """A chunk's scratch, feature-major (rows = padded width M, columns = T points: ``TILE``,
    or fewer for a chunk of fewer points, whose buffers are then cheaper to make). The
    per-point arrays take the dtype of ``like`` (the parameters): float64, or float32 for
    ``precision="float32"``, where the whole per-point sweep runs in float32 while the
    sums over points (sq, g_w, ...) accumulate in float64 (the weight sums of a tile in
    the sweep's dtype first: ``_layer_sums_block``).

    Returns z (L+1, M, T) the images x~^(l) (zero-filled: padding rows stay zero),
    act (L, M, T) the cumulative pre-activations, then (M, T) arrays cn (-a on
    truncated coordinates, else 0), u and u_next (A^T g, g the adjoint dC_i/dx~^(l+1),
    of this layer and of the one below), um (u restricted to one slot), r (max(M, P), T)
    residuals, wt (T,) a slot mask and lab (T,) int64 labels.
    """
    f = like.dtype
    return (np.zeros((L + 1, M, T), f), np.empty((L, M, T), f), np.empty((M, T), f),
            np.empty((M, T), f), np.empty((M, T), f), np.empty((M, T), f),
            np.empty((max(M, P), T), f), np.empty(T), np.empty(T, dtype=np.int64))


@njit(**JIT_OPTIONS)
def _load_tile(points, labels, start, nb, z0, lab):
    """Copy points start..start+nb feature-major into z0[:M] (M = points' width) and labels into lab."""
    M = points.shape[1]
    for t in range(nb):
        lab[t] = labels[start + t]
        for j in range(M):
            z0[j, t] = points[start + t, j]


@njit(**JIT_OPTIONS_REDUCTION)
def _tile_gradient(back, targets, out_w, out_b, output_cost, n_slots, z, act, sg, lab, slot, pw, weighted,
                   nb, u, u_next, um, r, wt, sq, g_w, g_b, g_ow, g_ob):
    """The tile's residuals and reverse sweep (section 6), accumulated per slot.

    Which rows are free is read from ``sg`` (> 0: free): ``sg = act`` for the true
    patterns, or a tile of +-1 for patterns given as input (``kernels.crossing``).
    Targets are picked by ``lab``, sums go to slot ``slot[t]`` (``slot = lab`` for a
    per-cluster split). With ``weighted`` each point's residual, hence its whole
    contribution, is multiplied by ``pw[t]`` after the squared residuals are summed.

    back (L, M, M) from ``compute.tile_arrays``; z, act from ``_forward_tile``; u,
    u_next, um (M, T), r (max(M, P), T), wt (T,) scratch; sq (S,), g_w (S, L, M, M),
    g_b (S, L, M), g_ow (S, P, M), g_ob (S, P): this chunk's slots, S = n_slots (1 for
    totals, Q per cluster).

    The sweep carries u^(l) = A^(l)^T g^(l), g^(l) the adjoint of the layer's output
    image: at the top u = A^(L)^T r (input cost) or u = W_out^T e (output cost, where
    A^(L)^T W^(L)^T cancels), and below u^(l-1) = A^(l-1)^T W^(l)^T (D u^(l)) = W_l^T (D u^(l))
    with the layer matrix W_l = W^(l) A^(l-1): one product per layer.
    """
    L = back.shape[0]
    M = u.shape[0]
    P = out_w.shape[0]
    if output_cost:
        _output_top(out_w, out_b, targets, lab, act[L - 1], sg[L - 1], r, u, nb)
        n_res = P
    else:
        for k in range(M):
            for t in range(nb):
                r[k, t] = z[L, k, t] - targets[lab[t], k]
        n_res = M
    s = _first_slot(slot, nb, n_slots)
    while s >= 0:
        _slot_mask(slot, nb, s, n_slots, wt)
        sq[s] += _masked_sum_sq(r, n_res, wt, nb)
        s = _next_slot(slot, nb, s, n_slots)
    if weighted:
        for k in range(n_res):
            for t in range(nb):
                r[k, t] *= pw[t]
        if output_cost:
            for k in range(M):
                for t in range(nb):
                    u[k, t] *= pw[t]
    if not output_cost:
        _matvec(back[L - 1], r, u, u, wt[:0], _FROM_BIAS, nb)
    else:
        s = _first_slot(slot, nb, n_slots)
        while s >= 0:
            _slot_mask(slot, nb, s, n_slots, wt)
            for k in range(M):
                for t in range(nb):
                    um[k, t] = act[L - 1, k, t] if sg[L - 1, k, t] > 0.0 else 0.0
            _masked_outer(r, um, wt, nb, g_ow[s], g_ob[s], 1.0)
            _masked_outer(u, z[L], wt, nb, g_w[s, L - 1], g_b[s, L - 1], 1.0)
            s = _next_slot(slot, nb, s, n_slots)
    for l in range(L - 1, -1, -1):
        if n_slots == 1:
            _layer_sums(u, sg[l], z[l], z[l + 1], nb, g_w[0, l], g_b[0, l])
        else:
            s = _first_slot(slot, nb, n_slots)
            while s >= 0:
                _slot_mask(slot, nb, s, n_slots, wt)
                for k in range(M):
                    for t in range(nb):
                        um[k, t] = wt[t] * u[k, t]
                _layer_sums(um, sg[l], z[l], z[l + 1], nb, g_w[s, l], g_b[s, l])
                s = _next_slot(slot, nb, s, n_slots)
        if l > 0:
            _back_product(back[l - 1], u, sg[l], u_next, nb)
            u, u_next = u_next, u


@njit(**JIT_OPTIONS)
def _forward_tile(cw, cb, inv, z, act, cn, nb):
    """act[l] = W^(l+1) z[l] + b^(l+1) and z[l+1] = z[l] - sum_{a_k <= 0} a_k v_k.

    Compiled without fast-math and summing in the order of ``forward.forward_point``,
    so the gradient and the activation patterns agree bit for bit on every kink. The
    truncation is z[l] + A cn with cn = -a on truncated coordinates and 0 on free ones:
    the same roundings as subtracting a_k v_k term by term (a free coordinate adds a zero).
    """
    L = cw.shape[0]
    M = cw.shape[1]
    for l in range(L):
        _matvec(cw[l], z[l], act[l], z[l], cb[l], _FROM_BIAS, nb)
        for k in range(M):
            for t in range(nb):
                a = act[l, k, t]
                cn[k, t] = -a if a <= 0.0 else 0.0
        _matvec(inv[l], cn, z[l + 1], z[l], cb[l], _FROM_SRC, nb)


@njit(**JIT_OPTIONS)
def _matvec(w, x, y, src, bias, start, nb):
    """y[:, :nb] = base + w @ x[:, :nb], each row summed in column order j = 0, 1, ...

    w (M, M) with M a multiple of BLOCK; x, y, src (M, T). ``start`` picks the base:
    _FROM_SRC src[k, t], _FROM_BIAS bias[k] (an empty bias: none, y = w x). Without
    fast-math: every product is rounded and added in order, like ``forward_point``.
    """
    M = w.shape[0]
    for k0 in range(0, M, BLOCK):
        _matvec_block(w, k0, 0, x, y, src, bias, start, nb)
        for j0 in range(BLOCK, M, BLOCK):
            _matvec_block(w, k0, j0, x, y, src, bias, _ACCUMULATE, nb)


@njit(**JIT_OPTIONS)
def _matvec_block(w, k0, j0, x, y, src, bias, start, nb):
    """Rows k0..k0+3 of y: base + w[k0:k0+4, j0:j0+4] @ x[j0:j0+4]; the 16 weights in registers."""
    w00 = w[k0, j0]
    w01 = w[k0, j0 + 1]
    w02 = w[k0, j0 + 2]
    w03 = w[k0, j0 + 3]
    w10 = w[k0 + 1, j0]
    w11 = w[k0 + 1, j0 + 1]
    w12 = w[k0 + 1, j0 + 2]
    w13 = w[k0 + 1, j0 + 3]
    w20 = w[k0 + 2, j0]
    w21 = w[k0 + 2, j0 + 1]
    w22 = w[k0 + 2, j0 + 2]
    w23 = w[k0 + 2, j0 + 3]
    w30 = w[k0 + 3, j0]
    w31 = w[k0 + 3, j0 + 1]
    w32 = w[k0 + 3, j0 + 2]
    w33 = w[k0 + 3, j0 + 3]
    # One loop per start so that the loops stay branch-free; the sums run left to right.
    if start == _ACCUMULATE:
        for t in range(nb):
            x0, x1, x2, x3 = x[j0, t], x[j0 + 1, t], x[j0 + 2, t], x[j0 + 3, t]
            y[k0, t] = y[k0, t] + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] = y[k0 + 1, t] + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] = y[k0 + 2, t] + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] = y[k0 + 3, t] + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
    elif start == _FROM_SRC:
        for t in range(nb):
            x0, x1, x2, x3 = x[j0, t], x[j0 + 1, t], x[j0 + 2, t], x[j0 + 3, t]
            y[k0, t] = src[k0, t] + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] = src[k0 + 1, t] + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] = src[k0 + 2, t] + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] = src[k0 + 3, t] + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
    elif bias.shape[0] > 0:
        b0, b1, b2, b3 = bias[k0], bias[k0 + 1], bias[k0 + 2], bias[k0 + 3]
        for t in range(nb):
            x0, x1, x2, x3 = x[j0, t], x[j0 + 1, t], x[j0 + 2, t], x[j0 + 3, t]
            y[k0, t] = b0 + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] = b1 + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] = b2 + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] = b3 + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
    else:
        for t in range(nb):
            x0, x1, x2, x3 = x[j0, t], x[j0 + 1, t], x[j0 + 2, t], x[j0 + 3, t]
            y[k0, t] = w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] = w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] = w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] = w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3


@njit(**JIT_OPTIONS_REDUCTION)
def _back_product(w, u, a, y, nb):
    """y[:, :nb] = w @ uf, uf = u on free coordinates (a > 0) and 0 on truncated ones.

    w (M, M) with M a multiple of BLOCK; u, a, y (M, T), y distinct from u. The reverse
    sweep's product: the free part is taken as the operands are loaded (no pass of its own),
    and the products fuse to multiply-adds.
    """
    M = w.shape[0]
    for k0 in range(0, M, BLOCK):
        for j0 in range(0, M, BLOCK):
            _back_block(w, k0, j0, u, a, y, nb)


@njit(**JIT_OPTIONS_REDUCTION)
def _back_block(w, k0, j0, u, a, y, nb):
    """Rows k0..k0+3 of ``_back_product``, adding columns j0..j0+3 (the first block stores)."""
    w00, w01, w02, w03 = w[k0, j0], w[k0, j0 + 1], w[k0, j0 + 2], w[k0, j0 + 3]
    w10, w11, w12, w13 = w[k0 + 1, j0], w[k0 + 1, j0 + 1], w[k0 + 1, j0 + 2], w[k0 + 1, j0 + 3]
    w20, w21, w22, w23 = w[k0 + 2, j0], w[k0 + 2, j0 + 1], w[k0 + 2, j0 + 2], w[k0 + 2, j0 + 3]
    w30, w31, w32, w33 = w[k0 + 3, j0], w[k0 + 3, j0 + 1], w[k0 + 3, j0 + 2], w[k0 + 3, j0 + 3]
    if j0 == 0:
        for t in range(nb):
            x0 = u[0, t] if a[0, t] > 0.0 else 0.0
            x1 = u[1, t] if a[1, t] > 0.0 else 0.0
            x2 = u[2, t] if a[2, t] > 0.0 else 0.0
            x3 = u[3, t] if a[3, t] > 0.0 else 0.0
            y[k0, t] = w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] = w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] = w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] = w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
    else:
        for t in range(nb):
            x0 = u[j0, t] if a[j0, t] > 0.0 else 0.0
            x1 = u[j0 + 1, t] if a[j0 + 1, t] > 0.0 else 0.0
            x2 = u[j0 + 2, t] if a[j0 + 2, t] > 0.0 else 0.0
            x3 = u[j0 + 3, t] if a[j0 + 3, t] > 0.0 else 0.0
            y[k0, t] += w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            y[k0 + 1, t] += w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            y[k0 + 2, t] += w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            y[k0 + 3, t] += w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3


@njit(**JIT_OPTIONS_REDUCTION)
def _output_top(out_w, out_b, targets, lab, act_last, sg_last, r, h, nb):
    """r = W_out x^(L) + b_out - y and h = W_out^T r, x^(L) = a_L on the free rows (sg_last > 0)."""
    P, M = out_w.shape
    for p in range(P):
        for t in range(nb):
            r[p, t] = out_b[p] - targets[lab[t], p]
        for j in range(M):
            w = out_w[p, j]
            for t in range(nb):
                if sg_last[j, t] > 0.0:
                    r[p, t] += w * act_last[j, t]
    for j in range(M):
        for t in range(nb):
            h[j, t] = 0.0
        for p in range(P):
            w = out_w[p, j]
            for t in range(nb):
                h[j, t] += w * r[p, t]


@njit(**JIT_OPTIONS_REDUCTION)
def _layer_sums(u, a, z, xt, nb, gw, gb):
    """gw += sum_t (uf_t (z_t - xt_t)^T - ut_t xt_t^T) and gb -= sum_t ut_t.

    u, a, z, xt (M, T) with M a multiple of BLOCK: u = A^T g, a the layer's cone
    coordinates (row k of a point is free where a_k > 0: uf, ut are u on the free and
    on the truncated rows), z the layer's input images, xt its output images;
    gw (M, M), gb (M,).
    """
    M = u.shape[0]
    for k in range(M):
        acc = 0.0
        for t in range(nb):
            acc += 0.0 if a[k, t] > 0.0 else u[k, t]
        gb[k] -= acc
    for k0 in range(0, M, BLOCK):
        for j0 in range(0, M, BLOCK):
            _layer_sums_block(u, a, z, xt, k0, j0, nb, gw)


@njit(**JIT_OPTIONS_REDUCTION)
def _layer_sums_block(u, a, z, xt, k0, j0, nb, gw):
    """gw[k0:k0+4, j0:j0+4] of ``_layer_sums``: 16 sums in registers, each operand loaded once.

    Row k of a point is either free or truncated, so each entry takes one product:
    u_k (z_j - xt_j) on a free row, -u_k xt_j on a truncated one (a select, then a
    multiply-add: the exact products of the two-term form, whose other term is zero).
    The tile's sums run in the sweep's dtype (float32 for ``precision="float32"``: at
    most ``TILE`` terms, in SIMD lanes), and are added to gw (float64) tile by tile.
    """
    g00 = g01 = g02 = g03 = g10 = g11 = g12 = g13 = u.dtype.type(0)
    g20 = g21 = g22 = g23 = g30 = g31 = g32 = g33 = u.dtype.type(0)
    for t in range(nb):
        f0, f1, f2, f3 = a[k0, t] > 0.0, a[k0 + 1, t] > 0.0, a[k0 + 2, t] > 0.0, a[k0 + 3, t] > 0.0
        u0, u1, u2, u3 = u[k0, t], u[k0 + 1, t], u[k0 + 2, t], u[k0 + 3, t]
        x0, x1, x2, x3 = xt[j0, t], xt[j0 + 1, t], xt[j0 + 2, t], xt[j0 + 3, t]
        e0, e1, e2, e3 = x0 - z[j0, t], x1 - z[j0 + 1, t], x2 - z[j0 + 2, t], x3 - z[j0 + 3, t]
        g00 -= u0 * (e0 if f0 else x0)
        g01 -= u0 * (e1 if f0 else x1)
        g02 -= u0 * (e2 if f0 else x2)
        g03 -= u0 * (e3 if f0 else x3)
        g10 -= u1 * (e0 if f1 else x0)
        g11 -= u1 * (e1 if f1 else x1)
        g12 -= u1 * (e2 if f1 else x2)
        g13 -= u1 * (e3 if f1 else x3)
        g20 -= u2 * (e0 if f2 else x0)
        g21 -= u2 * (e1 if f2 else x1)
        g22 -= u2 * (e2 if f2 else x2)
        g23 -= u2 * (e3 if f2 else x3)
        g30 -= u3 * (e0 if f3 else x0)
        g31 -= u3 * (e1 if f3 else x1)
        g32 -= u3 * (e2 if f3 else x2)
        g33 -= u3 * (e3 if f3 else x3)
    gw[k0, j0] += g00
    gw[k0, j0 + 1] += g01
    gw[k0, j0 + 2] += g02
    gw[k0, j0 + 3] += g03
    gw[k0 + 1, j0] += g10
    gw[k0 + 1, j0 + 1] += g11
    gw[k0 + 1, j0 + 2] += g12
    gw[k0 + 1, j0 + 3] += g13
    gw[k0 + 2, j0] += g20
    gw[k0 + 2, j0 + 1] += g21
    gw[k0 + 2, j0 + 2] += g22
    gw[k0 + 2, j0 + 3] += g23
    gw[k0 + 3, j0] += g30
    gw[k0 + 3, j0 + 1] += g31
    gw[k0 + 3, j0 + 2] += g32
    gw[k0 + 3, j0 + 3] += g33


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
