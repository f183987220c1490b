"""The kink integrator's per-point passes on the GPU (``backends.cuda_frozen``), one thread a point.

The CUDA twins of ``kernels.crossing``'s per-point kernels, on unpadded float64 arrays
(``tiles.kernel_arrays``: cw, cb, edges_t (L, M, M), (L, M), (L, M, M)) and bit-packed patterns
(N, L, W) uint64. The frozen-pattern gradient itself is ``gradient.build(dtype, frozen=True)``.

    ends_kernel    frozen-pattern pre-activations a (N, L, M) and their rates da along one
                   tangent (``preacts_jvp_kernel``): each product and sum rounded on its own,
                   in the CPU's order, so a and da are the CPU's bit for bit
    dips_kernel    the Hermite dip test between two ends (``hermite_dips_kernel``)
    flips_kernel   points whose first-order signs a + da > 0 differ from their patterns
    absmax_kernel  max |a| over all entries (an atomic maximum: exact in any order)
    near_kernel    per point, bit p set where |a[l_p, k_p]| <= zero for hyperplane p
    take_kernel, put_kernel   rows of a (N, L, W) pattern array out and in

The dip test's polynomial is evaluated with the compiler's contractions on a GPU (the flags it
sets send points to the exact per-point work on the host, which decides).
"""
import functools
import math

import numpy as np
from numba import cuda

from .launch import device_function, rounded_ops


@functools.lru_cache(maxsize=None)
def build():
    """The kernels (compiled on first launch): dict name -> kernel."""
    mul, add = rounded_ops("float64")

    @device_function
    def is_free(pats, i, l, k):
        return (pats[i, l, k // 64] >> np.uint64(k % 64)) & np.uint64(1) == np.uint64(1)

    @cuda.jit
    def ends_kernel(points, pats, cw, cb, edges_t, dcw, dcb, dedges_t, z, dz, a_out, d_out):
        """a_out, d_out (N, L, M): ``kernels.crossing._jvp_point`` per point; z, dz (threads, M) scratch."""
        th = cuda.grid(1)
        stride = cuda.gridsize(1)
        N, M = points.shape
        L = cw.shape[0]
        for i in range(th, N, stride):
            for j in range(M):
                z[th, j] = points[i, j]
                dz[th, j] = 0.0
            for l in range(L):
                for k in range(M):
                    s = cb[l, k]
                    ds = dcb[l, k]
                    for j in range(M):
                        s = add(s, mul(cw[l, k, j], z[th, j]))
                        ds = add(ds, add(mul(dcw[l, k, j], z[th, j]), mul(cw[l, k, j], dz[th, j])))
                    a_out[i, l, k] = s
                    d_out[i, l, k] = ds
                for k in range(M):
                    if not is_free(pats, i, l, k):
                        a = a_out[i, l, k]
                        da = d_out[i, l, k]
                        for j in range(M):
                            z[th, j] = add(z[th, j], -mul(a, edges_t[l, k, j]))
                            dz[th, j] = add(dz[th, j], -add(mul(da, edges_t[l, k, j]), mul(a, dedges_t[l, k, j])))

    @cuda.jit
    def dips_kernel(pats, a0, da0, a1, da1, h, margin, flags):
        """flags (N,) uint8: ``kernels.crossing._dips_point`` per point."""
        N, L, M = a0.shape
        for i in range(cuda.grid(1), N, cuda.gridsize(1)):
            hit = 0
            for l in range(L):
                for k in range(M):
                    sig = 1.0 if is_free(pats, i, l, k) else -1.0
                    p0 = sig * a0[i, l, k]
                    p1 = sig * a1[i, l, k]
                    if not (p0 > 0.0 and p1 > 0.0):
                        continue
                    m0 = sig * da0[i, l, k] * h
                    m1 = sig * da1[i, l, k] * h
                    c1 = m0
                    c2 = -3.0 * p0 - 2.0 * m0 + 3.0 * p1 - m1
                    c3 = 2.0 * p0 + m0 - 2.0 * p1 + m1
                    lo = margin * min(p0, p1)
                    qa, qb, qc = 3.0 * c3, 2.0 * c2, c1
                    if qa == 0.0:
                        if qb != 0.0:
                            s = -qc / qb
                            if 0.0 < s < 1.0 and p0 + s * (c1 + s * (c2 + s * c3)) < lo:
                                hit = 1
                    else:
                        disc = qb * qb - 4.0 * qa * qc
                        if disc >= 0.0:
                            r = math.sqrt(disc)
                            s = (-qb - r) / (2.0 * qa)
                            if 0.0 < s < 1.0 and p0 + s * (c1 + s * (c2 + s * c3)) < lo:
                                hit = 1
                            s = (-qb + r) / (2.0 * qa)
                            if 0.0 < s < 1.0 and p0 + s * (c1 + s * (c2 + s * c3)) < lo:
                                hit = 1
            flags[i] = hit

    @cuda.jit
    def flips_kernel(pats, a, da, flags):
        """flags (N,) uint8: 1 where a + da > 0 differs from the pattern on some coordinate."""
        N, L, M = a.shape
        for i in range(cuda.grid(1), N, cuda.gridsize(1)):
            hit = 0
            for l in range(L):
                for k in range(M):
                    if (a[i, l, k] + da[i, l, k] > 0.0) != is_free(pats, i, l, k):
                        hit = 1
            flags[i] = hit

    @cuda.jit
    def absmax_kernel(a, out):
        """out[0] = max(out[0], max |a|) over a (N, L, M)."""
        N, L, M = a.shape
        top = 0.0
        for i in range(cuda.grid(1), N, cuda.gridsize(1)):
            for l in range(L):
                for k in range(M):
                    top = max(top, abs(a[i, l, k]))
        cuda.atomic.max(out, 0, top)

    @cuda.jit
    def near_kernel(a, planes, zero, out):
        """out (N,) uint64: bit p set where |a[i, planes[p, 0], planes[p, 1]]| <= zero (p < 64)."""
        N = a.shape[0]
        for i in range(cuda.grid(1), N, cuda.gridsize(1)):
            word = np.uint64(0)
            for p in range(planes.shape[0]):
                if abs(a[i, planes[p, 0], planes[p, 1]]) <= zero:
                    word |= np.uint64(1) << np.uint64(p)
            out[i] = word

    @cuda.jit
    def take_kernel(src, idx, out):
        """out[e] = src[idx[e]] for rows of (N, ...) arrays flattened to (N, R)."""
        e = cuda.grid(1)
        if e < idx.shape[0]:
            for r in range(src.shape[1]):
                out[e, r] = src[idx[e], r]

    @cuda.jit
    def put_kernel(dst, idx, rows):
        """dst[idx[e]] = rows[e] (idx distinct)."""
        e = cuda.grid(1)
        if e < idx.shape[0]:
            for r in range(dst.shape[1]):
                dst[idx[e], r] = rows[e, r]

    return dict(ends=ends_kernel, dips=dips_kernel, flips=flips_kernel, absmax=absmax_kernel, near=near_kernel,
                take=take_kernel, put=put_kernel)
