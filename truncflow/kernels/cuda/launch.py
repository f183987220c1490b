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
#: Budget for the per-chunk partial sums of one pass (bytes).
PARTIALS_BUDGET = 256 * 2**20
#: Points per chunk of partial sums at the least (a multiple of every tile), on a GPU and
#: under the simulator (whose problems have hundreds of points: several chunks each).
CHUNK_POINTS = 1024
CHUNK_POINTS_SIMULATED = 64
#: Rows added per thread in each round of the fixed-order reduction of the chunks' rows.
FOLD = 32


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


def block_offsets(sizes, total: str) -> dict:
    """{name: offset} of consecutive blocks of the given (name, size) in one flat buffer, and
    the buffer's length under ``total``."""
    out, k = {}, 0
    for name, size in sizes:
        out[name] = k
        k += size
    out[total] = k
    return out


def small_block() -> int:
    """Threads per block of the elementwise kernels (zero fill, the reduction's folds): 128, and 8
    under the simulator, which starts a Python thread for each thread of each launch."""
    return 8 if simulated() else 128


def threads() -> int:
    """Threads per block of the generic kernels (points per tile)."""
    return THREADS_SIMULATED if simulated() else THREADS


def chunking(n_points: int, row_bytes: int) -> tuple[int, int]:
    """(points per chunk, chunks) of a pass over ``n_points`` whose partial sums take
    ``row_bytes`` a chunk: ``CHUNK_POINTS`` times the smallest power of two that keeps all
    rows within ``PARTIALS_BUDGET``. Depends on N and the row only: never on the GPU, the
    launch or a batch size, so the sums are the same bits everywhere."""
    chunk = CHUNK_POINTS_SIMULATED if simulated() else CHUNK_POINTS
    while math.ceil(n_points / chunk) * max(int(row_bytes), 1) > PARTIALS_BUDGET and chunk < n_points:
        chunk *= 2
    return chunk, max(1, math.ceil(n_points / chunk))


def blocks(n_chunks: int) -> int:
    """Blocks to launch for a pass of ``n_chunks`` chunks (each block takes chunks g, g + G, ...;
    the result does not depend on this)."""
    if simulated():
        return max(1, min(BLOCKS_SIMULATED, n_chunks))
    return max(1, min(BLOCKS_PER_SM * cuda.get_current_device().MULTIPROCESSOR_COUNT, n_chunks))


@device_function
def chunk_count(n, T, chunk_tiles):
    """Chunks of a launch over n points in tiles of T points, chunk_tiles tiles a chunk."""
    return ((n + T - 1) // T + chunk_tiles - 1) // chunk_tiles


@device_function
def tile_span(c, n, T, chunk_tiles):
    """(first tile, stop tile) of chunk c of a launch over n points (``chunk_count``)."""
    return c * chunk_tiles, min((n + T - 1) // T, (c + 1) * chunk_tiles)


def geometry(n_points: int, row_bytes: int) -> tuple[int, int]:
    """(blocks G, threads T) of a per-point kernel with one scratch column per thread (the
    truncation map, the patterns): results per point, so G changes nothing."""
    return blocks(chunking(n_points, row_bytes)[1]), threads()


@cuda.jit
def _zero_kernel(flat):
    i = cuda.grid(1)
    if i < flat.shape[0]:
        flat[i] = 0


def zero(array, stream=0):
    """Set a C-contiguous device array to zero."""
    flat = array.reshape(array.size)
    if flat.size:
        T = small_block()
        _zero_kernel[math.ceil(flat.size / T), T, stream](flat)


@cuda.jit
def _fold_kernel(src, rows, dst):
    """dst[g] = src[FOLD g] + src[FOLD g + 1] + ... (at most FOLD rows, in order), for g < ceil(rows / FOLD);
    src, dst (R, S*K) flattened rows. One thread per (g, entry): threads along the entries coalesce."""
    i = cuda.grid(1)
    width = src.shape[1]
    groups = (rows + FOLD - 1) // FOLD
    if i < groups * width:
        g = i // width
        e = i - g * width
        total = np.float64(0.0)
        for r in range(g * FOLD, min(rows, g * FOLD + FOLD)):
            total += src[r, e]
        dst[g, e] = total


def reduce_chunks(acc, rows: int, scratch, out, stream=0):
    """The sum over the first ``rows`` rows of ``acc`` (R, S, K) into ``out`` (S, K) on the device,
    in a fixed tree: groups of ``FOLD`` rows in order, then groups of those, until one row is
    left. The order depends on ``rows`` only. ``scratch``: float64 device memory of
    ``fold_scratch_rows(rows)`` rows of S*K (kept by the caller: nothing is allocated here)."""
    width = acc.shape[1] * acc.shape[2]
    if width == 0:
        return out
    src, dst_out = acc.reshape(acc.shape[0], width), out.reshape(1, width)
    half = math.ceil(rows / FOLD)
    bufs = scratch.reshape(scratch.size // width, width)
    which = 0
    while True:
        groups = math.ceil(rows / FOLD)
        dst = dst_out if groups == 1 else bufs[which * half:which * half + groups]
        T = small_block()
        _fold_kernel[math.ceil(groups * width / T), T, stream](src, rows, dst)
        if groups == 1:
            return out
        src, rows, which = dst, groups, 1 - which


def fold_scratch_rows(rows: int) -> int:
    """Rows of S*K float64 the fold scratch of :func:`reduce_chunks` needs for ``rows`` rows."""
    return 2 * max(1, math.ceil(rows / FOLD))


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
