"""The loop every stepping method shares: records, the final record, stopping rules, signals, checkpoints.

:class:`Loop` runs a flow step by step; a method implements only its steps (``_start``,
``_advance``, ``_last_accepted`` and, where it is checkpointed, ``_state`` / ``_restore``):
``method="rk45"`` and ``"gd"`` (:mod:`truncflow.engine.integrate`), ``"sgd"``
(:class:`truncflow.engine.sgd.SgdSteps` on this loop) and ``"kinks"``
(:class:`truncflow.engine.kinks.KinkIntegrator`). :class:`_Evaluator` is the flow's
``fun(t, y)`` with the last evaluation remembered, :func:`_record_final` the record of the last
state reached.

This module imports none of the methods (integrate.py imports them): each imports it.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .control import Interrupted, SignalGuard, stop_reason
from .methods import Status
from .rhs import FlowProblem

__all__ = ["Loop"]


class _Evaluator:
    """``fun(t, y)`` for the stepper: remembers the last cost, gradient norm and failure."""

    def __init__(self, problem: FlowProblem, guard: SignalGuard | None = None):
        self.problem = problem
        self.guard = guard
        self.y = None
        self.cost = math.nan
        self.grad_norm = math.nan
        self.rhs = None
        self.failure = None  # (time, reason) of the last state that could not be evaluated

    def __call__(self, t, y):
        # y is kept, not copied: neither the steppers nor the loops write into a state
        # they have evaluated (each step makes new arrays).
        try:
            c, g, gn = self.problem.evaluate_with_norm(y)
        except ValueError as exc:  # singular or ill-conditioned cumulative weights
            self.failure = (t, str(exc))
            self.y, self.cost, self.grad_norm = y, math.nan, math.nan
            self.rhs = np.full_like(y, np.nan)
        else:
            if not (math.isfinite(c) and math.isfinite(gn)):
                self.failure = (t, f"non-finite cost {c} or gradient norm {gn}")
            self.y, self.cost, self.grad_norm, self.rhs = y, c, gn, -g
        guard = self.guard
        if guard is not None and guard.armed and guard.received is not None:
            guard.check()     # a signal stops the run here, between kernels (a failed evaluation too:
        return self.rhs       # SciPy retries a NaN derivative with ever smaller steps)

    def restore_last(self, y, cost, grad_norm, rhs):
        """Remember an evaluation made in compiled code (``CompiledRK45``): its arrays are kept."""
        self.y, self.cost, self.grad_norm, self.rhs = y, float(cost), float(grad_norm), rhs

    def restore(self, y, cost, grad_norm, rhs):
        """Remember an evaluation made before a checkpoint (no pass over the points)."""
        self.y, self.cost, self.grad_norm, self.rhs = np.array(y), float(cost), float(grad_norm), np.array(rhs)

    def at(self, y):
        """(cost, gradient norm) at y, evaluating again unless y was the last point."""
        if self.y is None or (self.y is not y and not np.array_equal(self.y, y)):
            self(None, y)
        return self.cost, self.grad_norm


def _record_final(recorder, record, t, y, problem, status):
    """Record the last valid state reached (t, y), unless it is already the last record."""
    if y is None:
        return
    if Status(status).abnormal:
        if not np.all(np.isfinite(y)):
            return
        try:
            problem.unpack(y)
        except ValueError:
            return
    if recorder.last_time is not None and t <= recorder.last_time:
        return
    try:
        record(t, y)
    except (Exception, Interrupted):  # the final state cannot be observed (or a signal stopped the
        pass                          # compilation of its kernels): keep the records made so far


class Loop:
    """What the stepping methods share (rk45, gd, sgd, kinks): records, the final record,
    stopping rules, signals, checkpoints.

    A subclass implements ``_start()`` (a fresh run after the record at 0), ``_advance()``
    (one accepted step; returns (status, detail), status None to go on), ``_state()`` /
    ``_restore()`` (its own part of a checkpoint: called only when the run has a
    checkpoint) and ``_last_accepted()`` ((t, y) of the last accepted state, (None, None)
    before the first). It may override ``_initial_measure(y0)``: what the stopping rules
    look at before the first step.
    """

    def __init__(self, problem, t_end, schedule, recorder, opts, rules, callback, guard, saver):
        self.problem, self.t_end, self.recorder = problem, t_end, recorder
        self.opts, self.rules, self.callback = opts, rules, callback
        self.guard, self.saver = guard, saver
        self.fun = _Evaluator(problem, guard)
        self.counters = {"accepted": 0, "rejected": 0, "evaluations": 0}
        self.pending = list(schedule[1:])
        self.started = time.monotonic()

    #: leave the checkpoint of a finished run in place (simulate's keep_checkpoint)
    keep_checkpoint = False
    #: (y, its Params, its Observation) made ahead of the record of state y (an ensemble
    #: observes its members together, ``engine.ensemble``), or None
    observed = None

    def record(self, t, y):
        armed, self.guard.armed = self.guard.armed, False   # a record is never cut in half
        observed, self.observed = self.observed, None
        try:
            self.fun.at(y)
            self.counters["evaluations"] = self.problem.n_evaluations
            if observed is not None and np.array_equal(observed[0], y):
                params, obs = observed[1:]
            else:
                params, obs = self.problem.unpack(y), None
            self.recorder.record(float(t), params, self.fun.grad_norm, self.counters, obs)
        finally:
            self.guard.armed = armed

    def stop_reason(self, cost, grad_norm):
        return stop_reason(cost, grad_norm, self.problem.n_evaluations, self.started, self.rules)

    def _initial_measure(self, y0):
        """(cost, gradient norm) the stopping rules look at in the initial state y0, just recorded:
        the evaluator's (no pass over the points)."""
        return self.fun.cost, self.fun.grad_norm

    def _checkpoint_state(self):
        """(scalars, arrays) of the whole loop after an accepted step."""
        scalars, arrays = self._state()
        rec_scalars, rec_arrays = self.recorder.state()
        scalars.update(recorder=rec_scalars, counters=dict(self.counters), pending=list(map(float, self.pending)),
                       evaluations=self.problem.n_evaluations, elapsed=time.monotonic() - self.started,
                       cost=self.fun.cost, grad_norm=self.fun.grad_norm)
        arrays.update(rec_arrays)
        arrays.update(eval_y=np.array(self.fun.y), eval_rhs=np.array(self.fun.rhs))
        return scalars, arrays

    def _resume(self, scalars, arrays):
        self.recorder.restore(scalars["recorder"], arrays)
        self.counters = {k: int(v) for k, v in scalars["counters"].items()}
        self.pending = [float(v) for v in scalars["pending"]]
        self.problem.n_evaluations = int(scalars["evaluations"])
        self.started = time.monotonic() - float(scalars["elapsed"])
        self.fun.restore(arrays["eval_y"], scalars["cost"], scalars["grad_norm"], arrays["eval_rhs"])
        self._restore(scalars, arrays)

    def checkpoint(self, force=False):
        if self.saver is not None:
            self.saver.offer(self._checkpoint_state, force=force)

    def run(self, restored=None) -> Result:
        """Step until a stopping rule, t_end, a failure or a signal; return the Result."""
        status, detail = self.begin(restored)
        if status is None:
            status, detail = self.guarded(self._steps)
        return self.end(status, detail)

    def begin(self, restored=None):
        """Evaluate and record the initial state (or resume); returns (status, detail), status
        None when the run goes on. Raises ValueError when the initial state cannot be flowed."""
        if restored is None:
            y0 = self.problem.pack(self.problem.params)
            self.guard.armed = False            # a signal already noted stops the run after its first record
            cost, gn = self.fun.at(y0)
            self.guard.armed = True
            if self.fun.failure is not None or not (math.isfinite(cost) and math.isfinite(gn)):
                reason = self.fun.failure[1] if self.fun.failure else f"cost {cost}, gradient norm {gn}"
                raise ValueError(f"the initial state cannot be flowed: {reason}")

        def first():
            if restored is not None:
                self._resume(*restored)
                finished = restored[0].get("finished")      # the checkpoint of a run that had ended
                return (None, "") if finished is None else (finished["status"], finished["detail"])
            self.record(0.0, y0)
            status = self.stop_reason(*self._initial_measure(y0))
            if status is None:
                self._start()
                self.checkpoint(force=True)
            return status, ""
        return self.guarded(first)

    def guarded(self, body):
        """``body()`` -> (status, detail), with a signal, Ctrl-C or an error turned into a status."""
        try:
            return body()
        except Interrupted as exc:
            return Status.INTERRUPTED, f"signal {exc.signal_name}"
        except KeyboardInterrupt:      # no guard (not the main thread): the usual exception
            return Status.INTERRUPTED, "KeyboardInterrupt"
        except Exception as exc:  # keep what was recorded; say what happened
            return Status.FAILED, f"{type(exc).__name__}: {exc}"

    def _steps(self):
        status = detail = None
        while status is None:
            status, detail = self._advance()   # signals stop it between evaluations only
            if status is None:
                self.checkpoint()
                self.guard.check()             # ... or here, between steps
        return status, detail

    def end(self, status, detail) -> Result:
        """Checkpoint or clean up, record the last state reached, and return the Result.

        Raises :class:`Interrupted` when a signal stopped the run before its first record
        was complete: there is no Result to return."""
        self.guard.armed = False   # the final record and the files are written whatever comes now
        t, y = self._last_accepted()
        if self.saver is not None and y is not None and Status(status).ended_early:
            self.checkpoint(force=True)         # the loop is between two steps
        _record_final(self.recorder, self.record, t, y, self.problem, status)
        if self.recorder.n_records == 0:        # the initial state could not even be recorded
            if status == Status.INTERRUPTED:
                raise Interrupted(self.guard.received or "SIGINT")
            raise ValueError(f"the initial state cannot be flowed: {detail or status}")
        if self.saver is not None and Status(status).success:
            if self.keep_checkpoint and y is not None:
                self.saver.offer(lambda: self._finished_state(status, detail), force=True)
            else:
                self.saver.remove()
        return self.recorder.result(status, detail)

    def _finished_state(self, status, detail):
        """The checkpoint of a finished run: its whole state, the final record and why it ended."""
        scalars, arrays = self._checkpoint_state()
        scalars["finished"] = {"status": status, "detail": detail}
        return scalars, arrays


#: the name integrate.py and the tests used
_Loop = Loop
