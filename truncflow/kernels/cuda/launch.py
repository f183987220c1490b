"""Shared pieces of the CUDA kernels: rounded arithmetic, geometry, reduction, zero fill.

Kinks and fused multiply-adds. Where a kink is decided (the forward products
``a = W^(l) z + b^(l)`` and the truncation ``z + A cn``) every product and sum is
rounded on its own, in the order of the CPU kernels (``kernels.gradient._forward_tile``):
the kernels call libdevice's ``__dmul_rn`` / ``__dadd_rn`` (``__fmul_rn`` /
``__fadd_rn`` in float32), which the compiler never contracts into a fused
multiply-add. So the activation patterns, and every image, are the CPU's bit for bit,
also for points exactly on a hyperplane. The reverse sweep may use fused
multiply-adds (as the CPU's reverse sweep does), which moves sums by round-off only.
Under Numba's CUDA simulator the same operations are NumPy's, rounded one by one.
"""
import math
import operator

import numpy as np
from numba import cuda

#: Threads per block (points per tile) on a GPU, and under the simulator (which runs
#: every thread as a Python thread).
THREADS = 128
THREADS_SIMULATED = 32
#: Blocks per multiprocessor, and the number of blocks under the simulator.
BLOCKS_PER_SM = 4
BLOCKS_SIMULATED = 3
#: Budget for the per-block partial sums of one pass (bytes).
PARTIALS_BUDGET = 256 * 2**20


def simulated() -> bool:
    """True under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def device_function(f):
    """``cuda.jit(device=True)``; under the simulator the plain Python function (the
    simulator's device functions take a lock per call, which makes its threads crawl)."""
    return f if simulated() else cuda.jit(device=True)(f)


def rounded_ops(dtype):
    """(mul, add) device functions that round each result on its own in ``dtype``."""
    if simulated():
        return operator.mul, operator.add
    from numba.cuda import libdevice
    if np.dtype(dtype) == np.float32:
        return libdevice.fmul_rn, libdevice.fadd_rn
    return libdevice.dmul_rn, libdevice.dadd_rn


def geometry(n_points: int, row_bytes: int) -> tuple[int, int]:
    """(blocks G, threads T) for a pass over ``n_points`` whose per-block partial sums take
    ``row_bytes``. Depends on the device and the problem only, never on a batch size."""
    threads = THREADS_SIMULATED if simulated() else THREADS
    if simulated():
        most = BLOCKS_SIMULATED
    else:
        most = BLOCKS_PER_SM * cuda.get_current_device().MULTIPROCESSOR_COUNT
    tiles = max(1, math.ceil(n_points / threads))
    budget = max(1, PARTIALS_BUDGET // max(int(row_bytes), 1))
    return max(1, min(most, tiles, budget)), threads


@cuda.jit
def _zero_kernel(flat):
    i = cuda.grid(1)
    if i < flat.shape[0]:
        flat[i] = 0


def zero(array, stream=0):
    """Set a C-contiguous device array to zero."""
    flat = array.reshape(array.size)
    if flat.size:
        _zero_kernel[math.ceil(flat.size / 256), 256, stream](flat)


@cuda.jit
def _reduce_kernel(acc, out):
    """out[s, e] = sum over rows r = 0, 1, ... of acc[r, s, e], in that order."""
    i = cuda.grid(1)
    S, K = out.shape
    if i < S * K:
        s = i // K
        e = i - s * K
        total = np.float64(0.0)
        for r in range(acc.shape[0]):
            total += acc[r, s, e]
        out[s, e] = total


def reduce_rows(acc, stream=0) -> np.ndarray:
    """(S, K) float64 on the host: the rows of ``acc`` (R, S, K) added in order on the device."""
    R, S, K = acc.shape
    out = cuda.device_array((S, K), dtype=np.float64, stream=stream)
    if S * K:
        _reduce_kernel[math.ceil(S * K / 128), 128, stream](acc, out)
    return out.copy_to_host(stream=stream)


@cuda.jit
def _count_nonfinite_kernel(a, count):
    i = cuda.grid(1)
    if i < a.shape[0]:
        n = 0
        for j in range(a.shape[1]):
            v = a[i, j]
            if not (v - v == 0):          # NaN or inf
                n += 1
        if n:
            cuda.atomic.add(count, 0, n)


def count_nonfinite(array) -> int:
    """Number of NaN/inf entries of a 2-d device array (an exact count: the order of the
    atomic additions does not matter)."""
    count = cuda.to_device(np.zeros(1, dtype=np.int64))
    if array.shape[0]:
        _count_nonfinite_kernel[math.ceil(array.shape[0] / 128), 128](array, count)
    return int(count.copy_to_host()[0])
