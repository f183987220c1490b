"""The kernels in ``numba.cuda`` (issue 13): the same passes as the CPU kernels, on a GPU.

Imported only when a dataset is moved to a GPU (:mod:`truncflow.device`): a CPU-only
installation never imports ``numba.cuda``. One module per job, as on the CPU side:

    launch      rounded arithmetic, chunks and launch geometry, fixed-order reduction
    sweep       cost + cumulative gradient, compiled for one shape (M, L, P, cost, slots,
                frozen): registers, shared memory, the tile's sums as a block GEMM
    forward     truncation maps and activation patterns of device arrays
    gradient    the generic gradient kernel (run-time shapes): wide networks, and with its
                moment sums the cluster statistics
    statistics  the statistics' moment entries (counts, first and second moments)
    observe     the observables of a record and the per-cluster sums of the points
    frozen      the kink integrator's per-point passes

Sums over points. Every pass that sums over points splits them into *chunks* of
consecutive points whose size depends on N and the row of sums only
(``launch.chunking``); each chunk's sums are added in point order into the chunk's own
row, and ``launch.reduce_chunks`` adds the rows in a fixed tree. Blocks take chunks g,
g + G, ..., and a streamed batch is a whole number of chunks: the result is the same
bits on any GPU, for any number of blocks launched and any batch size. No atomics.
Within a chunk the generic kernels take a tile of T points per block, one point per
thread, and *owner* threads add each entry's T terms in point order;
``sweep`` does the same from shared memory (see its docstring).
"""
