"""Observables of a record on the GPU (``kernels.observe``), and the per-cluster sums of the points.

The observation kernel runs the float64 forward sweep of :mod:`.forward` (the CPU's
kinks, bit for bit), writes each point's activation-pattern hash (64-bit FNV-1a over
the layers' pattern words, as ``kernels.observe``), and owner threads add, per cluster
(slot = label), the entries of a row laid out as
    sq (1) | truncated (L, M) | any_trunc (L) | all_trunc (L) | s1 (L, M) | s2 (L, M)
(counts as exact float64 sums) into the chunk's row of ``acc`` (chunks, Q, K).
"""
import functools

import numpy as np
from numba import cuda

from . import forward as forward_module
from .launch import THREADS, chunk_count, device_function, tile_span

_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


def row_size(L: int, M: int) -> int:
    """K, the entries of one cluster's row of the observation sums."""
    return 1 + L * (3 * M + 2)


@functools.lru_cache(maxsize=None)
def build():
    """The observation kernel (float64 sweep)."""
    forward, load = forward_module.build("float64")[:2]

    @cuda.jit
    def observe_kernel(points, labels, n, base, chunk_tiles, targets, shift, cw, cb, inv, out_w, out_b, output_cost,
                       z, act, rr, zero, hashes, acc):
        """Sums of points 0..n-1, chunk c (chunk_tiles tiles) into row base + c of acc (chunks, Q, K);
        hashes[i] for each point.

        cw, cb, inv padded to Mp (``compute.tile_arrays``); targets (Q, M) or (Q, P)
        unpadded; shift (Q, M); scratch z (G, L+1, Mp, T), act (G, L, Mp, T), rr (G, T).
        """
        g, t = cuda.blockIdx.x, cuda.threadIdx.x
        T, G = cuda.blockDim.x, cuda.gridDim.x
        M = points.shape[1]
        L = cw.shape[0]
        P = out_w.shape[0]
        lab = cuda.shared.array(THREADS, np.int64)
        zg, ag = z[g], act[g]
        n_entries = 1 + L * (3 * M + 2)
        for c in range(g, chunk_count(n, T, chunk_tiles), G):
            accg = acc[base + c]
            first, stop = tile_span(c, n, T, chunk_tiles)
            for tile in range(first, stop):
                start = tile * T
                nb = min(T, n - start)
                if t < nb:
                    i = start + t
                    q = labels[i]
                    lab[t] = q
                    load(points, i, zg, t)
                    forward(cw, cb, inv, zg, ag, t, L, zero)
                    h = _FNV_OFFSET
                    for l in range(L):
                        word = np.uint64(0)
                        for k in range(M):
                            if ag[l, k, t] > zero:
                                word |= np.uint64(1) << np.uint64(k % 64)
                            if k % 64 == 63 or k == M - 1:
                                h = (h ^ word) * _FNV_PRIME
                                word = np.uint64(0)
                    hashes[i] = h
                    s2 = np.float64(0.0)
                    if output_cost:
                        for p in range(P):
                            f = out_b[p]
                            for j in range(M):
                                a = ag[L - 1, j, t]
                                if a > zero:
                                    f += out_w[p, j] * a
                            v = f - targets[q, p]
                            s2 += v * v
                    else:
                        for j in range(M):
                            v = zg[L, j, t] - targets[q, j]
                            s2 += v * v
                    rr[g, t] = s2
                cuda.syncthreads()
                for e in range(t, n_entries, T):
                    cur = lab[0]
                    run = np.float64(0.0)
                    for tt in range(nb):
                        s = lab[tt]
                        if s != cur:
                            accg[cur, e] += run
                            run = np.float64(0.0)
                            cur = s
                        run += _observe_term(e, M, L, zg, ag, rr[g, tt], shift, s, tt, zero)
                    accg[cur, e] += run
                cuda.syncthreads()

    return observe_kernel


@device_function
def _observe_term(e, M, L, zg, ag, sq, shift, q, tt, zero):
    """Point tt's term of entry e of the observation row (cluster q)."""
    if e == 0:
        return sq
    e -= 1
    if e < L * M:                        # truncated[l, k]
        l = e // M
        return 1.0 if ag[l, e - l * M, tt] <= zero else 0.0
    e -= L * M
    if e < 2 * L:                        # any_trunc[l], then all_trunc[l]
        l = e % L
        n_trunc = 0
        for k in range(M):
            if ag[l, k, tt] <= zero:
                n_trunc += 1
        if e < L:
            return 1.0 if n_trunc > 0 else 0.0
        return 1.0 if n_trunc == M else 0.0
    e -= 2 * L
    l = (e // M) % L
    k = e % M
    v = zg[l + 1, k, tt] - shift[q, k]
    return v if e < L * M else v * v     # s1[l, k], then s2[l, k]


@cuda.jit
def cluster_sums_kernel(points, labels, n, base, chunk_tiles, acc):
    """Row base + c of acc (chunks, Q, M) += the sums of each cluster's points (float64) of chunk c
    (chunk_tiles tiles) of points 0..n-1."""
    g, t = cuda.blockIdx.x, cuda.threadIdx.x
    T, G = cuda.blockDim.x, cuda.gridDim.x
    M = points.shape[1]
    lab = cuda.shared.array(THREADS, np.int64)
    for c in range(g, chunk_count(n, T, chunk_tiles), G):
        accg = acc[base + c]
        first, stop = tile_span(c, n, T, chunk_tiles)
        for tile in range(first, stop):
            start = tile * T
            nb = min(T, n - start)
            if t < nb:
                lab[t] = labels[start + t]
            cuda.syncthreads()
            for j in range(t, M, T):
                cur = lab[0]
                run = np.float64(0.0)
                for tt in range(nb):
                    s = lab[tt]
                    if s != cur:
                        accg[cur, j] += run
                        run = np.float64(0.0)
                        cur = s
                    run += np.float64(points[start + tt, j])
                accg[cur, j] += run
            cuda.syncthreads()


@cuda.jit
def gather_rows_kernel(points, labels, idx, out, out_labels):
    """out[r] = points[idx[r]] as float64, out_labels[r] = labels[idx[r]]."""
    r = cuda.grid(1)
    if r < idx.shape[0]:
        for j in range(points.shape[1]):
            out[r, j] = points[idx[r], j]
        out_labels[r] = labels[idx[r]]
