"""The time-stepping loop: solver step, step-size control, records, stopping.

``method="rk45"`` drives SciPy's Dormand-Prince stepper (:class:`scipy.integrate.RK45`):
it takes a step, estimates the local error and alone decides whether to accept
the step and how long the next one is; records at requested times come from the
step's dense-output interpolant. ``method="gd"`` is gradient descent, the explicit
Euler scheme with fixed step ``lr``. ``method="events"`` solves the aligned model
exactly from event to event (:mod:`truncflow.engine.events`).

A state where the network cannot be evaluated (a singular cumulative weight, a
non-finite cost) gives the stepper a NaN derivative, which its error control
rejects by shrinking the step; if the flow itself runs into such a state the
run stops as "diverged", keeping every record made before.
"""
from __future__ import annotations

import math
import time

import numpy as np
from scipy.integrate import RK45

from .._validate import choice, integer, positive
from ..data import Dataset
from ..params import Params
from .record import Recorder, Result, check_storable
from .events import check_events_problem, run_events
from .rhs import FlowProblem

__all__ = ["simulate", "METHODS"]

METHODS = ("rk45", "gd", "events")
_RK45_EVALS_PER_ATTEMPT = 6  # Dormand-Prince: 5 stages + the derivative at the new point (FSAL)


class _Evaluator:
    """``fun(t, y)`` for the stepper: remembers the last cost, gradient norm and failure."""

    def __init__(self, problem: FlowProblem):
        self.problem = problem
        self.y = None
        self.cost = math.nan
        self.grad_norm = math.nan
        self.rhs = None
        self.failure = None  # (time, reason) of the last state that could not be evaluated

    def __call__(self, t, y):
        try:
            c, g = self.problem.evaluate(y)
        except ValueError as exc:  # singular or ill-conditioned cumulative weights
            self.failure = (t, str(exc))
            self.y, self.cost, self.grad_norm = np.array(y), math.nan, math.nan
            self.rhs = np.full_like(y, np.nan)
            return self.rhs
        gn = float(np.sqrt(g @ g))
        if not (math.isfinite(c) and math.isfinite(gn)):
            self.failure = (t, f"non-finite cost {c} or gradient norm {gn}")
        self.y, self.cost, self.grad_norm, self.rhs = np.array(y), c, gn, -g
        return self.rhs

    def at(self, y):
        """(cost, gradient norm) at y, evaluating again unless y was the last point."""
        if self.y is None or not np.array_equal(self.y, y):
            self(None, y)
        return self.cost, self.grad_norm


def _record_schedule(t_end, record_times, n_records):
    if record_times is None:
        n_records = integer(n_records, "n_records", low=2, high=10**6)
        times = np.concatenate([[0.0], np.geomspace(t_end * 1e-3, t_end, n_records - 1)])
    else:
        times = np.asarray(record_times, dtype=np.float64)
        if times.ndim != 1 or times.size == 0:
            raise ValueError(f"record_times must be a non-empty 1-d sequence of times, got shape {times.shape}")
        if not np.all(np.isfinite(times)) or times.min() < 0 or times.max() > t_end:
            raise ValueError(f"record_times must be finite and lie in [0, t_end={t_end}]")
    return np.unique(np.concatenate([[0.0], times]))


def simulate(params: Params, dataset: Dataset, t_end: float, *, kind: str = "input",
             wrt: str = "cumulative", method: str = "rk45", train: str = "all", frozen_layers=(),
             rtol: float = 1e-6, atol: float = 1e-9, lr: float | None = None,
             first_step: float | None = None, max_step: float | None = None,
             record_times=None, n_records: int = 50, cost_tol: float | None = None,
             grad_tol: float | None = None, max_evals: int | None = None, max_time: float | None = None,
             callback=None, config: dict | None = None, record_truncation_times: bool = False) -> Result:
    """Integrate the gradient flow ``d/ds theta = -grad C(theta)`` (MODEL.md section 8).

    Args:
        params, dataset: initial parameters and the data.
        t_end: flow time to reach (> 0).
        kind: "input" or "output" cost.
        wrt: "cumulative" (flow W^(l), b^(l)), "layers" (flow W_l, b_l: the continuous
            limit of full-batch gradient descent) or "aligned" (aligned params only: flow
            the scales lambda^(l) and biases b^(l), frames fixed; MODEL.md section 9).
            Records carry both forms either way.
        method: "rk45" (adaptive Dormand-Prince with error control ``rtol``, ``atol``,
            optional ``first_step``, ``max_step``), "gd" (gradient descent: Euler
            steps of length ``lr`` until ``t >= t_end``) or "events" (the aligned model
            with the input cost solved exactly from event to event, for one layer or
            clusters separated by the layers; ``wrt`` must be "aligned", ``train`` "all"
            or "biases"; step-size options do not apply; ``record_truncation_times``
            keeps every point's first truncation time per layer and coordinate in
            ``result.truncation_times``).
        train: "all", "weights" or "biases": which parameters move (the output layer's
            weight follows "weights", its bias "biases"; for "aligned", "weights" are
            the scales); ``frozen_layers``: 1-based hidden layers that stay fixed.
        record_times: times in [0, t_end] to record at (0 is always recorded, and so is
            the final state); default ``n_records`` times, 0 then log-spaced from
            ``t_end/1000``. "gd" records the first iterate at or after each time.
        cost_tol, grad_tol, max_evals, max_time: optional further stopping rules: cost
            below, gradient norm below, gradient evaluations at least, wall-clock
            seconds at least.
        callback: optional ``callback(t, cost)`` after every accepted step (progress bars).
        config: optional dict stored with the result (e.g. the seed and the run's configuration).

    Returns:
        :class:`Result`; ``result.status`` says what stopped the run. A run that diverges,
        fails or is interrupted returns what it recorded so far, with the final state.
    """
    choice(method, "method", METHODS)
    t_end = positive(t_end, "t_end")
    try:
        frozen_layers = tuple(frozen_layers)
    except TypeError:
        raise ValueError(f"frozen_layers must be a sequence of layer numbers, got {frozen_layers!r}") from None
    problem = FlowProblem(params, dataset, kind=kind, wrt=wrt, train=train, frozen_layers=frozen_layers)
    # every value given is checked, whichever method uses it
    rtol, atol = positive(rtol, "rtol"), positive(atol, "atol")
    first_step = positive(first_step, "first_step", allow_none=True)
    max_step = positive(max_step, "max_step", allow_none=True)
    lr = positive(lr, "lr", allow_none=True)
    if first_step is not None and first_step > t_end:
        raise ValueError(f"first_step={first_step} exceeds t_end={t_end}")
    if method == "gd" and lr is None:
        raise ValueError("method='gd' needs a learning rate: pass lr > 0")
    if not isinstance(record_truncation_times, bool):
        raise ValueError(f"record_truncation_times must be True or False, got {record_truncation_times!r}")
    if record_truncation_times and method != "events":
        raise ValueError("record_truncation_times=True needs method='events' (the exact solver)")
    if method == "events":
        check_events_problem(problem)
        if max_evals is not None:
            raise ValueError("max_evals does not apply to method='events': it evaluates no gradients between "
                             "records (use max_time, cost_tol or grad_tol)")
    cost_tol = positive(cost_tol, "cost_tol", allow_none=True)
    grad_tol = positive(grad_tol, "grad_tol", allow_none=True)
    max_time = positive(max_time, "max_time", allow_none=True)
    if max_evals is not None:
        max_evals = integer(max_evals, "max_evals", low=1)
    if callback is not None and not callable(callback):
        raise ValueError("callback must be callable as callback(t, cost)")
    schedule = _record_schedule(t_end, record_times, n_records)

    run_config = dict(config or {})
    run_config.update(t_end=t_end, kind=kind, wrt=wrt, method=method, train=train,
                      frozen_layers=list(problem.frozen_layers), rtol=rtol, atol=atol, lr=lr,
                      first_step=first_step, max_step=max_step, cost_tol=cost_tol, grad_tol=grad_tol,
                      max_evals=max_evals, max_time=max_time, record_truncation_times=record_truncation_times,
                      n_points=dataset.n_points, n_clusters=dataset.n_clusters, width=dataset.width,
                      n_layers=params.n_layers, points_dtype=str(dataset.points.dtype))
    check_storable(run_config)
    rules = dict(cost_tol=cost_tol, grad_tol=grad_tol, max_evals=max_evals, max_time=max_time)
    if method == "events":
        return run_events(problem, t_end, schedule, Recorder(problem.dataset, kind, run_config), rules,
                          callback, record_truncation_times)
    stepper = _run_rk45 if method == "rk45" else _run_gd
    return stepper(problem, t_end, schedule, Recorder(problem.dataset, kind, run_config),
                   dict(rtol=rtol, atol=atol, first_step=first_step, max_step=max_step, lr=lr),
                   rules, callback)


def _stop_reason(cost, grad_norm, n_evals, started, rules):
    if rules["cost_tol"] is not None and cost <= rules["cost_tol"]:
        return "cost_tol"
    if rules["grad_tol"] is not None and grad_norm <= rules["grad_tol"]:
        return "grad_tol"
    if rules["max_evals"] is not None and n_evals >= rules["max_evals"]:
        return "max_evals"
    if rules["max_time"] is not None and time.monotonic() - started >= rules["max_time"]:
        return "max_time"
    return None


def _run_rk45(problem, t_end, schedule, recorder, opts, rules, callback) -> Result:
    fun = _Evaluator(problem)
    counters = {"accepted": 0, "rejected": 0, "evaluations": 0}
    started = time.monotonic()

    def record(t, y):
        cost, gn = fun.at(y)
        counters["evaluations"] = problem.n_evaluations
        recorder.record(float(t), problem.unpack(y), gn, counters)

    y0 = problem.pack(problem.params)
    record(0.0, y0)
    pending = list(schedule[1:])
    status, detail = None, ""
    solver = None
    try:
        status = _stop_reason(fun.cost, fun.grad_norm, problem.n_evaluations, started, rules)
        if status is None:
            solver = RK45(fun, 0.0, y0, t_end, rtol=opts["rtol"], atol=opts["atol"],
                          first_step=opts["first_step"], max_step=opts["max_step"] or np.inf)
        while status is None:
            evals_before = problem.n_evaluations
            message = solver.step()
            attempts = (problem.n_evaluations - evals_before) // _RK45_EVALS_PER_ATTEMPT
            if solver.status == "failed":
                if fun.failure is not None:
                    t_bad, reason = fun.failure
                    status, detail = "diverged", f"at t = {solver.t:.6g} the flow reached a state it cannot evaluate ({reason})"
                else:
                    status, detail = "failed", f"at t = {solver.t:.6g}: {message}"
                break
            counters["accepted"] += 1
            counters["rejected"] += max(attempts - 1, 0)
            fun.failure = None            # a rejected trial state is no verdict on the flow
            cost, gn = fun.at(solver.y)   # the stepper's last evaluation (FSAL): no extra pass
            if not (math.isfinite(cost) and math.isfinite(gn)):
                status, detail = "diverged", f"at t = {solver.t:.6g}: {fun.failure[1] if fun.failure else 'non-finite cost'}"
                break
            if pending and pending[0] <= solver.t:
                dense = solver.dense_output()
                while pending and pending[0] <= solver.t:
                    tr = pending.pop(0)
                    record(tr, solver.y if tr == solver.t else dense(tr))
            if callback is not None:
                callback(solver.t, cost)
            if solver.status == "finished":
                status = "t_end"
                break
            status = _stop_reason(cost, gn, problem.n_evaluations, started, rules)
    except KeyboardInterrupt:
        status, detail = "interrupted", ""
    except Exception as exc:  # keep what was recorded; say what happened
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
    _record_final(recorder, record, solver, fun, status)
    return recorder.result(status, detail)


def _record_final(recorder, record, solver, fun, status):
    """Record the last valid state reached, unless it is already the last record."""
    if solver is None:
        return
    t, y = solver.t, solver.y
    if status in ("diverged", "failed", "interrupted"):
        if not np.all(np.isfinite(y)):
            return
        try:
            fun.problem.unpack(y)
        except ValueError:
            return
    if recorder.last_time is not None and t <= recorder.last_time:
        return
    try:
        record(t, y)
    except Exception:  # the final state cannot be observed: keep the records made so far
        pass


def _run_gd(problem, t_end, schedule, recorder, opts, rules, callback) -> Result:
    lr = opts["lr"]
    counters = {"accepted": 0, "rejected": 0, "evaluations": 0}
    started = time.monotonic()
    fun = _Evaluator(problem)
    n_steps = max(1, math.ceil(t_end / lr * (1 - 1e-12)))
    pending = list(schedule[1:])

    def record(t, y):
        cost, gn = fun.at(y)
        counters["evaluations"] = problem.n_evaluations
        recorder.record(float(t), problem.unpack(y), gn, counters)

    y = problem.pack(problem.params)
    t = 0.0
    record(0.0, y)
    status, detail = None, ""
    try:
        status = _stop_reason(fun.cost, fun.grad_norm, problem.n_evaluations, started, rules)
        k = 0
        while status is None:
            fun.at(y)
            y_prev, t_prev = y, t
            y = y + lr * fun.rhs
            k += 1
            t = k * lr
            counters["accepted"] = k
            cost, gn = fun.at(y)
            if not (math.isfinite(cost) and math.isfinite(gn)):
                status, detail = "diverged", f"after step {k} (t = {t:.6g}): {fun.failure[1] if fun.failure else 'non-finite cost'}"
                if t_prev > recorder.last_time:
                    record(t_prev, y_prev)      # the last finite iterate
                break
            if callback is not None:
                callback(t, cost)
            due = False
            while pending and pending[0] <= t * (1 + 1e-12):
                pending.pop(0)
                due = True
            if k >= n_steps:
                status = "t_end"
            else:
                status = _stop_reason(cost, gn, problem.n_evaluations, started, rules)
            if due or status is not None:
                record(t, y)
    except KeyboardInterrupt:
        status, detail = "interrupted", ""
    except Exception as exc:
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
    return recorder.result(status, detail)

