"""Writing files so that an interruption never leaves a half-written one.

Every file is written to a temporary file in the same folder and renamed over the
target (``os.replace`` is atomic on POSIX and Windows): a reader sees the old file or
the new one, never a part. A signal or crash while writing leaves at most a stray
``.*.tmp`` file, which is removed when the writer can still do so.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_savez"]


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to ``path`` for writing; on success rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_savez(path, **arrays) -> Path:
    """``np.savez_compressed`` to exactly ``path`` (no suffix added), atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)
    return path
