"""``method="kinks"``: a high-order integrator for the piecewise-smooth gradient flow.

The right-hand side of the flow (MODEL.md section 8) is smooth while no point changes activation
pattern, and jumps by one point's gradient contribution when one does. Dormand-Prince applied
straight to it is first order globally (every step that straddles a change commits an error of
order h * jump). Here the stepper (SciPy's RK45 or DOP853, unchanged) integrates the
*frozen-pattern* flow, a smooth ODE, and after each step the crossings it straddled are found and
either located one by one (*event mode*: step to the earliest, switch the pattern there, restart)
or corrected in bulk (*bulk mode*: keep the step, add every crossing's jump integrated from its
crossing time), chosen per step by an error test. At a crossing the coordinates on that hyperplane
are decided together as MODEL.md section 5 says (Filippov: sliding modes).

The parts (ARCHITECTURE.md, "The kink-exact integrator in parts"):

* ``options.py`` -- :class:`KinkOptions`, every choice of the method, frozen, passed in.
* ``model.py`` -- :class:`FrozenModel`: the one owner of the pattern and the sliding set (only
  its methods change them; they keep its caches right), and the frozen-pattern evaluations.
* ``locate.py`` -- the crossing locator: flagged points, :class:`Crossing` records, event times
  polished to round-off.
* ``filippov.py`` -- the Filippov projector: sliding weights, the switch at a crossing, sliding
  exits and their times, the Newton projection onto the sliding hyperplanes.
* ``bulk.py`` -- the bulk corrector: jump integrals, the corrected path, the error estimate.
* ``controller.py`` -- the step controller: stepper, step limits, the verdict on a bulk step.
* ``integrator.py`` -- the driver: the steps on the shared loop (``engine/loop.py``: records,
  stops, signals); :func:`run_kinks`.
* ``bits.py`` -- bit-packed patterns.

Counts and choices are reported in ``result.config["kinks"]``; the sliding intervals
(point, layer, coordinate, entry time, exit time) in ``result.arrays["sliding_intervals"]``.

Options: ``simulate(..., method="kinks", kink_options=KinkOptions(bulk=False))`` or
``run_kinks(..., options=KinkOptions(bulk=False))``; or, scoped around the calls,
``with kinks.using(KinkOptions(bulk=False)): tf.simulate(...)`` (an explicit ``kink_options`` wins).
The module globals of the single-module version (``BULK``, ``_DOP853_BELOW``, ...) are gone;
setting one raises an AttributeError that names its option.
"""
from __future__ import annotations

import sys
import types

from .bits import set_bit as _set_bit
from .integrator import KinkIntegrator, _Kinks, run_kinks
from .locate import Crossing, Quadrature as _Quadrature
from .model import FrozenModel, FrozenModel as _Pieces
from .options import KinkOptions, current, using

__all__ = ["run_kinks", "KinkOptions", "using", "current", "Crossing", "FrozenModel", "KinkIntegrator"]

#: module globals of the single-module version and the KinkOptions field each became
_REMOVED = {"BULK": "bulk", "BULK_BUDGET": "bulk_budget", "BULK_REFINE": "bulk_refine", "DIP_MARGIN": "dip_margin",
            "SLIDE_REG": "slide_reg", "SLIDE_MARGIN": "slide_margin", "_DOP853_BELOW": "dop853_below",
            "_EVENT_MAX": "event_max", "_MAX_REDOS": "max_redos", "_MAX_STUCK": "max_stuck", "_NODES": "nodes",
            "_SCAN": "scan"}


class _Package(types.ModuleType):
    """Setting a removed global would silently change nothing: say so instead."""

    def __setattr__(self, name, value):
        if name in _REMOVED:
            raise AttributeError(f"truncflow.engine.kinks.{name} is gone: pass KinkOptions({_REMOVED[name]}=...) "
                                 f"to run_kinks, or run inside kinks.using(KinkOptions({_REMOVED[name]}=...))")
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
