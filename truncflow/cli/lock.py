"""The lock of an output folder: one run at a time writes into a folder.

The lock file (``.truncflow.lock``) holds the process id, the process's start time and a
random token (JSON): it is live while a process of that id *and* that start time runs;
one left by a killed process (even if its id was given to another process since), or one
that cannot be read as a lock, is taken over -- race-safely, by one run at a time.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import socket
import stat
import sys
import time
from pathlib import Path

from .parser import PROG, one_line

LOCK_FILE = ".truncflow.lock"
#: "the process exists, but its start time cannot be read"
_UNKNOWN = object()
_LOCK_MAX_BYTES = 4096
_PID_MAX = 2**31 - 1
#: A lock being taken (``.truncflow.lock.TOKEN.new``) or taken over (``.takeover``); ``.stale``: a lock
#: set aside by earlier versions of this code, removed as a stray like the others.
LOCK_TRANSIENT = re.compile(r"^" + re.escape(LOCK_FILE) + r"\.(?:[0-9a-f]+\.(?:new|stale)|takeover)$")


class FolderLock:
    """The lock file of ``folder`` (see the module's docstring): :meth:`_take_lock` takes it or
    refuses the folder (``ValueError``, one line), :meth:`_release` removes it if it is still
    this one's. :class:`~truncflow.cli.outputs.OutputFolder` is a FolderLock: it takes the lock
    when it takes the folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = folder / LOCK_FILE
        self.token = None

    def _take_lock(self):
        me = {"pid": os.getpid(), "started": process_start(os.getpid()), "token": secrets.token_hex(8),
              "host": socket.gethostname(), "program": PROG}
        if me["started"] is _UNKNOWN:
            me["started"] = None
        self.token = me["token"]
        text = json.dumps(me) + "\n"
        deadline = time.monotonic() + 15.0
        warned = set()
        while time.monotonic() < deadline:
            if self._create_lock(text):
                return
            seen = self._read_lock()
            if seen is None:                   # gone meanwhile: try again
                continue
            st, data = seen
            holder = parse_lock(data)
            if holder is None:
                warning = f"{self.lock} is not a lock truncflow can read: replacing it"
            elif holder["host"] not in (None, me["host"]):
                warning = (f"{self.lock} was left by process {holder['pid']} on host {holder['host']!r}, "
                           "which cannot be checked from here: taking the folder over")
            elif holder_alive(holder, st.st_mtime):
                raise ValueError(f"output folder {self.folder} is in use by another truncflow run "
                                 f"(process {holder['pid']}); wait for it or choose another --out")
            else:
                warning = None          # left by a run that is gone: say nothing
            if warning is not None and warning not in warned:
                warned.add(warning)
                print(f"{PROG}: warning: {one_line(warning)}", file=sys.stderr)
            self._set_aside(st, data)
        raise ValueError(f"could not lock the output folder {self.folder} (other runs keep taking it)")

    def _create_lock(self, text: str) -> bool:
        """Create the lock holding ``text`` if there is none (True), atomically: a whole file is
        linked to the lock's name, so no reader ever sees a lock half-written."""
        new = self.folder / f"{LOCK_FILE}.{self.token}.new"
        try:
            fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            try:
                os.link(new, self.lock)
                return True
            except FileExistsError:
                return False
            except OSError:                    # no hard links here: create the lock itself exclusively
                try:
                    fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                except OSError as exc:
                    raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                return True
        except OSError as exc:
            raise ValueError(f"cannot write the lock file {self.lock}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(new)

    def _read_lock(self, path=None):
        """(lstat, first bytes or None when unreadable) of the lock there, None if there is none."""
        path = self.lock if path is None else path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read the lock file {path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"output folder {self.folder} holds a folder named {LOCK_FILE} where truncflow "
                             "keeps its lock file: remove it or choose another --out")
        return st, (_read_head(path) if stat.S_ISREG(st.st_mode) else None)

    def _set_aside(self, st, data) -> None:
        """Remove the stale lock judged from (st, data) -- and nothing else.

        One run at a time takes a folder over (it holds ``.truncflow.lock.takeover``, created
        exclusively; others wait for it to go). Holding it, a run removes the lock only if it is
        still the very file judged stale (same inode, same bytes). No other run can change that
        file meanwhile: a new lock is only ever created where there is none, and only a run
        holding the take-over file removes a lock that is not its own. A lock that is not the
        one judged is left where it is: never moved, so there is no moment at which a live lock
        is missing and a third run could take the folder too.
        """
        guard = self.folder / f"{LOCK_FILE}.takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:        # another run is taking the folder over: look again shortly
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(guard).st_mtime > 10.0:     # left by a run killed meanwhile
                    os.unlink(guard)
            time.sleep(0.02)
            return
        except OSError as exc:
            raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
        try:
            now = self._read_lock()
            if now is not None and (now[0].st_dev, now[0].st_ino) == (st.st_dev, st.st_ino) and now[1] == data:
                try:
                    os.unlink(self.lock)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise ValueError(f"cannot remove the stale lock file {self.lock}: {exc.strerror or exc}") \
                        from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(guard)

    def _release(self) -> None:
        """Remove the lock if it is still this run's."""
        try:
            seen = self._read_lock()
        except ValueError:
            return
        if seen is None or seen[1] is None:
            return
        holder = parse_lock(seen[1])
        if holder is not None and holder["token"] == self.token:
            with contextlib.suppress(OSError):
                os.unlink(self.lock)


def _read_head(path: Path):
    """The first bytes of a lock file (never blocking: a FIFO there reads as nothing), None if unreadable."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= _LOCK_MAX_BYTES:
            chunk = os.read(fd, _LOCK_MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_lock(data):
    """The lock's holder, {"pid", "started", "token", "host"}, or None if ``data`` is not a lock.

    ``started`` is the process's start (see :func:`process_start`), None if it could not
    be read, or ``"legacy"`` for a lock of an earlier truncflow that held the process id only.
    """
    if data is None or len(data) > _LOCK_MAX_BYTES:
        return None
    try:
        text = data.decode("utf-8").strip()
        if text.isascii() and text.isdigit() and len(text) <= 10:        # an earlier truncflow's: "PID\n"
            pid = int(text)
            return {"pid": pid, "started": "legacy", "token": None, "host": None} if 1 <= pid <= _PID_MAX else None
        info = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    pid, started, token, host = (info.get(k) for k in ("pid", "started", "token", "host"))
    if type(pid) is not int or not 1 <= pid <= _PID_MAX:
        return None
    if started is not None and (type(started) not in (int, float) or not math.isfinite(started)):
        return None
    if not isinstance(token, str) or not isinstance(host, (str, type(None))):
        return None
    return {"pid": pid, "started": started, "token": token, "host": host}


def holder_alive(holder: dict, lock_mtime: float) -> bool:
    """Whether the process that wrote the lock still runs: its id exists and its start time is the one
    in the lock (an id given to another process since is not the holder)."""
    pid, started = holder["pid"], holder["started"]
    now = process_start(pid)
    if now is None:
        return False
    if started == "legacy":      # no start time: a process started after the lock was written did not write it
        if pid == 1:
            return False
        created = _create_time(pid)
        return created is _UNKNOWN or created <= lock_mtime + 1.0
    if now is _UNKNOWN or started is None:
        return True
    return now == started


def process_start(pid: int):
    """What identifies the run of process ``pid``: its start in clock ticks since boot (Linux,
    /proc/PID/stat field 22: exact, read the same by every process), else psutil's create
    time. None if there is no such process (or only a zombie), _UNKNOWN if it cannot be read."""
    if not 1 <= pid <= _PID_MAX:
        return None
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
            fields = data[data.rindex(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):
                return None
            return int(fields[19])
        except (FileNotFoundError, ProcessLookupError):
            return None
        except (OSError, ValueError, IndexError):
            pass
    created = _create_time(pid)
    return created


def _create_time(pid: int):
    """psutil's create time of process ``pid`` (wall-clock seconds), None if there is none, _UNKNOWN."""
    try:
        import psutil
    except ImportError:  # pragma: no cover (a dependency)
        return _UNKNOWN
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except (psutil.AccessDenied, OSError, ValueError, OverflowError):
        return _UNKNOWN
