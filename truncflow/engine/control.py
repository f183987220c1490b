"""What ends a run early: the stopping rules, and signals (SIGINT, SIGTERM) caught safely.

A signal that arrives while a Numba kernel runs must not raise inside it (CPython
would report "returned a result with an exception set"), and one that arrives in the
middle of SciPy's step must not leave a half-updated stepper. So while a run is
going, :class:`SignalGuard` replaces the handlers of SIGINT and SIGTERM with one that
only notes the signal; the flow checks the note after each gradient evaluation
(:meth:`SignalGuard.check`, which raises :class:`Interrupted` there, between
kernels) and stops with status ``"interrupted"``, keeping its records and its last
accepted state. The previous handlers are restored on exit.

Compilation is the exception: a first run with an empty Numba cache spends minutes
compiling kernels, where nothing of the run can be half-updated. A signal that
arrives while Numba compiles in the main thread raises :class:`Interrupted` at the
compiler's next step (the start or end of a compiler pass: not in the handler, which
may run inside LLVM's ctypes callbacks, where an exception is printed and lost), and
so does a compilation that starts after a signal was noted. It is a
:class:`KeyboardInterrupt`, so that no ``except Exception`` inside Numba swallows it.

Handlers can only be installed from the main thread; elsewhere (a worker thread)
the guard does nothing and signals keep their usual effect.
"""
from __future__ import annotations

import signal
import threading
import time

from numba.core import event as _numba_event

from .methods import Status

__all__ = ["SignalGuard", "Interrupted", "stop_reason", "SIGNAL_EXIT_CODES", "raise_on_signals"]

#: Exit codes of the command line for a run stopped by a signal (128 + signal number).
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(KeyboardInterrupt):
    """Raised between kernels (or during a compilation) when a signal asked the run to stop.

    A :class:`KeyboardInterrupt`: code that catches ``Exception`` lets it through.
    ``signal_name`` is "SIGINT" or "SIGTERM".
    """

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class _CompileWatch(_numba_event.Listener):
    """Counts the Numba compilations running in the main thread (``depth``) and, at every
    compiler event there (a compilation or a pass starting or ending), raises
    :class:`Interrupted` if a signal was noted: by the active :class:`SignalGuard`, or
    by :class:`raise_on_signals` while a compilation ran (``noted``)."""

    depth = 0
    noted: str | None = None

    def on_start(self, event):
        if threading.current_thread() is threading.main_thread():
            if event.kind == "numba:compile":
                self.depth += 1     # on_end runs even when this raises (numba's trigger_event)
            self._raise_if_signalled()

    def on_end(self, event):
        if threading.current_thread() is threading.main_thread():
            if event.kind == "numba:compile":
                self.depth -= 1
            self._raise_if_signalled()

    def _raise_if_signalled(self):
        guard = SignalGuard._active
        if guard is not None and guard.saving:      # a run's files are being written: nothing cuts them
            return
        name = guard.received if guard is not None and guard.received is not None else self.noted
        if name is not None:
            raise Interrupted(name)


_COMPILING = _CompileWatch()
for _kind in ("numba:compile", "numba:run_pass"):
    _numba_event.register(_kind, _COMPILING)


def _raise_interrupted(signum, frame):
    name = signal.Signals(signum).name
    if _COMPILING.depth > 0:        # maybe inside an LLVM callback: raised at the compiler's next step
        _COMPILING.noted = name
        return
    raise Interrupted(name)


class raise_on_signals:
    """Context manager for a command line's whole run: SIGINT and SIGTERM raise
    :class:`Interrupted` wherever they arrive (a :class:`SignalGuard` inside defers them
    while it is active). Without it SIGTERM ends the process with no word. Main thread only."""

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, _raise_interrupted)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        _COMPILING.noted = None
        return False


class SignalGuard:
    """Context manager: SIGINT and SIGTERM are noted, not raised, while it is active.

    ``received`` is the name of the first signal noted ("SIGINT", "SIGTERM") or None.
    Guards nest: an inner guard shares the outer one's note (so that a command line
    that guards its whole run, saving included, sees a signal caught inside
    ``simulate``).
    """

    _active: "SignalGuard | None" = None

    def __init__(self):
        self.received: str | None = None
        self._previous = {}
        self._outer = None
        self._registered = False
        self.armed = True
        #: set by the command line while it writes a finished or stopped run's files: a signal
        #: noted meanwhile no longer stops a compilation (plots may compile their kernels)
        self.saving = False

    def _note(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "SignalGuard":
        self._registered = threading.current_thread() is threading.main_thread()
        if not self._registered:       # signals are delivered to the main thread only: nothing to note
            return self
        self._outer = SignalGuard._active
        if self._outer is not None:
            self.received = self._outer.received
        else:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note_active)
        SignalGuard._active = self
        return self

    @staticmethod
    def _note_active(signum, frame):
        guard = SignalGuard._active
        while guard is not None:
            guard._note(signum, frame)
            guard = guard._outer

    def __exit__(self, *exc) -> bool:
        if not self._registered:
            return False
        SignalGuard._active = self._outer
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal was noted and the guard is armed."""
        if self.armed and self.received is not None:
            raise Interrupted(self.received)


def stop_reason(cost: float, grad_norm: float, n_evals: int, started: float, rules: dict) -> str | None:
    """The first stopping rule met (``cost_tol``, ``grad_tol``, ``max_evals``, ``max_time``), or None.

    ``started`` is a :func:`time.monotonic` reading; ``rules`` maps each rule to its
    limit or None.
    """
    if rules["cost_tol"] is not None and cost <= rules["cost_tol"]:
        return Status.COST_TOL
    if rules["grad_tol"] is not None and grad_norm <= rules["grad_tol"]:
        return Status.GRAD_TOL
    if rules["max_evals"] is not None and n_evals >= rules["max_evals"]:
        return Status.MAX_EVALS
    if rules["max_time"] is not None and time.monotonic() - started >= rules["max_time"]:
        return Status.MAX_TIME
    return None
