"""The driver of ``method="kinks"``: one run of the stepper, step by step, with the parts.

After each accepted frozen-pattern step it asks the locator (``locate.py``) which points changed
pattern or may have dipped across a hyperplane, the Filippov projector (``filippov.py``) which
sliding coordinates leave, the bulk corrector (``bulk.py``) for the corrected step and its error,
the step controller (``controller.py``) what to do with it, and applies the outcome through the
frozen-pattern model's methods (``model.py``). The run itself is the loop every stepping method
shares (:class:`truncflow.engine.loop.Loop`: records, the final record, stopping rules, signals);
this module gives it the steps and reports counts in ``result.config["kinks"]``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..control import SignalGuard
from ..loop import Loop
from ..methods import Status
from .bulk import BulkCorrector
from .controller import StepController, Verdict
from .filippov import exit_time, exits, newton_projection, switch_decision
from .locate import Quadrature, candidates, crossing_paths, past_planes, polish_crossing
from .model import FrozenModel
from .options import KinkOptions, current as _current_options

__all__ = ["KinkIntegrator", "run_kinks"]


def run_kinks(problem, t_end, schedule, recorder, opts, rules, callback, guard=None, options=None, saver=None,
              restored=None, keep_checkpoint=False):
    """Integrate the flow locating activation-pattern changes (see the package docstring).

    ``opts``: rtol, atol, first_step, max_step (and optionally "kinks", a :class:`KinkOptions`);
    ``options``: a :class:`KinkOptions` (default: ``opts["kinks"]``, else those of the innermost
    :func:`~.options.using`, else the defaults). ``guard``: the :class:`SignalGuard` of
    :func:`simulate` (signals stop the run between evaluations); ``saver``, ``restored``,
    ``keep_checkpoint``: the run's checkpoints (``engine.checkpoint``), as for rk45."""
    loop = KinkIntegrator(problem, t_end, schedule, recorder, opts, rules, callback, guard, options, saver)
    loop.keep_checkpoint = keep_checkpoint
    return loop.run(restored)


class _Stats(dict):
    def __init__(self, stepper):
        super().__init__(stepper=stepper, events_located=0, sliding_entries=0, sliding_exits=0,
                         corrected_crossings=0, bulk_steps=0, event_steps=0, shortened_steps=0, redone_steps=0,
                         projections=0, dip_candidates=0, unresolved_crossings=0, late_crossings=0, max_crossings_per_step=0,
                         located_stretches=0)


class KinkIntegrator(Loop):
    """The steps of ``method="kinks"`` on the shared loop (:class:`truncflow.engine.loop.Loop`).

    The loop's evaluator (``self.fun``) evaluates the true flow for the records; the stepper
    integrates the frozen-pattern flow (:meth:`frozen_fun`). A checkpoint (``_state``) holds the
    stepper's state (t, y, f, step size, step limit), the pattern and the sliding set, the step
    controller's state, the counts and the sliding intervals; the frozen-pattern evaluations the
    model caches are pruned to that of the current state after every accepted step
    (:meth:`FrozenModel.keep_only`), and a resumed run evaluates that one again without counting
    it, so its records are those of a run never stopped, bit for bit."""

    solver = None
    last = None             # the last accepted state (_Last), from the first step on

    def __init__(self, problem, t_end, schedule, recorder, opts, rules, callback, guard=None, options=None,
                 saver=None):
        if options is None:
            options = opts.get("kinks") or _current_options()
        if not isinstance(options, KinkOptions):
            raise TypeError(f"options must be a KinkOptions, got {type(options).__name__}")
        if guard is None:       # not entered: notes no signal, check() never raises
            guard = SignalGuard()
        super().__init__(problem, t_end, schedule, recorder, opts, rules, callback, guard, saver)
        self.options = options
        self.rtol, self.atol = opts["rtol"], opts["atol"]
        self.control = StepController(options, self.rtol, opts["max_step"])
        self.Stepper = self.control.Stepper
        self.stats = _Stats(self.Stepper.__name__)
        self.quad = Quadrature(options.nodes)
        self.failure = None     # (time, reason) of the last frozen-flow state that could not be evaluated
        self.intervals = []     # [i, l, k, t_in, t_out]
        self._pieces = None

    @property
    def pieces(self):
        """The frozen-pattern model (:class:`FrozenModel`) of the run."""
        return self._pieces

    @pieces.setter
    def pieces(self, model):
        self._pieces = model
        self.bulk = BulkCorrector(model, self.quad, self.options)

    # --------------------------------------------------------------- plumbing
    def frozen_fun(self, t, y):
        """``fun(t, y)`` of the stepper: the velocity of the frozen-pattern flow."""
        try:
            ev = self.pieces.full(y)
        except ValueError as exc:
            self.failure = (t, str(exc))
            v = np.full_like(y, np.nan)
        else:
            if not (math.isfinite(ev.cost) and math.isfinite(ev.grad_norm)):
                self.failure = (t, f"non-finite cost {ev.cost} or gradient norm {ev.grad_norm}")
            v = ev.v
        self.guard.check()          # a signal stops the run here, between kernels (a failed
        return v                    # evaluation too: the stepper retries it with smaller steps)

    def record(self, t, y):
        """The loop's record, with the sliding counts of the moment in its counters."""
        self.counters["sliding"] = self._sliding_counts()
        super().record(t, y)

    def _sliding_counts(self):
        """(L, Q) int64: points of each cluster held on a hyperplane of each layer (sliding)."""
        L, Q = self.problem.params.n_layers, self.problem.dataset.n_clusters
        counts = np.zeros((L, Q), dtype=np.int64)
        pieces = self.pieces
        if pieces is not None and pieces.sliding:
            pairs = np.array(sorted({(c[0], c[1]) for c in pieces.sliding}), dtype=np.int64)
            _, labels, rows = pieces.points.data(pairs[:, 0])       # the labels, where the points are
            np.add.at(counts, (pairs[:, 1], labels[rows]), 1)
        return counts

    def start(self, t, y, h):
        if t >= self.t_end:
            return
        h = self.control.first_step(h, t, self.t_end)
        self.solver = self.Stepper(self.frozen_fun, t, y, self.t_end, rtol=self.rtol, atol=self.atol,
                                   first_step=h, max_step=self.opts["max_step"] or np.inf)
        self.solver.max_step = self.control.max_step()

    def records_upto(self, t_hi, y_of_t, inclusive=True):
        while self.pending and (self.pending[0] <= t_hi if inclusive else self.pending[0] < t_hi):
            tr = self.pending.pop(0)
            self.record(tr, y_of_t(tr))

    def _close_interval(self, i, l, k, t):
        for it in self.intervals:
            if it[0] == i and it[1] == l and it[2] == k and it[4] is None:
                it[4] = t
    # ----------------------------------------------------------------- the run
    def run(self, restored=None):
        """The loop's run (:meth:`Loop.run`) with a fresh frozen-pattern model (or, from a
        checkpoint, the model it holds)."""
        self.pieces = FrozenModel(self.problem, self.options)
        return super().run(restored)

    # ------------------------------------------------------------ checkpoints
    def _checkpoint_state(self):
        # counters["sliding"] is an array set afresh before every record: not a counter to keep
        sliding = self.counters.pop("sliding", None)
        try:
            return super()._checkpoint_state()
        finally:
            if sliding is not None:
                self.counters["sliding"] = sliding

    def _state(self):
        s, pc, last = self.solver, self.pieces, self.last
        if s is None:                   # resumed from the checkpoint of a finished run: nothing moved
            return {k: v for k, v in self._finished[0].items()}, dict(self._finished[1])
        scalars = {"t": float(s.t), "h_abs": float(s.h_abs), "status": s.status,
                   "max_step": None if s.max_step == np.inf else float(s.max_step),
                   "stepper": type(s).__name__, "last_t": float(last.t), "control": self.control.state(),
                   "sliding": [[int(v) for v in c] for c in pc.sliding],
                   "stats": {k: (v if isinstance(v, str) else int(v)) for k, v in self.stats.items()}}
        intervals = np.array([[float(v) if v is not None else np.nan for v in it] for it in self.intervals],
                             dtype=np.float64).reshape(-1, 5)
        arrays = {"y": np.array(s.y), "f": np.array(s.f), "last_y": np.array(last.y),
                  "patterns": pc.whole_pattern(), "intervals": intervals}
        return scalars, arrays

    def _restore(self, scalars, arrays):
        pc = self.pieces
        pc.restore(arrays["patterns"], scalars["sliding"])
        self.control.restore(scalars["control"])
        self.stats.update(scalars["stats"])
        self.intervals = [[int(i), int(l), int(k), float(a), None if np.isnan(b) else float(b)]
                          for i, l, k, a, b in arrays["intervals"]]
        self.last = _Last(float(scalars["last_t"]), np.array(arrays["last_y"]))
        t, y = float(scalars["t"]), np.array(arrays["y"])
        if scalars.get("finished") is not None or t >= self.t_end:     # nothing more to step
            keys = ("t", "h_abs", "status", "max_step", "stepper", "last_t", "control", "sliding", "stats")
            self._finished = ({k: scalars[k] for k in keys},
                              {k: np.array(arrays[k]) for k in ("y", "f", "last_y", "patterns", "intervals")})
            return
        replay = [np.array(arrays["f"])]    # the stepper evaluates f(t, y) first: give it the saved one

        def fun(t_, y_):
            return replay.pop() if replay else self.frozen_fun(t_, y_)
        h_abs = float(scalars["h_abs"])
        self.solver = self.Stepper(fun, t, y, self.t_end, rtol=self.rtol, atol=self.atol,
                                   first_step=min(h_abs, self.t_end - t), max_step=self.opts["max_step"] or np.inf)
        self.solver.h_abs = h_abs
        self.solver.status = scalars["status"]
        self.solver.max_step = np.inf if scalars["max_step"] is None else float(scalars["max_step"])
        pc.full(y, count=False)             # the evaluation the run never stopped has in its cache

    def _initial_measure(self, y0):
        """The stopping rules look at the frozen-pattern evaluation of y0 (the one the stepper starts from)."""
        ev = self.pieces.full(y0)
        return ev.cost, ev.grad_norm

    def _start(self):
        y0 = self.problem.pack(self.problem.params)
        self.last = _Last(0.0, y0)
        self.start(0.0, y0, self.opts["first_step"])
        self.pieces.keep_only(y0)

    def _last_accepted(self):
        return (None, None) if self.last is None else (self.last.t, self.last.y)

    def _advance(self):
        """Step until the state moves on (a redone step is no progress); returns (status, detail)."""
        while True:
            t0, ya = self.solver.t, self.solver.y
            nfev = self.solver.nfev
            message = self.solver.step()
            attempts = (self.solver.nfev - nfev) // self.solver.n_stages
            if self.solver.status == "failed":
                if self.failure is not None:
                    return Status.DIVERGED, (f"at t = {self.solver.t:.6g} the flow reached a state it "
                                        f"cannot evaluate ({self.failure[1]})")
                if self.control.bulk_allowed():     # try again locating every crossing for a while
                    self.stats["located_stretches"] += 1
                    self.control.locate_for_a_while()
                    self.start(self.solver.t, self.solver.y, None)
                    continue
                return Status.FAILED, f"at t = {self.solver.t:.6g}: {message}"
            self.counters["rejected"] += max(attempts - 1, 0)
            self.failure = None
            t1, y1 = self.solver.t, self.solver.y
            progressed = self.after_step(t0, ya, t1, y1)
            if progressed is not None:      # None: step redone shorter, no progress
                break
        t_new, y_new = progressed
        if not self.control.progressed(t_new, t0):
            return Status.FAILED, f"at t = {t_new:.6g}: {self.options.max_stuck} events in a row without progress"
        self.counters["accepted"] += 1
        self.last = _Last(t_new, y_new)
        ev = self.pieces.full(y_new)
        self.pieces.keep_only(y_new)        # the caches as a resumed run has them (see the class)
        if not (math.isfinite(ev.cost) and math.isfinite(ev.grad_norm)):
            return Status.DIVERGED, f"at t = {t_new:.6g}: non-finite cost"
        if self.callback is not None:
            self.callback(t_new, ev.cost)
        if t_new >= self.t_end:
            return Status.T_END, ""
        return self.stop_reason(ev.cost, ev.grad_norm), ""

    def end(self, status, detail):
        """The loop's end (the final record, the Result), with the counts and the sliding intervals."""
        result = super().end(status, detail)
        if self.last is not None:
            for it in self.intervals:
                if it[4] is None:
                    it[4] = self.last.t
        self.stats["evaluations"] = int(self.problem.n_evaluations)
        result.config["kinks"] = dict(self.stats)
        result.arrays["sliding_intervals"] = np.array([[float(v) for v in it] for it in self.intervals],
                                                      dtype=np.float64).reshape(-1, 5)
        return result

    # -------------------------------------------------------- after each step
    def after_step(self, t0, ya, t1, y1):
        """Handle the accepted frozen step [t0, t1]. Returns the new (t, y), or None if redone."""
        pc = self.pieces
        ev = pc.full(y1)
        mism = candidates(pc, ev, y1)
        cand = np.union1d(mism, self._dips(ya, t1 - t0, y1))
        leaving = exits(pc, ev, y1, self.options.slide_margin)
        if cand.size == 0 and not leaving:
            return self._plain(t1, y1)
        dense = self.solver.dense_output()
        h = t1 - t0
        self.stats["max_crossings_per_step"] = max(self.stats["max_crossings_per_step"], int(cand.size))
        nodes_t = t0 + (self.quad.x + 1) * (h / 2)
        nodes_y = [ya] + [dense(t) for t in nodes_t[1:-1]] + [y1]
        segs, final_pats = self._paths(cand, nodes_t, nodes_y, t0, t1)
        # sliding exits: earliest time s_j leaves [0, 1]
        if leaving:
            t_exit, j_exit, side_exit = exit_time(pc, leaving, self._y_of(dense), t0, t1)
        else:
            t_exit, j_exit, side_exit = np.inf, None, None
        n_cross = len(segs)
        t_first = min((s.tau for s in segs), default=np.inf)
        if j_exit is not None and t_exit <= t_first:
            return self._event_exit(dense, t_exit, j_exit, side_exit, t0, h)
        if n_cross:
            if self.control.bulk_allowed():
                done = self._bulk_step(cand, segs, final_pats, nodes_t, nodes_y, dense, ya, y1, t0, t1)
                if done is False:
                    return None
                if done is not None:
                    return done
            return self._event_cross(dense, segs, t0, h)
        if mism.size == 0:
            return self._plain(t1, y1)      # only possible dips, and none crossed
        # flagged points whose crossings could not be placed: resynchronise at t1
        return self._resync(cand, t1, y1, h)

    def _y_of(self, dense):
        """The state along the last step: its dense output, the stepper's own state at its end."""
        return lambda t: dense(t) if t < self.solver.t else self.solver.y

    def _paths(self, cand, nodes_t, nodes_y, t0, t1):
        """The crossings of points ``cand`` along the step (``locate.crossing_paths``)."""
        return crossing_paths(self.pieces, self.quad, cand, nodes_t, nodes_y, t0, t1, self.options.scan)

    def _plain(self, t1, y1):
        """Accept the step as it is (no pattern changed)."""
        if self.control.relax():
            self.solver.max_step = self.control.max_step()
        if self.pending and self.pending[0] <= t1:
            dense = self.solver.dense_output()
            self.records_upto(t1, lambda tr: y1 if tr == t1 else dense(tr))
        return t1, self._project(t1, y1)

    def _dips(self, ya, h, y1):
        """Points that may cross a hyperplane inside the step and come back (sliding points excepted).

        The end-point test (pattern against signs at y1) cannot see them. One pass over all
        points at y1 (pre-activations and their rates along the velocity, kept for the next
        step's start) and a cubic Hermite test per coordinate (``FrozenModel.dips``).
        """
        found = self.pieces.dips(ya, self.solver.K[0], y1, self.solver.f, h, self.options.dip_margin)
        self.stats["dip_candidates"] += int(found.size)
        return found

    # -------------------------------------------------------------- bulk mode
    def _bulk_step(self, cand, segs, final_pats, nodes_t, nodes_y, dense, ya, y1, t0, t1):
        """Correct the step in bulk when the step controller accepts it; None: locate its first crossing.

        The step's value becomes y1 + delta + J q1: delta the crossings' velocity jumps
        integrated from their crossing times along the corrected path
        (``BulkCorrector.corrected_path``), J q1 their feedback on the step to first order (q1 =
        int (t1 - s) jumps ds; J q1 a difference of the frozen flow, one evaluation); its error
        estimate is ``BulkCorrector.error``. Crossings of the sliding kind (their own jump turns
        their pre-activation back) are located, never corrected: the step is then corrected up to
        the first one. ``StepController.bulk_verdict`` decides. Returns the new (t, y), None
        (locate the first crossing) or False (redone: no progress).
        """
        h = t1 - t0
        path = self.bulk.corrected_path(cand, segs, final_pats, nodes_t, nodes_y, y1, t0, t1)
        if path is None:
            return None
        segs, final_pats, cand, nodes_c, delta, q1, jq1, shift, n_late = path
        self.stats["late_crossings"] += n_late
        err = self.bulk.error(ya, y1, h, self.solver.K[0], self.solver.f, q1, jq1, shift, self.rtol, self.atol)
        slide = self.bulk.sliding_kind(segs, y1)
        t_slide = min((sg.tau for sg, f in zip(segs, slide) if f), default=np.inf)
        verdict, h_next = self.control.bulk_verdict(err, len(segs), t_slide, t0, h, self.solver.h_abs)
        if verdict is Verdict.ACCEPT:
            return self._bulk_accept(segs, final_pats, cand, nodes_t, nodes_c, dense, t0, t1, y1,
                                     delta + jq1, h_next, jq1)
        if verdict is Verdict.LOCATE:
            return None
        if verdict is Verdict.REDO:         # the stepper restarts at t0
            self.stats["redone_steps"] += 1
            self.start(t0, ya, h_next)
            return False
        self.stats["shortened_steps"] += 1  # correct up to the first crossing of the sliding kind
        return self._bulk_partial(segs, cand, nodes_t, nodes_c, dense, t0, t1, t_slide, y1)

    def _bulk_partial(self, segs, cand, nodes_t, nodes_y, dense, t0, t1, t_u, y1):
        """Bulk-correct the crossings before t_u < t1 and continue from t_u (the rest of the step is dropped).

        The feedback term J q1 of [t0, t_u] uses the Jacobian at y1 (one evaluation)."""
        pc, bulk = self.pieces, self.bulk
        segs_u = [sg for sg in segs if sg.tau < t_u]
        y_u = dense(t_u)
        if segs_u:
            d_u, m_u = bulk.bulk_delta(segs_u, nodes_t, nodes_y, t0, t1, t_u, moments=True)
            jq = bulk.frozen_difference(y1, m_u - (t1 - t_u) * d_u)
            if not np.all(np.isfinite(jq)):
                jq = np.zeros_like(d_u)
            if self.pending and self.pending[0] <= t_u:
                self.records_upto(t_u, lambda tr: (dense(tr) + bulk.bulk_delta(segs_u, nodes_t, nodes_y, t0, t1, tr)[0]
                                                   + jq * ((tr - t0) / (t_u - t0)) ** 2))
            y_u = y_u + d_u + jq
            pc.apply_crossings(segs_u)        # in time order: the last one of a point is its pattern at t_u
        elif self.pending and self.pending[0] <= t_u:
            self.records_upto(t_u, dense)
        self.stats["unresolved_crossings"] += pc.resync(cand, y_u)
        self.stats["corrected_crossings"] += len(segs_u)
        self.stats["bulk_steps"] += 1
        y_u = self._project(t_u, y_u, restart=False)
        self.start(t_u, y_u, t_u - t0)
        return t_u, y_u

    def _bulk_accept(self, segs, final_pats, cand, nodes_t, nodes_y, dense, t0, t1, y1, delta, h, jq1=None):
        pc = self.pieces
        jq1_part = 0.0 if jq1 is None else jq1
        if self.pending and self.pending[0] <= t1:
            def y_of(tr):
                if tr == t1:
                    return y1 + delta
                d, _ = self.bulk.bulk_delta(segs, nodes_t, nodes_y, t0, t1, tr)
                return dense(tr) + d + jq1_part * ((tr - t0) / (t1 - t0)) ** 2
            self.records_upto(t1, y_of)
        y_new = y1 + delta
        pc.set_patterns(cand, final_pats)
        # resynchronise with the true patterns at the corrected state
        self.stats["unresolved_crossings"] += pc.resync(cand, y_new)
        self.stats["corrected_crossings"] += len(segs)
        self.stats["bulk_steps"] += 1
        y_new = self._project(t1, y_new, restart=False)
        self.start(t1, y_new, h)
        return t1, y_new

    def _resync(self, cand, t1, y1, h):
        self.stats["unresolved_crossings"] += self.pieces.resync(cand, y1)
        if self.pending and self.pending[0] <= t1:
            dense = self.solver.dense_output()
            self.records_upto(t1, lambda tr: y1 if tr == t1 else dense(tr))
        y_new = self._project(t1, y1, restart=False)
        self.start(t1, y_new, h)
        return t1, y_new

    # ------------------------------------------------------------- event mode
    def _event_cross(self, dense, segs, t0, h):
        """Step to the earliest crossing (polished on the dense output) and switch there."""
        first = segs[0]
        t_star, y_star = polish_crossing(self.pieces, dense, first, t0, self.solver.t, self.solver.y, h)
        self.records_upto(t_star, lambda tr: dense(tr), inclusive=False)
        self.stats["events_located"] += 1
        self.stats["event_steps"] += 1
        self._switch(t_star, y_star, [(first.point, first.layer, first.coord)])
        # any other flagged point already past its hyperplane here switches too
        coords = past_planes(self.pieces, y_star)
        if coords:
            self.stats["events_located"] += len(coords)
            self._switch(t_star, y_star, coords, located=False)
        y_star = self._project(t_star, y_star, restart=False)
        self.start(t_star, y_star, max(self.solver.h_abs, h) if t_star > t0 else h)
        return t_star, y_star

    def _switch(self, t, y, coords, located=True):
        """Switch the listed coordinates at (t, y): each to a side, or into the sliding set, as
        ``filippov.switch_decision`` decides; the sliding intervals opened and closed are kept."""
        group, sliding, free = switch_decision(self.pieces, y, coords, located, self.options.slide_reg)
        entered, left = self.pieces.set_sides(group, sliding, free)
        for (i, l, k) in entered:
            self.intervals.append([i, l, k, t, None])
            self.stats["sliding_entries"] += 1
        for (i, l, k) in left:
            self._close_interval(i, l, k, t)
            self.stats["sliding_exits"] += 1

    # ------------------------------------------------------------ sliding set
    def _event_exit(self, dense, t_exit, j, to_free, t0, h):
        pc = self.pieces
        y_e = dense(t_exit) if t_exit < self.solver.t else self.solver.y
        self.records_upto(t_exit, lambda tr: dense(tr), inclusive=False)
        released = [(j, to_free)]
        if t_exit >= self.solver.t:         # at the step's end: every coordinate that left by then goes
            ev = pc.full(self.solver.y)
            released = [(e, bool(ev.s[e] >= 1.0))
                        for e in exits(pc, ev, self.solver.y, self.options.slide_margin)] or released
        for (i, l, k) in pc.release(released):
            self._close_interval(i, l, k, t_exit)
            self.stats["sliding_exits"] += 1
        y_e = self._project(t_exit, y_e, restart=False)
        self.start(t_exit, y_e, h)
        return t_exit, y_e

    def _project(self, t, y, restart=True):
        """Newton projection of y onto the hyperplanes of the sliding coordinates with weights inside
        (0, 1) when it drifted (``filippov.newton_projection``); the stepper restarts there unless
        ``restart`` is False."""
        y_new = newton_projection(self.pieces, y, 1e-3 * min(self.atol, self.rtol))
        if y_new is not y:
            self.stats["projections"] += 1
            if restart:
                self.start(t, y_new, self.solver.h_abs)
        return y_new


class _Last(NamedTuple):
    """The last accepted state."""
    t: float
    y: np.ndarray


#: the name the tests use
_Kinks = KinkIntegrator
