"""Many independent flows at once: :func:`simulate_ensemble` (issue 12).

Each member is the flow :func:`truncflow.simulate` would run from its own initial
parameters on its own dataset (or one shared by all), with the same options, and
its :class:`Result` equals that single run's bit for bit. How they run:

- ``method="gd"`` on problems whose points fit one chunk: every member's steps run
  in compiled code, in parallel over the members (``kernels.descent.descend_many``),
  and each member records and stops by its own rules in between;
- any other method: one member after the other, each parallel over its points; when
  the points fit one chunk (no parallelism over points to be had) and the first
  member shows that the rest would take more than ``PROCESSES_AFTER`` seconds, the
  rest are shared out over ``workers`` processes (one kernel thread each).

Bit-identity holds because every path runs the same per-member code: the kernels'
results do not depend on the number of threads (``kernels.config``).
"""
from __future__ import annotations

import inspect
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np

from .. import threads
from .._validate import integer
from ..backends import capabilities_of
from ..data import by_identity
from ..kernels import descent
from ..observe import observe_members
from ..params import Params
from .control import SignalGuard
from .integrate import _GdLoop, _next_budget, _plan, simulate
from .methods import Status, spec
from .record import Recorder, Result
from .rhs import FlowProblem

__all__ = ["simulate_ensemble"]

#: Seconds the members after the first would take one after the other (measured on the
#: first) above which they go to worker processes: starting a process that imports
#: truncflow and loads its compiled kernels takes seconds.
PROCESSES_AFTER = 20.0

#: Options of :func:`simulate` that an ensemble refuses (they name one run's files or progress).
_SINGLE_RUN_OPTIONS = ("checkpoint", "resume", "callback")


def simulate_ensemble(params, dataset, t_end: float, *, workers: int | None = None, **options) -> list[Result]:
    """Run B independent gradient flows together; the same as B calls of :func:`simulate`.

    Args:
        params: a sequence of B :class:`Params` (the members' initial parameters), all of
            the same shape (L, M, and P for the output cost).
        dataset: one :class:`Dataset` for every member, or a sequence of B datasets of the
            same shape (N points of width M, Q clusters, targets of one shape): different
            data or different targets per member.
        t_end: flow time to reach.
        workers: the most processes for members that are not run in compiled gradient
            descent (default: the kernels' thread count, :func:`truncflow.get_threads`; 1
            keeps them in this process). Used only when the members' points fit one chunk
            and the rest of the members would take more than ``PROCESSES_AFTER`` seconds.
        **options: any keyword option of :func:`simulate` but ``checkpoint``, ``resume``
            and ``callback``; ``config`` is stored with every member, which also gets
            ``config["member"] = b``.
    Returns:
        B :class:`Result` in member order; ``results[b]`` equals
        ``simulate(params[b], dataset[b], t_end, **options, config={..., "member": b})``.
    Raises:
        ValueError: bad options or shapes (naming the member), or a member's initial state
            that cannot be flowed.
    """
    for name in _SINGLE_RUN_OPTIONS:
        if options.get(name) not in (None, False):
            raise ValueError(f"simulate_ensemble does not take {name}= (it applies to one run): "
                             "run that member with simulate")
        options.pop(name, None)
    members, datasets = _members(params, dataset)
    config = options.pop("config", None) or {}
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    member_options = [dict(options, config={**config, "member": b}) for b in range(len(members))]
    workers = threads.get_threads() if workers is None else integer(workers, "workers", low=1)
    if len(members) == 1:               # one flow: simulate, which checks it as it plans it
        _simulate_defaults(member_options[0])
        try:
            return [simulate(members[0], datasets[0], t_end, **member_options[0])]
        except ValueError as exc:
            raise ValueError(f"member 0: {exc}") from None
    plans = []
    for b, (p, d) in enumerate(zip(members, datasets)):
        try:
            if plans and spec(plans[0].method).ensembles in ("compiled", "shared plan"):
                plans.append(_plan_like(plans[0], p, d, member_options[b]["config"]))
            else:
                plans.append(_plan(p, d, t_end, **_simulate_defaults(member_options[b])))
        except ValueError as exc:
            raise ValueError(f"member {b}: {exc}") from None
    threads.apply()
    small = all(plan.problem.serial for plan in plans)
    if spec(plans[0].method).ensembles == "compiled" and small and len(plans) > 1:
        return _descend_together(plans)
    jobs = list(zip(members, datasets, member_options))
    started = time.perf_counter()
    results = [simulate(jobs[0][0], jobs[0][1], t_end, **jobs[0][2])]
    rest = (time.perf_counter() - started) * (len(jobs) - 1)
    if small and min(workers, len(jobs) - 1) > 1 and rest > PROCESSES_AFTER:
        return results + _in_processes(jobs[1:], t_end, min(workers, len(jobs) - 1))
    return results + [simulate(p, d, t_end, **o) for p, d, o in jobs[1:]]


def _plan_like(first, params, dataset, config):
    """The plan of another member with the options of ``first`` (checked there once): only
    its problem (which checks the parameters and data) and its recorder are its own."""
    o = first.flow_options
    if dataset is first.problem.dataset:
        problem = first.problem.with_params(params)
    else:
        problem = FlowProblem(params, dataset, kind=o["kind"], wrt=o["wrt"], train=o["train"],
                              frozen_layers=tuple(o["frozen_layers"]), precision=o["precision"])
    recorder = Recorder(problem.dataset, o["kind"], {**config, **o}, like=first.recorder)
    return SimpleNamespace(**{**vars(first), "problem": problem, "recorder": recorder})


def _simulate_defaults(options: dict) -> dict:
    """Every keyword of :func:`simulate`, with its default where ``options`` lacks it (unknown ones refused)."""
    names = _SIMULATE_KEYWORDS
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for simulate_ensemble; "
                         f"known: {', '.join(sorted(names))}, workers")
    return {**names, **options}


_SIMULATE_KEYWORDS = {k: v.default for k, v in inspect.signature(simulate).parameters.items()
                      if v.kind is inspect.Parameter.KEYWORD_ONLY}


def _members(params, dataset):
    if isinstance(params, Params):
        raise ValueError("params must be a sequence of Params, one per member (for one flow use simulate)")
    try:
        members = list(params)
    except TypeError:
        raise ValueError(f"params must be a sequence of Params, got {type(params).__name__}") from None
    if not members:
        raise ValueError("params is empty: an ensemble needs at least one member")
    for b, p in enumerate(members):
        if not isinstance(p, Params):
            raise ValueError(f"params[{b}] must be a truncflow.Params, got {type(p).__name__}")
        if (p.n_layers, p.width, p.out_dim) != (members[0].n_layers, members[0].width, members[0].out_dim):
            raise ValueError(f"params[{b}] is {p!r} but params[0] is {members[0]!r}: every member needs the same "
                             "L, M (and output dimension)")
    caps = capabilities_of(dataset)
    if caps is not None and not caps.ensembles:
        raise ValueError(f"simulate_ensemble runs its members on the points here: for a {type(dataset).__name__} "
                         f"run each member with simulate")
    if caps is not None:
        datasets = [dataset] * len(members)
    else:
        try:
            datasets = list(dataset)
        except TypeError:
            raise ValueError(f"dataset must be a Dataset or a sequence of them, got {type(dataset).__name__}") from None
        if len(datasets) != len(members):
            raise ValueError(f"{len(datasets)} datasets for {len(members)} members: give one dataset, or one "
                             "per member")
        first = datasets[0]
        for b, d in enumerate(datasets):
            if not getattr(capabilities_of(d), "ensembles", False):
                raise ValueError(f"dataset[{b}] must be a truncflow.Dataset, got {type(d).__name__}")
            if (d.points.shape, d.targets.shape, d.points.dtype) != (first.points.shape, first.targets.shape,
                                                                      first.points.dtype):
                raise ValueError(f"dataset[{b}] has points {d.points.shape} {d.points.dtype} and targets "
                                 f"{d.targets.shape}, dataset[0] {first.points.shape} {first.points.dtype} and "
                                 f"{first.targets.shape}: the members' datasets must have one shape")
    return members, datasets


def _descend_together(plans) -> list[Result]:
    """Gradient descent of every member in compiled code, parallel over members."""
    B = len(plans)
    with SignalGuard() as guard:
        loops = [_GdLoop(p.problem, p.t_end, p.schedule, p.recorder, p.opts, p.rules, None, guard, None)
                 for p in plans]
        outcome = [None] * B
        _observe_ahead(loops, range(B), [loop.problem.pack(loop.problem.params) for loop in loops])
        for b, loop in enumerate(loops):
            try:
                status = loop.begin()
            except ValueError as exc:
                raise ValueError(f"member {b}: {exc}") from None
            if status[0] is not None:
                outcome[b] = status
        # Stacked arguments: datasets by identity (a shared dataset is stored once).
        problems = [loop.problem for loop in loops]
        data_of, distinct = by_identity([pr.dataset for pr in problems])
        stacked = [next(pr for pr in problems if pr.dataset is d) for d in distinct]    # a problem per dataset
        # serial_args: (mode, L, M, P, frames, max_condition, Mp, points, labels, targets, mask,
        # output_cost, chunk); frames per member, the data per dataset, the rest shared
        mode, L, M, P, _, max_condition, Mp, _, _, _, mask, output_cost, chunk = problems[0].serial_args
        points, labels, targets = (np.stack([np.ascontiguousarray(pr.serial_args[i]) for pr in stacked])
                                   for i in (7, 8, 9))
        frames = np.stack([pr.serial_args[4] for pr in problems])
        S = problems[0].size
        ys, rhss = np.zeros((B, S)), np.zeros((B, S))
        costs, norms = np.zeros(B), np.zeros(B)
        ks, n_evals, codes = (np.zeros(B, dtype=np.int64) for _ in range(3))
        next_records = np.zeros(B)
        budget = 64             # then adapted (rounds of bookkeeping cost ~20 us per member)
        while True:
            active = [b for b in range(B) if outcome[b] is None]
            if not active:
                break
            if guard.received is not None:
                for b in active:
                    outcome[b] = (Status.INTERRUPTED.value, f"signal {guard.received}")
                break
            lr, n_steps, _, cost_tol, grad_tol, max_evals, _ = loops[active[0]].compiled_arguments()
            for b in active:
                loop = loops[b]
                ys[b], rhss[b], costs[b], norms[b] = loop.y, loop.fun.rhs, loop.fun.cost, loop.fun.grad_norm
                ks[b], n_evals[b] = loop.k, loop.problem.n_evaluations
                next_records[b] = loop.pending[0] if loop.pending else math.inf
            started = time.perf_counter()
            descent.descend_many(np.array(active, dtype=np.int64), ys, rhss, costs, norms, ks, lr, n_steps,
                                 next_records, cost_tol, grad_tol, max_evals, n_evals, budget, mode, L, M, P,
                                 frames, max_condition, Mp, data_of, points, labels, targets, mask, output_cost,
                                 chunk, codes)
            # calls aim at ten times a single run's (bookkeeping between calls is per member)
            budget = _next_budget(budget, (time.perf_counter() - started) / 10)
            recording = [b for b in active if codes[b] in _RECORDED_AT_NEW_STATE]
            if recording:
                _observe_ahead(loops, recording, ys[recording])
            for b in active:
                loop = loops[b]
                result = (codes[b], ks[b], ys[b].copy(), rhss[b].copy(), costs[b], norms[b], n_evals[b])
                status = loop.guarded(lambda: loop.take_compiled(*result))
                if status[0] is not None:
                    outcome[b] = status
        return [loop.end(*outcome[b]) for b, loop in enumerate(loops)]


#: Codes of ``descent.descend_many`` after which the member records its new state: a
#: record due or the last step (``_GdLoop._after_step``), or a stopping rule met (recorded
#: at the end of the run, ``_Loop.end``).
_RECORDED_AT_NEW_STATE = (descent.CODE_RECORD, descent.CODE_END, descent.CODE_RULE)


def _observe_ahead(loops, members, states):
    """Observe the states (one per member) in one compiled call parallel over the members, for
    their next records (``_Loop.observed``). A state that cannot be unpacked or observed is
    left to the member's own record, which says why."""
    chosen, params = [], []
    for b, y in zip(members, states):
        try:
            params.append(loops[b].problem.unpack(y))
        except ValueError:
            continue
        chosen.append((b, np.array(y), params[-1]))
    if not chosen:
        return
    recorders = [loops[b].recorder for b, _, _ in chosen]
    observations = observe_members(params, [r.dataset for r in recorders], recorders[0].kind,
                                   [r.shift for r in recorders])
    for (b, y, p), obs in zip(chosen, observations):
        loops[b].observed = None if obs is None else (y, p, obs)


def _run_member(args):
    """One member in a worker process (one kernel thread: the processes share the cores)."""
    params, dataset, t_end, options = args
    threads.set_threads(1)
    return simulate(params, dataset, t_end, **options)


def _in_processes(jobs, t_end, workers) -> list[Result]:
    context = multiprocessing.get_context("spawn")     # never fork a process whose kernel threads run
    jobs = [(p, d, t_end, o) for p, d, o in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_run_member, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
