"""Cost and cumulative gradient on the GPU (MODEL.md sections 4-6), and the cluster statistics.

The sweep of ``kernels.gradient`` point by point (one thread per point), the sums over
points by owner threads (see the package docstring). Per layer l (0-based), with
z = x~^(l), x~ = x~^(l+1), a = W^(l+1) z + b^(l+1) and u = A^T g:
    dC_i/dW^(l+1)[k, j] = -u_k (x~_j - z_j) on a free row (a_k > 0), -u_k x~_j on a truncated one
    dC_i/db^(l+1)[k]    = -u_k on a truncated row, 0 on a free one
    u <- W_l^T (D u)     (back[l - 1], D the free rows)
The point's arithmetic runs in the dtype of the parameter arrays (float64, or float32
for ``precision="float32"``); every sum over points in float64.

The generic kernel: run-time shapes, per-block scratch in global memory, owner threads. It
serves the networks too wide for ``kernels.cuda.sweep`` (which takes every other gradient
pass) and, with its moment sums, the cluster statistics. Chunk c's sums go to row base + c
of ``acc`` (chunks, S, K) float64, S slots (1, or Q per cluster; slot = label), K entries
laid out by :func:`layout`; ``launch.reduce_chunks`` adds the rows in a fixed tree.
"""
import functools

import numpy as np
from numba import cuda

from . import forward as forward_module
from .launch import THREADS, block_offsets, chunk_count, device_function, tile_span
from .statistics import moment_dest, moment_term


def layout(L: int, Mp: int, M: int, P: int, moments: bool, second: bool) -> dict:
    """Offsets of each sum in a row of K entries, and K: sq (1), g_w (L, Mp, Mp), g_b (L, Mp),
    g_ow (P, Mp), g_ob (P); with ``moments`` truncated (L, M), free1, con1 (L, M, M); with
    ``second`` free2, con2 (L, M, M, M)."""
    names = [("sq", 1), ("g_w", L * Mp * Mp), ("g_b", L * Mp), ("g_ow", P * Mp), ("g_ob", P)]
    if moments:
        names += [("truncated", L * M), ("free1", L * M * M), ("con1", L * M * M)]
        if second:
            names += [("free2", L * M ** 3), ("con2", L * M ** 3)]
    return block_offsets(names, "K")


@functools.lru_cache(maxsize=None)
def build(dtype_name: str, frozen: bool = False):
    """The gradient kernel for one sweep dtype (compiled on first launch). ``frozen``: the
    kink integrator's frozen-pattern pass (``kernels.crossing.frozen_gradient_kernel``): each
    point truncated by its pattern ``pats[i]`` (L, W) uint64 instead of its signs, and
    ``flags[i]`` set to 1 where they disagree; otherwise ``pats`` and ``flags`` are not read."""
    forward, load, _, _, forward_frozen = forward_module.build(dtype_name)

    @device_function
    def free_at(ag, pats, i, l, k, t, zero):
        """Whether coordinate k of layer l of point i (column t) is free: its pattern bit when
        frozen (padding coordinates k >= 64 W truncated), else a > 0."""
        if frozen:
            return k < 64 * pats.shape[2] and \
                (pats[i, l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)
        return ag[l, k, t] > zero

    @cuda.jit
    def gradient_kernel(points, labels, n, base, chunk_tiles, targets, cw, cb, inv, back, out_w, out_b, output_cost, per_cluster,
                        moments, second, M, offsets, z, act, u, r, rr, zero, acc, pats, flags):
        """Add the sums of points 0..n-1 of (points, labels) into acc: chunk c of chunk_tiles tiles
        (``launch.chunking``) into row base + c; block g takes chunks g, g + G, ...

        offsets (9,) int64: g_w, g_b, g_ow, g_ob, truncated, free1, con1, free2, con2 of
        :func:`layout` (sq at 0). Scratch: z (G, L+1, Mp, T), act (G, L, Mp, T), u (G, 2, Mp, T),
        r (G, max(Mp, P), T) in the sweep dtype; rr (G, T) float64.
        """
        g, t = cuda.blockIdx.x, cuda.threadIdx.x
        T, G = cuda.blockDim.x, cuda.gridDim.x
        L, Mp = cw.shape[0], cw.shape[1]
        P = out_w.shape[0]
        lab = cuda.shared.array(THREADS, np.int64)
        zg, ag, ug, rg = z[g], act[g], u[g], r[g]
        o_w, o_b, o_ow, o_ob = offsets[0], offsets[1], offsets[2], offsets[3]
        o_tr, o_f1, o_c1, o_f2, o_c2 = offsets[4], offsets[5], offsets[6], offsets[7], offsets[8]
        n_top = 1 + P * Mp + P
        n_grad = Mp * Mp + Mp
        n_mom = (M + 2 * M * M + (2 * M * M * M if second else 0)) if moments else 0
        for c in range(g, chunk_count(n, T, chunk_tiles), G):
            accg = acc[base + c]
            first, stop = tile_span(c, n, T, chunk_tiles)
            for tile in range(first, stop):
                start = tile * T
                nb = min(T, n - start)
                # ---- the thread's point: forward sweep, residual, top of the reverse sweep
                if t < nb:
                    i = start + t
                    q = labels[i]
                    lab[t] = q
                    load(points, i, zg, t)
                    if frozen:
                        forward_frozen(cw, cb, inv, zg, ag, t, L, zero, pats, i, M, flags)
                    else:
                        forward(cw, cb, inv, zg, ag, t, L, zero)
                    s2 = np.float64(0.0)
                    if output_cost:
                        for p in range(P):
                            v = out_b[p] - targets[q, p]
                            for j in range(Mp):
                                if free_at(ag, pats, i, L - 1, j, t, zero):
                                    v += out_w[p, j] * ag[L - 1, j, t]
                            rg[p, t] = v
                            s2 += v * v
                        for j in range(Mp):
                            h = zero
                            for p in range(P):
                                h += out_w[p, j] * rg[p, t]
                            ug[0, j, t] = h
                    else:
                        for k in range(Mp):
                            v = zg[L, k, t] - targets[q, k]
                            rg[k, t] = v
                            s2 += v * v
                        for k in range(Mp):
                            h = zero
                            for j in range(Mp):
                                h += back[L - 1, k, j] * rg[j, t]
                            ug[0, k, t] = h
                    rr[g, t] = s2
                cuda.syncthreads()
                # ---- owners: squared residuals and the output layer
                for e in range(t, n_top, T):
                    cur = lab[0] if per_cluster else 0
                    run = np.float64(0.0)
                    for tt in range(nb):
                        s = lab[tt] if per_cluster else 0
                        if s != cur:
                            accg[cur, _top_dest(e, Mp, P, o_ow, o_ob)] += run
                            run = np.float64(0.0)
                            cur = s
                        if e == 0:
                            run += rr[g, tt]
                        elif e < 1 + P * Mp:
                            p = (e - 1) // Mp
                            j = (e - 1) - p * Mp
                            a = ag[L - 1, j, tt]
                            run += rg[p, tt] * (a if free_at(ag, pats, start + tt, L - 1, j, tt, zero) else zero)
                        else:
                            run += rg[e - 1 - P * Mp, tt]
                    accg[cur, _top_dest(e, Mp, P, o_ow, o_ob)] += run
                # ---- owners per layer, top down; then each thread carries its u one layer down
                c = 0
                for l in range(L - 1, -1, -1):
                    top = output_cost and l == L - 1
                    for e in range(t, n_grad + n_mom, T):
                        cur = lab[0] if per_cluster else 0
                        run = np.float64(0.0)
                        dest = _layer_dest(e, l, L, Mp, M, n_grad, o_w, o_b, o_tr, o_f1, o_c1, o_f2, o_c2)
                        if dest < 0:
                            continue            # the lower triangle of a second moment: left zero
                        for tt in range(nb):
                            s = lab[tt] if per_cluster else 0
                            if s != cur:
                                accg[cur, dest] += run
                                run = np.float64(0.0)
                                cur = s
                            if e < n_grad:
                                if e < Mp * Mp:
                                    k = e // Mp
                                    j = e - k * Mp
                                    uk = ug[c, k, tt]
                                    xj = zg[l + 1, j, tt]
                                    term = -(uk * (xj - zg[l, j, tt])) if free_at(ag, pats, start + tt, l, k, tt, zero) \
                                        else -(uk * xj)
                                    if top:
                                        term += uk * zg[L, j, tt]
                                else:
                                    k = e - Mp * Mp
                                    uk = ug[c, k, tt]
                                    term = zero if free_at(ag, pats, start + tt, l, k, tt, zero) else -uk
                                    if top:
                                        term += uk
                                run += term
                            else:
                                run += moment_term(e - n_grad, l, M, zg, ag, tt, zero)
                        accg[cur, dest] += run
                    if l > 0 and t < nb:
                        for k in range(Mp):
                            h = zero
                            for j in range(Mp):
                                if free_at(ag, pats, start + t, l, j, t, zero):
                                    h += back[l - 1, k, j] * ug[c, j, t]
                            ug[1 - c, k, t] = h
                    c = 1 - c
                    cuda.syncthreads()

    return gradient_kernel


@device_function
def _top_dest(e, Mp, P, o_ow, o_ob):
    """Entry e of the top sums (0: sq, then g_ow (P, Mp), then g_ob (P)) -> its offset in a row."""
    if e == 0:
        return 0
    if e < 1 + P * Mp:
        return o_ow + e - 1
    return o_ob + e - 1 - P * Mp


@device_function
def _layer_dest(e, l, L, Mp, M, n_grad, o_w, o_b, o_tr, o_f1, o_c1, o_f2, o_c2):
    """Entry e of layer l's sums (g_w, g_b, then the moments) -> its offset in a row (-1: none)."""
    if e < Mp * Mp:
        return o_w + l * Mp * Mp + e
    if e < n_grad:
        return o_b + l * Mp + e - Mp * Mp
    return moment_dest(e - n_grad, l, M, o_tr, o_f1, o_c1, o_f2, o_c2)
