"""The step controller: which stepper, how long the next step may be, and what to do with a step
whose crossings were corrected in bulk (accept, redo shorter, correct part of it, or locate).

The stepper (SciPy's RK45 or DOP853, unchanged: its error control, step-size control and dense
output) integrates the frozen-pattern flow; this controller only holds its steps to ``h_cap``,
the longest step the last bulk test allowed (relaxed by steps without crossings), and counts the
steps redone in a row and the events that made no progress.
"""
from __future__ import annotations

import enum

import numpy as np
from scipy.integrate import DOP853, RK45

__all__ = ["StepController", "Verdict", "LOCATED_STEPS"]

#: Steps that locate every crossing after the stepper failed in bulk mode (then bulk mode again).
LOCATED_STEPS = 50


class Verdict(enum.Enum):
    """What to do with a step whose crossings were corrected in bulk."""
    ACCEPT = "accept"      #: keep the corrected step
    LOCATE = "locate"      #: locate its first crossing (event mode)
    REDO = "redo"          #: redo it shorter from its start
    PARTIAL = "partial"    #: correct it up to its first crossing of the sliding kind


class StepController:
    """Step-size decisions of one run (``options``: its :class:`KinkOptions`)."""

    def __init__(self, options, rtol, max_step):
        self.options = options
        #: the stepper: DOP853 at rtol <= ``options.dop853_below``, else RK45
        self.Stepper = DOP853 if rtol <= options.dop853_below else RK45
        self.user_max_step = max_step or np.inf
        self.h_cap = np.inf     # step limit from the last bulk test (relaxed by steps without crossings)
        self.redos = 0          # bulk steps redone in a row
        self.stuck = 0          # events in a row without progress
        self.located_left = 0   # steps left that locate every crossing (after the stepper failed in bulk mode)

    def state(self) -> dict:
        """What a checkpoint keeps of it (JSON-able; ``h_cap`` None when unbounded)."""
        return {"h_cap": None if self.h_cap == np.inf else float(self.h_cap), "redos": int(self.redos),
                "stuck": int(self.stuck), "located_left": int(self.located_left)}

    def restore(self, state: dict) -> None:
        """Take back a :meth:`state` (checked by ``engine.checkpoint``)."""
        self.h_cap = np.inf if state["h_cap"] is None else float(state["h_cap"])
        self.redos, self.stuck = int(state["redos"]), int(state["stuck"])
        self.located_left = int(state["located_left"])

    def bulk_allowed(self) -> bool:
        """Whether the next step may correct its crossings in bulk: the options allow it and the
        run is not in a stretch of located steps (:meth:`locate_for_a_while`)."""
        return self.options.bulk and self.located_left == 0

    def locate_for_a_while(self) -> None:
        """The stepper failed (its step size collapsed) while steps were corrected in bulk: the next
        ``LOCATED_STEPS`` steps locate every crossing, as ``KinkOptions(bulk=False)`` does. Bulk
        correction can stall where many points meet one hyperplane at once (a face of an earlier
        layer that the hyperplane comes to contain, ``bench/kinks_robustness.py``); locating the
        crossings one by one goes through there."""
        self.located_left = LOCATED_STEPS
        self.h_cap = np.inf
        self.redos = 0

    def first_step(self, h, t, t_end):
        """The first step of a stepper (re)started at t: h clipped to t_end and to ``h_cap`` (None:
        the stepper's own choice)."""
        if h is not None:
            h = float(min(h, t_end - t))
            if not h > 0:
                h = None
        if h is not None:
            h = min(h, self.h_cap)
        return h

    def max_step(self):
        """The stepper's step limit: the user's, and ``h_cap``."""
        return min(self.user_max_step, self.h_cap)

    def relax(self):
        """A step without crossings: ``h_cap`` grows by half. Returns whether it changed."""
        if self.h_cap < np.inf:
            self.h_cap *= 1.5
            return True
        return False

    def bulk_verdict(self, err, n_cross, t_slide, t0, h, h_abs):
        """(verdict, h): the fate of a bulk-corrected step [t0, t0 + h] with estimated error ``err``,
        ``n_cross`` crossings and its first crossing of the sliding kind at ``t_slide`` (inf: none);
        ``h_abs`` the stepper's proposed step. With ACCEPT h is the next step, with REDO the step to
        redo; otherwise None.

        A step within ``bulk_budget`` and without crossings of the sliding kind is accepted. Else it
        is located event by event when it holds at most ``event_max`` crossings, or redone shorter
        (``max_redos`` times in a row at most, then its first crossing is located); a step that
        passes but holds a crossing of the sliding kind is corrected up to it (located when that is
        at the step's start)."""
        opt = self.options
        grow = 0.9 * (opt.bulk_budget / err) ** (1.0 / 3.0) if err > 0 else 10.0
        if err <= opt.bulk_budget and t_slide == np.inf:
            self.h_cap = h * min(grow, 4.0)
            return Verdict.ACCEPT, min(h_abs, h * grow)
        if n_cross <= opt.event_max or (err > opt.bulk_budget and self.redos >= opt.max_redos):
            return Verdict.LOCATE, None
        if err > opt.bulk_budget:
            self.redos += 1
            self.h_cap = h * max(grow, 0.2)
            return Verdict.REDO, self.h_cap
        if t_slide <= t0 + 1e-3 * h:
            return Verdict.LOCATE, None
        return Verdict.PARTIAL, None

    def progressed(self, t_new, t0):
        """A step or event ended at t_new (from t0). Returns False after ``max_stuck`` events in a
        row without progress (a degenerate tangency: the run stops)."""
        self.redos = 0
        if self.located_left > 0 and t_new > t0:
            self.located_left -= 1
        self.stuck = self.stuck + 1 if t_new <= t0 else 0
        return self.stuck <= self.options.max_stuck
