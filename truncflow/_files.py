"""Writing files so that an interruption never leaves a half-written one.

Every file is written to a temporary file in the same folder and renamed over the
target (``os.replace`` is atomic on POSIX and Windows): a reader sees the old file or
the new one, never a part. A signal or crash while writing leaves at most a stray
``.<name>.*.tmp`` file, which is removed when the writer can still do so (and by the
command line when a run takes its output folder, see :func:`stray_temporaries`).

The file gets the permissions an ordinary ``open(path, "w")`` would give it
(``0o666`` less the process's umask), not the ``0o600`` of ``tempfile.mkstemp``.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "current_umask", "stray_temporaries", "TMP_SUFFIX"]

#: Suffix of the temporary files (``.<name>.<random>.tmp``).
TMP_SUFFIX = ".tmp"

_umask_lock = threading.Lock()
_umask_fallback: int | None = None


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status`` (read every time: it is exact and
    changes nothing). Elsewhere it can only be read by setting it, which is done once,
    under a lock, and remembered.
    """
    global _umask_fallback
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if _umask_fallback is None:
            old = os.umask(0o077)
            os.umask(old)
            _umask_fallback = old & 0o777
        return _umask_fallback


def _give_ordinary_mode(fd: int, tmp: str) -> None:
    mode = 0o666 & ~current_umask()
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # pragma: no cover (Windows: only the read-only bit exists)
            os.chmod(tmp, mode)
    except OSError:  # a file system without POSIX modes: keep what it gave
        pass


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to ``path`` for writing; on success rename it to ``path``.

    The final file's mode is ``0o666 & ~umask``, as for a file created with ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        _give_ordinary_mode(fd, tmp)
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


def stray_temporaries(folder, names) -> list[Path]:
    """The temporary files :func:`atomic_write` left in ``folder`` for files named ``names``.

    Only names of the form ``.<name>.<anything>.tmp`` for one of ``names`` match (a
    process killed while writing leaves them); nothing else in the folder does.
    """
    folder = Path(folder)
    pattern = re.compile("^\\.(?:" + "|".join(re.escape(n) for n in names) + ")\\..+" + re.escape(TMP_SUFFIX) + "$",
                         re.DOTALL)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    found = []
    for entry in entries:
        if pattern.match(entry.name):
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            found.append(folder / entry.name)
    return sorted(found)
