"""Per-point arrays that do not count against the process's memory when they are large.

An array of N labels or pattern hashes (8 bytes a point) is small next to the points
(M * 4 or 8 bytes a point) but still grows with N: for data that is read from a
memory-mapped file, so that the points never enter memory, these arrays would be
what fills it. Above ``SCRATCH_BYTES`` they are backed by an unlinked temporary file
(in ``TRUNCFLOW_SCRATCH``, else the system's temporary folder): the operating system
keeps their pages in memory while there is room and writes them out when there is
not, and the space goes when the array does.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

#: Per-point arrays of at least this many bytes go to a scratch file.
SCRATCH_BYTES = 64 * 2**20


def per_point_array(n: int, dtype) -> np.ndarray:
    """An uninitialized (n,) array of ``dtype``: in memory, or file-backed when large."""
    dtype = np.dtype(dtype)
    if n * dtype.itemsize < SCRATCH_BYTES:
        return np.empty(n, dtype=dtype)
    with tempfile.TemporaryFile(dir=os.environ.get("TRUNCFLOW_SCRATCH") or None) as f:
        f.truncate(n * dtype.itemsize)
        return np.memmap(f, dtype=dtype, mode="w+", shape=(n,))     # the map keeps the file open
