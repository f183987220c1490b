"""simulate(): options checked, the run planned and executed; the steps of rk45 and gd.

The loop the stepping methods share (records, the final record, stopping rules, signals,
checkpoints) is :class:`truncflow.engine.loop.Loop`.

``method="rk45"`` drives SciPy's Dormand-Prince stepper (:class:`scipy.integrate.RK45`):
it takes a step, estimates the local error and alone decides whether to accept
the step and how long the next one is; records at requested times come from the
step's dense-output interpolant. For problems whose points fit one chunk the same
method with the same rules runs each step as one compiled call
(:class:`truncflow.engine.stepper.CompiledRK45`): SciPy's Python step costs more
there than its six gradient evaluations. ``method="gd"`` is gradient descent, the explicit
Euler scheme with fixed step ``lr`` (on problems whose points fit one chunk its
steps run in compiled code between records, :mod:`truncflow.kernels.descent`). ``method="events"`` solves the aligned model
exactly from event to event (:mod:`truncflow.engine.events`); ``method="kinks"``
locates activation-pattern changes and follows sliding modes
(:mod:`truncflow.engine.kinks`, experimental).

A state where the network cannot be evaluated (a singular cumulative weight, a
non-finite cost) gives the stepper a NaN derivative, which its error control
rejects by shrinking the step; if the flow itself runs into such a state the
run stops as "diverged", keeping every record made before.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from types import SimpleNamespace

import numpy as np
from scipy.integrate import RK45

from .. import threads
from ..kernels import descent
from .._validate import choice, integer, positive
from ..data import Dataset
from ..params import Params
from .checkpoint import Checkpointer, fingerprint, load_checkpoint
from .control import SignalGuard
from .methods import (METHOD_NAMES, checkpoint_refusal, placement_refusal,
                      precision_refusal, spec, supporting)
from .record import Recorder, Result, check_storable
from .events import check_events_problem, run_events
from .loop import Loop, _Evaluator, _Loop, _record_final  # noqa: F401 (_Evaluator, _Loop, _record_final: their old home)
from .rhs import FlowProblem
from .sgd import SgdSteps, check_sgd_options
from .stepper import CompiledRK45
from .methods import Status

__all__ = ["simulate", "METHODS"]

#: The methods and what each supports: :mod:`truncflow.engine.methods` (its registry). These
#: names are derived from it, for code that has not moved to the registry yet.
METHODS = METHOD_NAMES
CHECKPOINT_METHODS = supporting("checkpoints")
#: Methods that run on a DistributedDataset (the others need the points here).
DISTRIBUTED_METHODS = supporting("DistributedDataset")
_RK45_EVALS_PER_ATTEMPT = 6  # Dormand-Prince: 5 stages + the derivative at the new point (FSAL)


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
             callback=None, config: dict | None = None, record_truncation_times: bool = False,
             checkpoint=None, checkpoint_every: float = 60.0, resume: bool = False,
             keep_checkpoint: bool = False, precision: str = "float64", batch_size: int | None = None,
             replacement: bool = False, seed: int | None = None, momentum: float = 0.0,
             kink_options=None) -> Result:
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
            ``result.truncation_times``), or "kinks" (experimental: integrates the
            frozen-pattern flow with RK45/DOP853 and locates every activation-pattern
            change, follows sliding modes (Filippov), and corrects many crossings per
            step in bulk; :mod:`truncflow.engine.kinks`; counts in
            ``result.config["kinks"]``, sliding intervals in
            ``result.arrays["sliding_intervals"]``; its choices: ``kink_options``), or "sgd" (stochastic gradient
            descent: steps of length ``lr`` along the gradient of a minibatch of
            ``batch_size`` points; :mod:`truncflow.engine.sgd`).
        train: "all", "weights" or "biases": which parameters move (the output layer's
            weight follows "weights", its bias "biases"; for "aligned", "weights" are
            the scales); ``frozen_layers``: 1-based hidden layers that stay fixed.
        record_times: times in [0, t_end] to record at (0 is always recorded, and so is
            the final state); default ``n_records`` times, 0 then log-spaced from
            ``t_end/1000``. "gd" records the first iterate at or after each time.
        cost_tol, grad_tol, max_evals, max_time: optional further stopping rules: cost
            below, gradient norm below, gradient evaluations at least, wall-clock
            seconds at least (on a resumed run, counted since the first start).
        callback: optional ``callback(t, cost)`` after every accepted step (progress bars).
        config: optional dict stored with the result (e.g. the seed and the run's configuration).
        checkpoint: optional path of a checkpoint file (rk45, kinks, gd, sgd): the run's whole
            state is written there after the first record, then at most every
            ``checkpoint_every`` wall-clock seconds after an accepted step, and when the
            run is interrupted; it is deleted when the run succeeds, unless
            ``keep_checkpoint``.
        resume: continue the run saved in ``checkpoint`` (which must exist and belong to
            the same parameters, data and options; the stopping rules ``cost_tol``,
            ``grad_tol``, ``max_evals``, ``max_time`` may differ). The
            resumed run gives the same records, bit for bit, as one never stopped.
            Resuming the checkpoint of a run that finished returns its Result at once.
        keep_checkpoint: when the run succeeds, leave a last checkpoint holding the
            finished run instead of deleting it (the command line deletes it only once
            result.npz and the plots are written, so a kill while it saves loses nothing).
        precision: "float64" (default) or "float32": the arithmetic of the per-point sweep
            of every gradient evaluation (:func:`truncflow.gradient`); "rk45", "gd" and "sgd"
            only. The state, the stepper and the records stay float64.
        batch_size, replacement, seed, momentum: "sgd" only (ValueError for another
            method). Step k moves along the gradient of the minibatch cost
            ``C_B = 1/(2|B|) sum_{i in B} |error_i|^2``, the mean over batch k's points (the
            full cost is the mean over all N: an unbiased estimate), with heavy-ball
            momentum ``v <- momentum v + g_B``, ``y <- y - lr v`` (``momentum`` in [0, 1),
            default 0). ``batch_size`` (required): points per batch, at most N unless
            ``replacement``. ``replacement=False`` (default): epochs, each visiting every
            point once in the order of a pseudo-random permutation of [0, N) (the last
            batch of an epoch is smaller when batch_size does not divide N);
            ``replacement=True``: each batch drawn uniformly with replacement. The batches
            are a function of ``seed`` (an integer >= 0, default 0) and the step alone,
            the same on one process, a Dask cluster and a GPU, and each step runs on the
            batch's rows gathered here (``dataset.rows``), so the iterates are the same
            bits on all three; ``batch_size = N`` without replacement gives gd's iterates
            and records bit for bit. Records are full passes at the record times;
            ``cost_tol`` and ``grad_tol`` are checked there; ``max_evals`` counts batch
            passes and record passes; ``callback(t, cost)`` gets the batch's cost.
        kink_options: "kinks" only (ValueError for another method): a
            :class:`truncflow.engine.kinks.KinkOptions` (ValueError for anything else), the
            choices of the kink-exact integrator for this run. Default None: those of the
            innermost ``with truncflow.engine.kinks.using(KinkOptions(...)):`` around the
            call (scoped to its thread or task), else ``KinkOptions()``'s defaults.

    Where the passes over the points run follows the dataset: here, on a GPU
    (``dataset.to("cuda")``: the points stay on the device for the whole run, each
    evaluation sends the parameters and gets the sums back) or on a Dask cluster
    (:func:`truncflow.distribute`).

    SIGINT (Ctrl-C) and SIGTERM during the run stop it cleanly, between two gradient
    evaluations, with status "interrupted" (the message names the signal), keeping
    every record and the last accepted state. A signal while Numba compiles (the
    first run with an empty cache), or before the first record is complete, raises
    :class:`truncflow.engine.control.Interrupted` (a ``KeyboardInterrupt``): there is
    nothing to return yet.

    Returns:
        :class:`Result`; ``result.status`` says what stopped the run. A run that diverges,
        fails or is interrupted returns what it recorded so far, with the final state.
    """
    plan = _plan(params, dataset, t_end, kind=kind, wrt=wrt, method=method, train=train,
                 frozen_layers=frozen_layers, rtol=rtol, atol=atol, lr=lr, first_step=first_step,
                 max_step=max_step, record_times=record_times, n_records=n_records, cost_tol=cost_tol,
                 grad_tol=grad_tol, max_evals=max_evals, max_time=max_time, callback=callback, config=config,
                 record_truncation_times=record_truncation_times, checkpoint=checkpoint,
                 checkpoint_every=checkpoint_every, resume=resume, keep_checkpoint=keep_checkpoint,
                 precision=precision, batch_size=batch_size, replacement=replacement, seed=seed, momentum=momentum,
                 kink_options=kink_options)
    with SignalGuard() as guard:
        return _execute(plan, guard)


def _plan(params, dataset, t_end, *, kind, wrt, method, train, frozen_layers, rtol, atol, lr, first_step,
          max_step, record_times, n_records, cost_tol, grad_tol, max_evals, max_time, callback, config,
          record_truncation_times, checkpoint, checkpoint_every, resume, keep_checkpoint,
          precision, batch_size=None, replacement=False, seed=None, momentum=0.0,
          kink_options=None) -> SimpleNamespace:
    """Check every option of :func:`simulate` and build what a run needs (no pass over the points yet)."""
    choice(method, "method", METHODS)
    t_end = positive(t_end, "t_end")
    try:
        frozen_layers = tuple(frozen_layers)
    except TypeError:
        raise ValueError(f"frozen_layers must be a sequence of layer numbers, got {frozen_layers!r}") from None
    problem = FlowProblem(params, dataset, kind=kind, wrt=wrt, train=train, frozen_layers=frozen_layers,
                          precision=precision)
    distributed = not problem.dataset.capabilities.points_here      # on a Dask cluster or a GPU
    where = type(problem.dataset).__name__
    if distributed and not spec(method).runs_on(where):
        raise ValueError(placement_refusal(method, where))
    if distributed and checkpoint is not None:
        raise ValueError(f"checkpoint does not apply to a {where} (its per-point state stays where its points "
                         f"are): run without checkpoint")
    if precision != "float64" and not spec(method).float32:
        raise ValueError(precision_refusal(method, precision))
    threads.apply()                     # this thread runs the kernels on truncflow's thread count
    # every value given is checked, whichever method uses it
    rtol, atol = positive(rtol, "rtol"), positive(atol, "atol")
    first_step = positive(first_step, "first_step", allow_none=True)
    max_step = positive(max_step, "max_step", allow_none=True)
    lr = positive(lr, "lr", allow_none=True)
    if first_step is not None and first_step > t_end:
        raise ValueError(f"first_step={first_step} exceeds t_end={t_end}")
    if method in ("gd", "sgd") and lr is None:
        raise ValueError(f"method={method!r} needs a learning rate: pass lr > 0")
    sgd = None
    if method == "sgd":
        sgd = check_sgd_options(dataset.n_points, batch_size, replacement, seed, momentum)
    else:
        defaults = (("batch_size", batch_size, None), ("replacement", replacement, False), ("seed", seed, None),
                    ("momentum", momentum, 0.0))
        given = [name for name, value, default in defaults if value is not default and value != default]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to method='sgd' only, "
                             f"not {method!r}")
    _check_kink_options(kink_options, method)
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
    for name, flag in (("resume", resume), ("keep_checkpoint", keep_checkpoint)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    if checkpoint is not None and not spec(method).checkpoints:
        raise ValueError(checkpoint_refusal(method))
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (the checkpoint to continue)")
    checkpoint_every = _non_negative(checkpoint_every, "checkpoint_every")
    _check_finishable(method, t_end, max_step, lr, max_evals, max_time)
    if spec(method).adaptive:
        rtol = _clamped_rtol(rtol)
    schedule = _record_schedule(t_end, record_times, n_records)

    flow_options = dict(t_end=t_end, kind=kind, wrt=wrt, method=method, train=train,
                        frozen_layers=list(problem.frozen_layers), rtol=rtol, atol=atol, lr=lr,
                        first_step=first_step, max_step=max_step, cost_tol=cost_tol, grad_tol=grad_tol,
                        max_evals=max_evals, max_time=max_time, record_truncation_times=record_truncation_times,
                        n_points=dataset.n_points, n_clusters=dataset.n_clusters, width=dataset.width,
                        n_layers=params.n_layers, precision=precision,
                        points_dtype=str(problem.dataset.dtype if distributed else problem.dataset.points.dtype))
    if sgd is not None:
        flow_options.update(sgd)
    if method == "kinks":     # its choices, in the result and in a checkpoint's fingerprint
        from .kinks.options import current as current_kink_options  # noqa: PLC0415 (kinks is imported when used)
        kink_options = kink_options or current_kink_options()
        flow_options["kink_options"] = dataclasses.asdict(kink_options)
    run_config = {**(config or {}), **flow_options}
    check_storable(run_config)
    rules = dict(cost_tol=cost_tol, grad_tol=grad_tol, max_evals=max_evals, max_time=max_time)
    recorder = Recorder(problem.dataset, kind, run_config)
    opts = dict(rtol=rtol, atol=atol, first_step=first_step, max_step=max_step, lr=lr)
    if sgd is not None:
        opts["sgd"] = sgd
    return SimpleNamespace(problem=problem, method=method, t_end=t_end, schedule=schedule, recorder=recorder,
                           opts=opts, rules=rules, callback=callback, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, resume=resume, keep_checkpoint=keep_checkpoint,
                           flow_options=flow_options, kink_options=kink_options,
                           record_truncation_times=record_truncation_times)


def _execute(plan, guard) -> Result:
    """Run a planned flow under a signal guard."""
    problem, method, t_end, schedule, recorder = plan.problem, plan.method, plan.t_end, plan.schedule, plan.recorder
    opts, rules, callback = plan.opts, plan.rules, plan.callback
    if method == "events":
        return run_events(problem, t_end, schedule, recorder, rules, callback, plan.record_truncation_times, guard)
    saver = restored = None
    if plan.checkpoint is not None:
        prints = fingerprint(problem, plan.flow_options, schedule)
        if plan.resume:
            restored = load_checkpoint(plan.checkpoint, prints, method, n_state=problem.pack(problem.params).size,
                                       t_end=t_end, schedule=schedule)
        saver = Checkpointer(plan.checkpoint, plan.checkpoint_every, prints, method)
    if method == "kinks":
        from .kinks import run_kinks
        return run_kinks(problem, t_end, schedule, recorder,
                         dict(rtol=opts["rtol"], atol=opts["atol"], first_step=opts["first_step"],
                              max_step=opts["max_step"]), rules, callback, guard, options=plan.kink_options,
                         saver=saver, restored=restored, keep_checkpoint=plan.keep_checkpoint)
    loop = {"rk45": _Rk45Loop, "sgd": _SgdLoop}.get(method, _GdLoop)(problem, t_end, schedule, recorder, opts,
                                                                      rules, callback, guard, saver)
    loop.keep_checkpoint = plan.keep_checkpoint
    return loop.run(restored)


#: Adaptive methods (rtol, atol, first_step, max_step apply), from the registry.
ADAPTIVE_METHODS = supporting("adaptive")
#: Steps a run may imply (t_end / lr, t_end / max_step) and flow time it may ask for, unless
#: max_evals or max_time bounds it: beyond them a run does not finish.
MAX_IMPLIED_STEPS = 10**9
MAX_T_END = 1e12
#: The smallest rtol SciPy's steppers honour (they raise a smaller one to it, warning at every step).
MIN_RTOL = 100 * np.finfo(np.float64).eps


def _check_finishable(method, t_end, max_step, lr, max_evals, max_time) -> None:
    """Refuse a run that cannot reach t_end (too many steps, an astronomical t_end) unless a
    budget (max_evals, max_time) bounds it."""
    if max_evals is not None or max_time is not None:
        return
    bounded = "; give max_evals or max_time to run it for a bounded time anyway"
    step, name = (lr, "lr") if method in ("gd", "sgd") else (max_step, "max_step")
    if step is not None and t_end / step > MAX_IMPLIED_STEPS:
        raise ValueError(f"t_end={t_end:g} with {name}={step:g} implies {t_end / step:.3g} steps, more than "
                         f"{MAX_IMPLIED_STEPS:.0e}: the run would not finish (raise {name} or lower t_end{bounded})")
    if t_end > MAX_T_END:
        raise ValueError(f"t_end={t_end:g} is beyond {MAX_T_END:g}: the flow cannot be stepped that far in a "
                         f"run that finishes (lower t_end{bounded})")


def _clamped_rtol(rtol: float) -> float:
    """rtol, raised to MIN_RTOL with one warning where it is below what the stepper can honour."""
    if rtol >= MIN_RTOL:
        return rtol
    warnings.warn(f"rtol={rtol:g} is below {MIN_RTOL:.3g} (100 x machine epsilon), the smallest relative "
                  f"tolerance the stepper can honour: using rtol={MIN_RTOL:.3g}", UserWarning, stacklevel=4)
    return MIN_RTOL


def _check_kink_options(kink_options, method) -> None:
    """kink_options: None, or a KinkOptions with method="kinks"."""
    if kink_options is None:
        return
    if method != "kinks":
        raise ValueError(f"kink_options applies to method='kinks' only, not {method!r}")
    from .kinks.options import KinkOptions
    if not isinstance(kink_options, KinkOptions):
        raise ValueError(f"kink_options must be a truncflow.engine.kinks.KinkOptions (or None), "
                         f"got {type(kink_options).__name__}")


def _non_negative(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return v


class _Rk45Loop(Loop):
    """SciPy's Dormand-Prince stepper; records at scheduled times from its dense output."""

    solver = None

    def _start(self):
        o = self.opts
        y0 = self.problem.pack(self.problem.params)
        if self.problem.serial:         # SciPy's rules, each step one compiled call (engine/stepper.py)
            self.solver = CompiledRK45(self.fun, 0.0, y0, self.t_end, rtol=o["rtol"], atol=o["atol"],
                                       first_step=o["first_step"], max_step=o["max_step"] or np.inf)
            return
        self.solver = RK45(self.fun, 0.0, y0, self.t_end, rtol=o["rtol"],
                           atol=o["atol"], first_step=o["first_step"], max_step=o["max_step"] or np.inf)
        self._call_directly()

    def _call_directly(self):
        # The stepper calls our evaluator itself, not through SciPy's wrapper (which counts
        # calls, as problem.n_evaluations does, and converts to float64, which the
        # evaluator returns): two Python calls less per evaluation.
        self.solver.fun = self.fun

    def _state(self):
        s = self.solver
        scalars = {"t": float(s.t), "h_abs": float(s.h_abs), "status": s.status}
        return scalars, {"y": np.array(s.y), "f": np.array(s.f)}

    def _restore(self, scalars, arrays):
        o = self.opts
        t, y, f = float(scalars["t"]), arrays["y"], arrays["f"]
        if self.problem.serial:
            self.solver = CompiledRK45(self.fun, t, y, self.t_end, rtol=o["rtol"], atol=o["atol"],
                                       max_step=o["max_step"] or np.inf,
                                       state=(t, y, f, float(scalars["h_abs"]), scalars["status"]))
            return
        replay = lambda t_, y_: f              # RK45() evaluates f(t0, y0): give it the saved one
        self.solver = RK45(replay, t, y, self.t_end, rtol=o["rtol"], atol=o["atol"],
                           first_step=min(float(scalars["h_abs"]), self.t_end - t) if t < self.t_end else None,
                           max_step=o["max_step"] or np.inf)
        self.solver._fun = self.fun
        self.solver.fun_single = self.fun
        self.solver.h_abs = float(scalars["h_abs"])
        self.solver.f = np.array(f)
        self.solver.status = scalars["status"]
        self._call_directly()

    def _last_accepted(self):
        return (None, None) if self.solver is None else (self.solver.t, self.solver.y)

    def _advance(self):
        solver, fun, problem = self.solver, self.fun, self.problem
        evals_before = problem.n_evaluations
        message = solver.step()
        attempts = (problem.n_evaluations - evals_before) // _RK45_EVALS_PER_ATTEMPT
        if solver.status == "failed":
            if fun.failure is not None:
                return Status.DIVERGED, f"at t = {solver.t:.6g} the flow reached a state it cannot evaluate ({fun.failure[1]})"
            return Status.FAILED, f"at t = {solver.t:.6g}: {message}"
        self.counters["accepted"] += 1
        self.counters["rejected"] += max(attempts - 1, 0)
        fun.failure = None            # a rejected trial state is no verdict on the flow
        cost, gn = fun.at(solver.y)   # the stepper's last evaluation (FSAL): no extra pass
        if not (math.isfinite(cost) and math.isfinite(gn)):
            return Status.DIVERGED, f"at t = {solver.t:.6g}: {fun.failure[1] if fun.failure else 'non-finite cost'}"
        if self.pending and self.pending[0] <= solver.t:
            dense = solver.dense_output()
            while self.pending and self.pending[0] <= solver.t:
                tr = self.pending.pop(0)
                self.record(tr, solver.y if tr == solver.t else dense(tr))
        if self.callback is not None:
            self.callback(solver.t, cost)
        if solver.status == "finished":
            return Status.T_END, ""
        return self.stop_reason(cost, gn), ""


class _GdLoop(Loop):
    """Gradient descent: Euler steps of length lr; records the first iterate at or after each time.

    When the points fit one chunk the steps run in compiled code (``kernels.descent``)
    between the moments Python is needed (a record, a stopping rule, a signal check),
    with the arithmetic of the Python step below, so the iterates are the same bits.
    A ``callback`` is called after every step; ``max_time`` and signals are checked after
    each compiled call, which lasts at most about ``_BUDGET_SECONDS``.
    """

    y = None
    k = 0
    budget = 1             # steps per compiled call, adapted to take about _BUDGET_SECONDS

    def _start(self):
        self.y = self.problem.pack(self.problem.params)
        self.k = 0

    def _state(self):
        return {"k": self.k}, {"y": np.array(self.y)}

    def _restore(self, scalars, arrays):
        self.k, self.y = int(scalars["k"]), np.array(arrays["y"])

    def _last_accepted(self):
        return (None, None) if self.y is None else (self.k * self.opts["lr"], self.y)

    @property
    def n_steps(self):
        return max(1, math.ceil(self.t_end / self.opts["lr"] * (1 - 1e-12)))

    def _advance(self):
        if self.problem.serial:
            return self._advance_compiled()
        return self._advance_python()

    def _advance_python(self):
        lr, fun = self.opts["lr"], self.fun
        fun.at(self.y)
        y_new = self.y + lr * fun.rhs
        cost, gn = fun.at(y_new)
        t = (self.k + 1) * lr
        if not (math.isfinite(cost) and math.isfinite(gn)):
            return Status.DIVERGED, f"after step {self.k + 1} (t = {t:.6g}): {fun.failure[1] if fun.failure else 'non-finite cost'}"
        return self._after_step(self.k + 1, y_new, cost, gn)

    def compiled_arguments(self):
        """The scalar arguments of ``descent.descend`` after (y, rhs, cost, gn, k)."""
        rules = self.rules
        return (self.opts["lr"], self.n_steps, self.pending[0] if self.pending else math.inf,
                -math.inf if rules["cost_tol"] is None else rules["cost_tol"],
                -math.inf if rules["grad_tol"] is None else rules["grad_tol"],
                2**62 if rules["max_evals"] is None else rules["max_evals"], self.problem.n_evaluations)

    def _advance_compiled(self):
        fun = self.fun
        fun.at(self.y)
        budget = 1 if self.callback is not None else self.budget
        started = time.perf_counter()
        code, k, y, rhs, cost, gn, n_evals = descent.descend(
            self.y, fun.rhs, fun.cost, fun.grad_norm, self.k, *self.compiled_arguments(), budget,
            *self.problem.serial_args)
        self.budget = _next_budget(budget, time.perf_counter() - started)
        return self.take_compiled(code, k, y, rhs, cost, gn, n_evals)

    def take_compiled(self, code, k, y, rhs, cost, gn, n_evals):
        """Continue after compiled steps (``descent.descend``'s results): the bookkeeping of
        the last step, or the Python step where the compiled one could not go on."""
        self.problem.n_evaluations = int(n_evals)
        fun = self.fun
        fun.y, fun.cost, fun.grad_norm, fun.rhs, fun.failure = y, float(cost), float(gn), rhs, None
        if code == descent.CODE_PYTHON:
            self.k, self.y = int(k), y
            self.counters["accepted"] = self.k
            return self._advance_python()
        return self._after_step(int(k), y, float(cost), float(gn))

    def _after_step(self, k, y_new, cost, gn):
        lr = self.opts["lr"]
        t = k * lr
        self.k = k
        self.y = y_new
        self.counters["accepted"] = self.k
        if self.callback is not None:
            self.callback(t, cost)
        due = False
        while self.pending and self.pending[0] <= t * (1 + 1e-12):
            self.pending.pop(0)
            due = True
        status = Status.T_END if self.k >= self.n_steps else self.stop_reason(cost, gn)
        if due or status == Status.T_END:
            self.record(t, self.y)     # any other stop is recorded by the loop, after its checkpoint
        return status, ""


class _SgdLoop(SgdSteps, Loop):
    """Stochastic gradient descent: the steps of :class:`truncflow.engine.sgd.SgdSteps`, the
    records, stopping rules, signals and checkpoints of :class:`truncflow.engine.loop.Loop`."""


#: Wall-clock seconds a compiled call of gradient-descent steps aims at: signals,
#: max_time and checkpoints are looked at between calls.
_BUDGET_SECONDS = 0.01


def _next_budget(budget, seconds):
    """Steps for the next compiled call: doubled while a call takes under half the aim, halved above twice it."""
    if seconds < _BUDGET_SECONDS / 2:
        return min(budget * 2, 1 << 20)
    if seconds > 2 * _BUDGET_SECONDS:
        return max(budget // 2, 1)
    return budget
