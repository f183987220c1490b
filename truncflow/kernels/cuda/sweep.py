"""The gradient pass on the GPU, compiled for one shape (issue 26): cost and cumulative gradient.

``build(Shape(...))`` makes a kernel in which the width M, the depth L, the outputs P, the
cost kind, the number of sum slots S (1, or Q per cluster), the tile T and the frozen flag
are compile-time constants: every loop over coordinates has a constant trip count and is
unrolled, each point's current image, pre-activations and reverse-sweep vector ``u`` live in
registers, the parameters in shared memory (copied once per block from one packed buffer),
and the index of every coordinate is a constant folded into its load (the loops over a tile's
points count with unsigned integers: no negative-index wrapping). Per layer l (0-based), with z = x~^(l),
x~ = x~^(l+1), a = W^(l+1) z + b^(l+1) and u = A^T g (``kernels.gradient``):

    dC_i/dW^(l+1)[k, j] = -u_k (x~_j - z_j) on a free row (a_k > 0), -u_k x~_j on a truncated one
    dC_i/db^(l+1)[k]    = -u_k on a truncated row, 0 on a free one
    u <- W_l^T (D u)     (back[l - 1], D the free rows)

plus, for the output cost, u_k x~^(L)_j and u_k on the top layer. The forward products and
sums are rounded one by one in the CPU's order (``launch.rounded_ops``): images and patterns
are the CPU's bits.

Sums over points. A block of T threads takes a tile of T points, one a thread; the thread
stages its point's images (T columns of a shared array) and, per layer top down, its ``u``
split into the free and the truncated rows. Then the block's threads share the layer's
K_l = M^2 + M entries (entry e belongs to thread e % T), and each adds the tile's T terms of
its entries in point order: a small GEMM over the tile, read from shared memory. A thread's
running sums stay in shared memory (its own column) across the tiles of a *chunk* of
consecutive points (``launch.chunking``) and are written once, to the chunk's row of ``acc``; per cluster
(S > 1) a running sum goes to the chunk's row when the label changes. The rows are added by
``launch.reduce_chunks`` in a fixed tree order. The partition into chunks depends on N and
the shape only, so the bits do not depend on the GPU (its number of SMs), on the number of
blocks launched, or on the batches of a streamed dataset (batches start on chunk bounds).

Packed parameters (``pack``), in the sweep dtype, unpadded width M:
    cw (L, M, M) | cb (L, M) | inv (L, M, M) | back (L, M, M) | out_w (P, M) | out_b (P) | targets (Q, M or P)

A row of ``acc`` (S slots of K entries): sq | g_ow (P, M) | g_ob (P) | per layer l: g_w (M, M), g_b (M).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import cuda

from .launch import block_offsets, chunk_count, device_function, rounded_ops, simulated, tile_span

#: Bytes of static shared memory a block may use (the CUDA limit without opt-in), and what
#: :func:`shared_bytes` adds for the arrays' alignment (ptxas measured within 4 bytes of it).
SHARED_BYTES = 48 * 1024
ALIGNMENT_SLACK = 256


class Shape(NamedTuple):
    """What a specialised kernel is compiled for."""
    dtype: str          # "float64" or "float32": the per-point arithmetic
    M: int              # width of the points
    L: int              # layers
    P: int              # outputs (0 for the input cost)
    output_cost: bool
    S: int              # sum slots: 1, or Q (per cluster)
    frozen: bool        # the kink integrator's frozen-pattern pass
    T: int              # threads per block = points per tile


def layout(M: int, L: int, P: int) -> dict:
    """Offsets of the sums in a row of K entries, and K: sq, g_ow (P, M), g_ob (P) (``top``
    entries in all), then per layer l: g_w (M, M) at ``top + l * per_layer``, g_b (M) after it."""
    top = 1 + P * M + P
    per_layer = M * M + M
    return dict(sq=0, g_ow=1, g_ob=1 + P * M, top=top, per_layer=per_layer, K=top + L * per_layer)


def param_offsets(M: int, L: int, P: int) -> dict:
    """Offsets of the packed parameters (see the module docstring) and their total without targets."""
    sizes = [("cw", L * M * M), ("cb", L * M), ("inv", L * M * M), ("back", L * M * M), ("out_w", P * M),
             ("out_b", P)]
    return block_offsets(sizes, "targets")


def shared_bytes(dtype: str, M: int, L: int, P: int, output_cost: bool, S: int, T: int) -> int:
    """Static shared memory of a block of the kernel (bytes): every ``cuda.shared.array`` of
    :func:`build`, sized as there."""
    f = np.dtype(dtype).itemsize
    PR, MR, W = max(P, 1), (M if output_cost else 1), (M + 63) // 64
    n_run = _runs(layout(M, L, P), L, T) if S == 1 else 1
    params = f * (3 * L * M * M + L * M + PR * M + PR)
    per_thread = f * ((L + 1) * M + 2 * M + PR + MR + 1) + 8 + 4 + 8 * n_run + 8 + 8 * L * W
    return params + T * per_thread + ALIGNMENT_SLACK


def _runs(lay: dict, L: int, T: int) -> int:
    """Running sums per thread: its top entries and its entries of each layer."""
    return math.ceil(lay["top"] / T) + L * math.ceil(lay["per_layer"] / T)


def plan(dtype: str, M: int, L: int, P: int, output_cost: bool, S: int, frozen: bool) -> Shape | None:
    """The Shape to compile for (the largest tile of 128, 64 or 32 threads whose block fits
    the shared memory; the simulator: 32), or None where even 32 points do not fit (a wide
    network: the generic kernel of ``kernels.cuda.gradient`` takes it)."""
    tiles = (32,) if simulated() else (128, 64, 32)
    for T in tiles:
        if shared_bytes(dtype, M, L, P, output_cost, S, T) <= SHARED_BYTES:
            return Shape(dtype, M, L, P, bool(output_cost), S, bool(frozen), T)
    return None


def pack(cw, cb, inv, back, out_w, out_b, targets, M: int, out=None) -> np.ndarray:
    """The packed parameter buffer from the padded tile arrays (``compute.tile_arrays``),
    cut to width M, in the dtype of ``cw`` (into ``out`` when given)."""
    P = out_w.shape[0]
    parts = [cw[:, :M, :M], cb[:, :M], inv[:, :M, :M], back[:, :M, :M], out_w[:, :M], out_b,
             targets[:, :P] if P else targets[:, :M]]
    size = sum(p.size for p in parts)
    if out is None:
        out = np.empty(size, dtype=cw.dtype)
    k = 0
    for p in parts:
        out[k:k + p.size] = p.reshape(-1)
        k += p.size
    return out


@functools.lru_cache(maxsize=None)
def build(shape: Shape):
    """The kernel ``sweep(points, labels, n, base, chunk_tiles, par, acc, pats, flags)`` for one shape:

    points (n, M) float32/float64 and labels (n,) int64 of this launch (a batch starts on a
    chunk bound); base: the chunk index of its first point; chunk_tiles: tiles per chunk;
    par: the packed parameters (``pack``); acc (chunks, S, K) float64, zero where S > 1; the
    chunks of this launch go to rows base, base + 1, ...; pats (N, L, W) uint64 and flags (N,)
    uint8 for a frozen pass (each point truncated by its pattern, flagged where a sign of a
    disagrees), not read otherwise.
    """
    dt = np.float32 if shape.dtype == "float32" else np.float64
    mul, add = rounded_ops(shape.dtype)
    M, L, P, S, T = shape.M, shape.L, shape.P, shape.S, shape.T
    OUT, FROZEN, PER_CLUSTER = shape.output_cost, shape.frozen, shape.S > 1
    W = (M + 63) // 64
    off = param_offsets(M, L, P)
    CW, CB, INV, BACK, OW, OB, TG = (off[k] for k in ("cw", "cb", "inv", "back", "out_w", "out_b", "targets"))
    TW = P if OUT else M                        # width of a target row
    lay = layout(M, L, P)
    TOP, KL, K = lay["top"], lay["per_layer"], lay["K"]
    NT, NL = math.ceil(TOP / T), math.ceil(KL / T)
    NRUN = NT + L * NL if not PER_CLUSTER else 1
    PR, MR = max(P, 1), (M if OUT else 1)       # shared rows of the residuals and of the masked a
    zero, one = dt(0), dt(1)
    L1, LW = L + 1, L * W                      # array shapes must be literal constants

    @device_function
    def is_free(mask, l, k, t):
        return (mask[l * W + k // 64, t] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)

    @device_function
    def valid_bits(w):
        """The bits of pattern word w that are coordinates of the points (< M)."""
        n_bits = min(64, M - 64 * w)
        return np.uint64(0xFFFFFFFFFFFFFFFF) if n_bits == 64 else (np.uint64(1) << np.uint64(n_bits)) - np.uint64(1)

    @device_function
    def deposit(acc, row, slot, e, r, t, run, value):
        """Add a running sum: per cluster into the chunk's row, else into the thread's column."""
        if PER_CLUSTER:
            acc[row, slot, e] += value
        else:
            run[r, t] += value

    @device_function
    def tile_dot(acc, row, e, r, t, run, lab, nb, xr, yr):
        """Entry e's sum over the tile's points of xr[tt] yr[tt], in point order, into its running sum
        (column t of run[r], or per cluster the chunk's row of acc)."""
        cur = lab[0] if PER_CLUSTER else 0
        total = np.float64(0.0)
        tt, n = np.uint64(0), np.uint64(nb)         # unsigned: no negative-index wrap in the loop
        while tt < n:
            if PER_CLUSTER:
                s = lab[tt]
                if s != cur:
                    deposit(acc, row, cur, e, r, t, run, total)
                    total = np.float64(0.0)
                    cur = s
            total += xr[tt] * yr[tt]
            tt += np.uint64(1)
        deposit(acc, row, cur, e, r, t, run, total)

    @device_function
    def tile_layer(acc, row, e, r, t, run, lab, nb, ufk, utk, xr, zr, topf):
        """Entry e's sum over the tile of -u_k (x~_j - z_j) on a free row plus -u_k x~_j on a truncated
        one, plus u_k x~_j on the output cost's top layer (topf = 1), as ``tile_dot``: ufk, utk the
        points' u_k on free and truncated rows (one of them 0), xr, zr their x~_j and z_j. A bias
        entry passes ones for both: -u_k on a truncated row, 0 on a free one, plus u_k on top."""
        cur = lab[0] if PER_CLUSTER else 0
        total = np.float64(0.0)
        tt, n = np.uint64(0), np.uint64(nb)
        while tt < n:
            if PER_CLUSTER:
                s = lab[tt]
                if s != cur:
                    deposit(acc, row, cur, e, r, t, run, total)
                    total = np.float64(0.0)
                    cur = s
            x, f, c = xr[tt], ufk[tt], utk[tt]
            total += -(f * (x - zr[tt])) - c * x + topf * ((f + c) * x)
            tt += np.uint64(1)
        deposit(acc, row, cur, e, r, t, run, total)

    @cuda.jit
    def sweep(points, labels, n, base, chunk_tiles, par, acc, pats, flags):
        t = cuda.threadIdx.x
        # the parameters, one shared array each: a layer's offset is hoisted out of the unrolled loops
        scw = cuda.shared.array((L, M, M), dt)
        scb = cuda.shared.array((L, M), dt)
        sinv = cuda.shared.array((L, M, M), dt)
        sback = cuda.shared.array((L, M, M), dt)
        sow = cuda.shared.array((PR, M), dt)
        sob = cuda.shared.array(PR, dt)
        img = cuda.shared.array((L1, M, T), dt)
        uf = cuda.shared.array((M, T), dt)
        ut = cuda.shared.array((M, T), dt)
        res = cuda.shared.array((PR, T), dt)
        af = cuda.shared.array((MR, T), dt)
        rr = cuda.shared.array(T, np.float64)
        lab = cuda.shared.array(T, np.int32)
        run = cuda.shared.array((NRUN, T), np.float64)
        ones = cuda.shared.array(T, dt)
        ones64 = cuda.shared.array(T, np.float64)
        ones[t] = one
        ones64[t] = 1.0
        zc = cuda.local.array(M, dt)
        an = cuda.local.array(M, dt)
        zn = cuda.local.array(M, dt)
        u = cuda.local.array(M, dt)
        r = cuda.local.array(PR, dt)
        mask = cuda.shared.array((LW, T), np.uint64)     # the point's pattern words (its column)
        for e in range(t, L * M * M, T):
            scw[e // (M * M), (e // M) % M, e % M] = par[CW + e]
            sinv[e // (M * M), (e // M) % M, e % M] = par[INV + e]
            sback[e // (M * M), (e // M) % M, e % M] = par[BACK + e]
        for e in range(t, L * M, T):
            scb[e // M, e % M] = par[CB + e]
        for e in range(t, P * M, T):
            sow[e // M, e % M] = par[OW + e]
        for e in range(t, P, T):
            sob[e] = par[OB + e]
        cuda.syncthreads()
        for c in range(cuda.blockIdx.x, chunk_count(n, T, chunk_tiles), cuda.gridDim.x):
            row = base + c
            if not PER_CLUSTER:
                for k in range(NRUN):
                    run[k, t] = 0.0
            first, stop = tile_span(c, n, T, chunk_tiles)
            for tile in range(first, stop):
                start = tile * T
                nb = min(T, n - start)
                # ---- the thread's point: forward sweep in registers, residual, top of the reverse sweep
                if t < nb:
                    i = start + t
                    q = labels[i]
                    lab[t] = q
                    for j in range(M):
                        v = dt(points[i, j])
                        zc[j] = v
                        img[0, j, t] = v
                    for l in range(L):
                        for k in range(M):
                            s = scb[l, k]
                            for j in range(M):
                                s = add(s, mul(scw[l, k, j], zc[j]))
                            an[k] = s
                        for w in range(W):
                            sign = np.uint64(0)
                            for b in range(min(64, M - 64 * w)):
                                if an[64 * w + b] > zero:
                                    sign |= np.uint64(1) << np.uint64(b)
                            if FROZEN:
                                word = pats[i, l, w]
                                if (sign ^ word) & valid_bits(w):
                                    flags[i] = 1
                                mask[l * W + w, t] = word
                            else:
                                mask[l * W + w, t] = sign
                        for k in range(M):
                            s = zc[k]
                            for j in range(M):
                                cn = zero if is_free(mask, l, j, t) else -an[j]
                                s = add(s, mul(sinv[l, k, j], cn))
                            zn[k] = s
                        for k in range(M):
                            zc[k] = zn[k]
                            img[l + 1, k, t] = zn[k]
                    s2 = np.float64(0.0)
                    if OUT:
                        for p in range(P):
                            v = sob[p] - par[TG + q * TW + p]
                            for j in range(M):
                                if is_free(mask, L - 1, j, t):
                                    v += sow[p, j] * an[j]
                            r[p] = v
                            res[p, t] = v
                            s2 += v * v
                        for j in range(M):
                            af[j, t] = an[j] if is_free(mask, L - 1, j, t) else zero
                            h = zero
                            for p in range(P):
                                h += sow[p, j] * r[p]
                            u[j] = h
                    else:
                        for k in range(M):
                            v = zc[k] - par[TG + q * TW + k]
                            zn[k] = v
                            s2 += v * v
                        for k in range(M):
                            h = zero
                            for j in range(M):
                                h += sback[L - 1, k, j] * zn[j]
                            u[k] = h
                    rr[t] = s2
                cuda.syncthreads()
                # ---- the tile's top sums: squared residuals and the output layer
                for g in range(NT):
                    e = t + g * T
                    if e == 0:
                        tile_dot(acc, row, 0, g, t, run, lab, nb, rr, ones64)
                    elif e < TOP:
                        p = (e - 1) // M if e < 1 + P * M else e - 1 - P * M
                        tile_dot(acc, row, e, g, t, run, lab, nb, res[p],
                                 af[(e - 1) - p * M] if e < 1 + P * M else ones)
                # ---- per layer, top down: stage u split by the pattern, the block's GEMM, u one layer down
                for l in range(L - 1, -1, -1):
                    topf = one if OUT and l == L - 1 else zero
                    if t < nb:
                        for k in range(M):
                            if is_free(mask, l, k, t):
                                uf[k, t] = u[k]
                                ut[k, t] = zero
                            else:
                                uf[k, t] = zero
                                ut[k, t] = u[k]
                    cuda.syncthreads()
                    for g in range(NL):
                        e = t + g * T
                        if e < KL:
                            weight = e < M * M
                            k = e // M if weight else e - M * M
                            j = e - k * M if weight else 0
                            # the rows this entry reads: a bias reads the ones for x~ and z (see tile_layer)
                            tile_layer(acc, row, TOP + l * KL + e, NT + l * NL + g, t, run, lab, nb, uf[k], ut[k],
                                       img[l + 1, j] if weight else ones, img[l, j] if weight else ones, topf)
                    if l > 0 and t < nb:
                        for k in range(M):
                            h = zero
                            for j in range(M):
                                if is_free(mask, l, j, t):
                                    h += sback[l - 1, k, j] * u[j]
                            zn[k] = h
                        for k in range(M):
                            u[k] = zn[k]
                    cuda.syncthreads()
            if not PER_CLUSTER:
                for g in range(NT):
                    e = t + g * T
                    if e < TOP:
                        acc[row, 0, e] = run[g, t]
                for l in range(L):
                    for g in range(NL):
                        e = t + g * T
                        if e < KL:
                            acc[row, 0, TOP + l * KL + e] = run[NT + l * NL + g, t]

    return sweep
