"""Compilation settings shared by every CPU kernel, and the fixed chunking of points.

Kernels import their flags from here and never set their own, so one place
decides where floating-point reassociation is allowed: only in the reverse sweep
(the sums over the points of a tile and the backward products,
``JIT_OPTIONS_REDUCTION``), never where a kink is decided.
Results are exact to round-off and identical on any number of threads.
"""
#: Passed as ``fastmath=`` to every kernel. False: IEEE semantics, reproducible sums.
FASTMATH = False

#: Options shared by every kernel: ``cache=True`` so a second process starts in seconds.
JIT_OPTIONS = dict(cache=True, fastmath=FASTMATH, nogil=True)

#: Tiled kernels of the reverse sweep (sums over the points of a tile, backward
#: products): reassociation lets the sums vectorize, and contraction fuses multiply-adds. Still deterministic
#: (the same code sums the same tile the same way on any number of threads); no
#: assumptions about NaN or infinity are made.
FASTMATH_REDUCTION = {"reassoc", "contract"}
JIT_OPTIONS_REDUCTION = dict(cache=True, fastmath=FASTMATH_REDUCTION, nogil=True)

#: Smallest number of points in a chunk.
MIN_CHUNK = 1024
#: Largest number of chunks a pass splits the points into.
MAX_CHUNKS = 256
#: Budget for the per-chunk partial sums of one pass (bytes).
PARTIALS_BUDGET = 256 * 2**20


def chunk_size(n_points: int, partial_bytes: int = 0) -> int:
    """Points per chunk for a pass over ``n_points`` points.

    ``partial_bytes`` is the size of one chunk's partial sums: the number of chunks
    is also capped so that all of them fit in :data:`PARTIALS_BUDGET`. The result
    depends on the problem only, never on the number of threads: each chunk
    accumulates separately and chunk results are added in a fixed order, so the
    same inputs give bit-identical results on 1, 2 or 64 threads.
    """
    max_chunks = max(1, min(MAX_CHUNKS, PARTIALS_BUDGET // max(int(partial_bytes), 1)))
    return max(MIN_CHUNK, -(-int(n_points) // max_chunks))

