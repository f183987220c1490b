"""A flow's gradient evaluation from its state vector, in Numba (issue 12: small problems fast).

``FlowProblem.evaluate`` turns a state vector into the cost and the masked gradient
vector. Going through :class:`truncflow.Params` and :func:`truncflow.gradient`
costs about 150 us of Python per call, far more than the pass over a few hundred
points. Here the whole path (state -> network -> padded kernel arrays -> pass
over the points -> sum over chunks -> gradient in the flow's parametrization ->
masked vector) is one call for a problem of one chunk, and three (prepare, the
parallel pass, finish) for a larger one. It runs the same functions as the
public path (:mod:`truncflow.kernels.network`, the gradient kernel,
:func:`sum_chunks`), so it gives the same bits as
``gradient(problem.unpack(y), ...)``.

State layout (``FlowProblem``): weights ((L, M, M), or (L, M) scales for the
aligned parametrization), biases (L, M), then for the output cost the output
weight (P, M) and bias (P,). ``mode``: 0 cumulative, 1 layers, 2 aligned.

A state whose network cannot be evaluated (a cumulative weight that is singular
or has condition number above ``max_condition``, or parameters that overflow) or
whose cost or gradient is not finite gives a nonzero status and no gradient: the
caller evaluates it again the public way, which raises the error with its message.
"""
import numpy as np
from numba import njit

from .config import JIT_OPTIONS
from .gradient import TILE, _gradient_chunk_in, _gradient_sums, _tile_buffers
from .network import (aligned_weights, cumulative_from_layers, invert_stack, layer_gradient,
                      layers_from_cumulative, scale_gradient)

MODE_CUMULATIVE, MODE_LAYERS, MODE_ALIGNED = 0, 1, 2
STATUS_OK, STATUS_NETWORK, STATUS_NOT_FINITE = 0, 1, 2


@njit(**JIT_OPTIONS)
def slot_sums(sq, g_w, g_b, g_ow, g_ob, n_points, width, s):
    """Slot s of the gradient kernel's per-chunk sums: each entry's chunks added in chunk
    order, then divided (the cost by 2N, the rest by N); padding dropped.

    Args: the kernel's outputs sq (C, S), g_w (C, S, L, Mp, Mp), g_b (C, S, L, Mp),
    g_ow (C, S, P, Mp), g_ob (C, S, P); n_points N; width M; the slot s.
    Returns cost (float) and the cumulative gradient (L, M, M), (L, M), (P, M), (P,).
    """
    C, L, P, M = sq.shape[0], g_w.shape[2], g_ow.shape[2], width
    n = float(n_points)
    cost = sq[0, s]
    for c in range(1, C):
        cost += sq[c, s]
    cost /= 2.0 * n
    gw, gb, gow, gob = np.empty((L, M, M)), np.empty((L, M)), np.empty((P, M)), np.empty(P)
    for l in range(L):
        for i in range(M):
            for j in range(M):
                v = g_w[0, s, l, i, j]
                for c in range(1, C):
                    v += g_w[c, s, l, i, j]
                gw[l, i, j] = v / n
            v = g_b[0, s, l, i]
            for c in range(1, C):
                v += g_b[c, s, l, i]
            gb[l, i] = v / n
    for p in range(P):
        for j in range(M):
            v = g_ow[0, s, p, j]
            for c in range(1, C):
                v += g_ow[c, s, p, j]
            gow[p, j] = v / n
        v = g_ob[0, s, p]
        for c in range(1, C):
            v += g_ob[c, s, p]
        gob[p] = v / n
    return cost, gw, gb, gow, gob


@njit(**JIT_OPTIONS)
def sum_chunks(sq, g_w, g_b, g_ow, g_ob, n_points, width):
    """:func:`slot_sums` of every slot: cost (S,), gradient (S, L, M, M), (S, L, M), (S, P, M), (S, P)."""
    S, L, P, M = sq.shape[1], g_w.shape[2], g_ow.shape[2], width
    cost, gw, gb = np.empty(S), np.empty((S, L, M, M)), np.empty((S, L, M))
    gow, gob = np.empty((S, P, M)), np.empty((S, P))
    for s in range(S):
        cost[s], gw[s], gb[s], gow[s], gob[s] = slot_sums(sq, g_w, g_b, g_ow, g_ob, n_points, width, s)
    return cost, gw, gb, gow, gob


@njit(**JIT_OPTIONS)
def _finite(a):
    for v in a.ravel():
        if not np.isfinite(v):
            return False
    return True


@njit(**JIT_OPTIONS)
def network_of_state(y, mode, n_layers, width, frames):
    """The network of state y, as :class:`truncflow.Params`' constructors build it.

    Returns (w, b, cw, cb, inv, cond, valid): layer weights and biases (L, M, M), (L, M),
    cumulative ones, the inverses (L, M, M) and their condition numbers (L,); valid is
    False when Params would refuse the state (a scale <= 0 in the aligned mode, or a
    non-finite layer or cumulative parameter). The condition numbers are the caller's to check.
    """
    L, M = n_layers, width
    nw = L * M if mode == MODE_ALIGNED else L * M * M
    b = y[nw:nw + L * M].copy().reshape((L, M))
    valid = True
    if mode == MODE_LAYERS:
        w = y[:nw].copy().reshape((L, M, M))
        cw, cb = cumulative_from_layers(w, b)
        inv, cond = invert_stack(cw)
    else:
        if mode == MODE_ALIGNED:
            scales = y[:nw].copy().reshape((L, M))
            for s in scales.ravel():
                if not s > 0.0:                 # Params.aligned refuses scales <= 0
                    valid = False
            cw = aligned_weights(frames, scales)
        else:
            cw = y[:nw].copy().reshape((L, M, M))
        cb = b
        inv, cond = invert_stack(cw)
        w, b = layers_from_cumulative(cw, cb, inv)
    if not (_finite(cw) and _finite(cb) and _finite(w) and _finite(b)):
        valid = False
    return w, b, cw, cb, inv, cond, valid


@njit(**JIT_OPTIONS)
def padded_arrays(n_layers, padded_width, n_out):
    """Zeroed (cwp, cbp, invp, backp, out_w, out_b) for :func:`prepare_in`: (L, Mp, Mp), (L, Mp),
    (L, Mp, Mp), (L, Mp, Mp), (P, Mp), (P,)."""
    L, Mp, P = n_layers, padded_width, n_out
    return (np.zeros((L, Mp, Mp)), np.zeros((L, Mp)), np.zeros((L, Mp, Mp)), np.zeros((L, Mp, Mp)),
            np.zeros((P, Mp)), np.zeros(P))


@njit(**JIT_OPTIONS)
def prepare(y, mode, n_layers, width, n_out, frames, max_condition, padded_width):
    """The network of state y and the gradient kernel's parameter arrays (``compute.tile_arrays``).

    Returns (status, w, cw, cb, cwp, cbp, invp, backp, out_w, out_b): layer weights w and
    cumulative cw (L, M, M), cb (L, M); then padded to Mp: cwp, invp, backp (L, Mp, Mp),
    cbp (L, Mp), out_w (P, Mp), out_b (P,).
    """
    padded = padded_arrays(n_layers, padded_width, n_out)
    status, w, cw, cb = prepare_in(y, mode, n_layers, width, n_out, frames, max_condition, padded)
    return (status, w, cw, cb) + padded


@njit(**JIT_OPTIONS)
def prepare_in(y, mode, n_layers, width, n_out, frames, max_condition, padded):
    """:func:`prepare` into ``padded`` (of :func:`padded_arrays`; only the entries of rows and
    columns < M are written, so the padding stays zero from call to call).

    Returns (status, w, cw, cb).
    """
    L, M, P = n_layers, width, n_out
    cwp, cbp, invp, backp, out_w, out_b = padded
    Mp = cwp.shape[1]
    nw = L * M if mode == MODE_ALIGNED else L * M * M
    w, b, cw, cb, inv, cond, valid = network_of_state(y, mode, n_layers, width, frames)
    o = nw + L * M
    for p in range(P):
        for j in range(M):
            out_w[p, j] = y[o + p * M + j]
        out_b[p] = y[o + P * M + p]
    status = STATUS_OK if valid else STATUS_NETWORK
    for l in range(L):
        if not cond[l] <= max_condition:
            status = STATUS_NETWORK
        for i in range(M):
            cbp[l, i] = cb[l, i]
            for j in range(M):
                cwp[l, i, j] = cw[l, i, j]
                invp[l, i, j] = inv[l, i, j]
    for l in range(L - 1):
        for i in range(M):
            for j in range(M):
                backp[l, i, j] = w[l + 1, j, i]
    for i in range(Mp):
        for j in range(Mp):
            backp[L - 1, i, j] = invp[L - 1, j, i]
    return status, w, cw, cb


@njit(**JIT_OPTIONS)
def finish(sq, g_w, g_b, g_ow, g_ob, n_points, mode, w, cw, cb, frames, mask):
    """Cost and masked gradient vector from the kernel's per-chunk sums (slot 0).

    Returns (status, cost, g, norm): g (size of the state) = the gradient in the flow's
    parametrization times ``mask``, norm its Euclidean norm (squares summed in order);
    status STATUS_NOT_FINITE (and g empty) when the cost or a gradient is not finite.
    """
    cost, gw0, gb0, gow, gob = slot_sums(sq, g_w, g_b, g_ow, g_ob, n_points, cw.shape[1], 0)
    empty = np.empty(0)
    if not (np.isfinite(cost) and _finite(gw0) and _finite(gb0) and _finite(gow) and _finite(gob)):
        return STATUS_NOT_FINITE, cost, empty, np.nan
    if mode == MODE_LAYERS:
        lw, gb0 = layer_gradient(w, cw, cb, gw0, gb0)
        g_weights = lw.ravel()
    elif mode == MODE_ALIGNED:
        g_weights = scale_gradient(gw0, frames).ravel()
    else:
        g_weights = gw0.ravel()
    if not (_finite(g_weights) and _finite(gb0)):
        return STATUS_NOT_FINITE, cost, empty, np.nan
    g = np.empty(mask.shape[0])
    k = 0
    sq_norm = 0.0
    for part in (g_weights, gb0.ravel(), gow.ravel(), gob):
        for v in part:
            g[k] = v * mask[k]
            sq_norm += g[k] * g[k]
            k += 1
    return STATUS_OK, cost, g, np.sqrt(sq_norm)


@njit(**JIT_OPTIONS)
def serial_workspace(n_layers, padded_width, n_out, points, chunk):
    """Scratch for :func:`evaluate_serial_in`, made once for many evaluations of one problem:
    (padded parameter arrays of :func:`padded_arrays`, the per-chunk sums of the gradient
    kernel, a chunk's tile buffers)."""
    padded = padded_arrays(n_layers, padded_width, n_out)
    sums = _gradient_sums(points, padded[4], padded[0], 1, chunk)
    tile = _tile_buffers(n_layers, padded_width, n_out, min(TILE, max(points.shape[0], 1)), padded[0])
    return padded, sums, tile


@njit(**JIT_OPTIONS)
def evaluate_serial(y, mode, n_layers, width, n_out, frames, max_condition, padded_width,
                    points, labels, targets, mask, output_cost, chunk):
    """``prepare``, the gradient pass over every chunk without a parallel region, ``finish``.

    Args: y the state; mode; L, M, P (0 for the input cost); frames (L, M, M) (aligned
    mode; any array otherwise); max_condition; Mp; points (N, M), labels (N,) int64,
    targets padded as in ``compute.tile_arrays``; mask (state size,); output_cost; chunk.
    Returns (status, cost, g, norm) as :func:`finish`.
    """
    return evaluate_serial_in(y, mode, n_layers, width, n_out, frames, max_condition, points, labels, targets,
                              mask, output_cost, chunk,
                              serial_workspace(n_layers, padded_width, n_out, points, chunk))


@njit(**JIT_OPTIONS)
def evaluate_serial_in(y, mode, n_layers, width, n_out, frames, max_condition, points, labels, targets, mask,
                       output_cost, chunk, workspace):
    """:func:`evaluate_serial` in a ``workspace`` of :func:`serial_workspace` (the same bits:
    the steppers make one per compiled call, not one per evaluation)."""
    padded, sums, tile = workspace
    cwp, cbp, invp, backp, out_w, out_b = padded
    sq, g_w, g_b, g_ow, g_ob = sums
    status, w, cw, cb = prepare_in(y, mode, n_layers, width, n_out, frames, max_condition, padded)
    if status != STATUS_OK:
        return status, np.nan, np.empty(0), np.nan
    sq[:] = 0.0
    g_w[:] = 0.0
    g_b[:] = 0.0
    g_ow[:] = 0.0
    g_ob[:] = 0.0
    for c in range(sq.shape[0]):
        # np.int64(1), not 1: a literal would compile the chunk's code once more (Literal[int] vs int64)
        _gradient_chunk_in(c, points, labels, targets, cwp, cbp, invp, backp, out_w, out_b, output_cost, np.int64(1),
                           chunk, sq[c], g_w[c], g_b[c], g_ow[c], g_ob[c], tile)
    return finish(sq, g_w, g_b, g_ow, g_ob, points.shape[0], mode, w, cw, cb, frames, mask)
