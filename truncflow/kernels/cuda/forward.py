"""Forward sweep on the GPU: truncation maps and activation patterns (MODEL.md section 3).

Parameter arrays are those of the CPU's tiled kernels (``compute.tile_arrays``), padded
to width Mp: cw, inv (L, Mp, Mp) the cumulative weights and their inverses A^(l),
cb (L, Mp). Scratch, one column per thread of a block (t), per block (g):
    z   (G, L+1, Mp, T)  the images x~^(l) of the thread's point (rows >= M stay zero)
    act (G, L, Mp, T)    its cumulative pre-activations a = W^(l+1) x~^(l) + b^(l+1)
"""
import functools

import numpy as np
from numba import cuda

from .launch import device_function, rounded_ops


@functools.lru_cache(maxsize=None)
def build(dtype_name: str):
    """The forward device function and the truncate / patterns kernels for one sweep dtype."""
    mul, add = rounded_ops(dtype_name)

    @device_function
    def preacts(cw, cb, zg, ag, t, l):
        """act[l] = W^(l+1) z[l] + b^(l+1), column t: each row summed bias first, then j = 0, 1, ...,
        each product and sum rounded on its own (``kernels.gradient._matvec`` on the CPU)."""
        Mp = cw.shape[1]
        for k in range(Mp):
            s = cb[l, k]
            for j in range(Mp):
                s = add(s, mul(cw[l, k, j], zg[l, j, t]))
            ag[l, k, t] = s

    @device_function
    def forward(cw, cb, inv, zg, ag, t, n_layers, zero):
        """act[l] = W^(l+1) z[l] + b^(l+1) and z[l+1] = z[l] + A^(l+1) cn, cn = -a on truncated
        coordinates (a <= 0) and 0 on free ones: column t of zg, ag. Each row summed bias
        (or source) first, then j = 0, 1, ...; each product and sum rounded on its own, as
        ``kernels.gradient._forward_tile`` does on the CPU."""
        Mp = cw.shape[1]
        for l in range(n_layers):
            preacts(cw, cb, zg, ag, t, l)
            for k in range(Mp):
                s = zg[l, k, t]
                for j in range(Mp):
                    a = ag[l, j, t]
                    c = -a if a <= zero else zero
                    s = add(s, mul(inv[l, k, j], c))
                zg[l + 1, k, t] = s

    @device_function
    def forward_frozen(cw, cb, inv, zg, ag, t, n_layers, zero, pats, i, m_true, flags):
        """``forward`` truncating by point i's pattern pats[i] (L, W) uint64 (bit set: free; the
        padding coordinates k >= 64 W: truncated) instead of the signs, as
        ``kernels.crossing._forward_tile_pat`` does; flags[i] = 1 where a sign of a (a > 0)
        disagrees with the pattern on one of the first ``m_true`` coordinates (the points' width)."""
        Mp = cw.shape[1]
        M = min(Mp, 64 * pats.shape[2])
        for l in range(n_layers):
            preacts(cw, cb, zg, ag, t, l)
            for j in range(m_true):
                if (ag[l, j, t] > zero) != is_free(pats, i, l, j, M):
                    flags[i] = 1
            for k in range(Mp):
                s = zg[l, k, t]
                for j in range(Mp):
                    a = ag[l, j, t]
                    c = zero if is_free(pats, i, l, j, M) else -a
                    s = add(s, mul(inv[l, k, j], c))
                zg[l + 1, k, t] = s

    @device_function
    def is_free(pats, i, l, j, M):
        """Bit j of point i's layer-l pattern (coordinates j >= M: truncated)."""
        return j < M and (pats[i, l, j // 64] >> np.uint64(j % 64)) & np.uint64(1) == np.uint64(1)

    @device_function
    def load(points, i, zg, t):
        """Point i into column t of z[0] (cast to the sweep dtype, rounded to nearest)."""
        for j in range(points.shape[1]):
            zg[0, j, t] = points[i, j]

    @cuda.jit
    def truncate_kernel(points, n_layers, cw, cb, inv, z, act, zero, out):
        """out[i] = x~^(n_layers) of point i, (N, M)."""
        g, t = cuda.blockIdx.x, cuda.threadIdx.x
        T, G = cuda.blockDim.x, cuda.gridDim.x
        N, M = points.shape
        zg, ag = z[g], act[g]
        for tile in range(g, (N + T - 1) // T, G):
            i = tile * T + t
            if i < N:
                load(points, i, zg, t)
                forward(cw, cb, inv, zg, ag, t, n_layers, zero)
                for j in range(M):
                    out[i, j] = zg[n_layers, j, t]

    @cuda.jit
    def patterns_kernel(points, cw, cb, inv, z, act, zero, out):
        """out (N, L, ceil(M/64)) uint64: bit k % 64 of word k // 64 set where a_k > 0."""
        g, t = cuda.blockIdx.x, cuda.threadIdx.x
        T, G = cuda.blockDim.x, cuda.gridDim.x
        N, M = points.shape
        L = cw.shape[0]
        zg, ag = z[g], act[g]
        for tile in range(g, (N + T - 1) // T, G):
            i = tile * T + t
            if i < N:
                load(points, i, zg, t)
                forward(cw, cb, inv, zg, ag, t, L, zero)
                for l in range(L):
                    for w in range(out.shape[2]):
                        word = np.uint64(0)
                        for b in range(min(64, M - 64 * w)):
                            if ag[l, 64 * w + b, t] > zero:
                                word |= np.uint64(1) << np.uint64(b)
                        out[i, l, w] = word

    return forward, load, truncate_kernel, patterns_kernel, forward_frozen
