"""The options of ``method="kinks"``: one frozen dataclass, passed in (no module globals)."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

__all__ = ["KinkOptions", "using", "current"]


@dataclass(frozen=True)
class KinkOptions:
    """Choices of the kink-exact integrator (defaults: what ``simulate(method="kinks")`` uses).

    Attributes:
        nodes: Chebyshev-Lobatto nodes per step for crossing times and quadratures.
        scan: points of the grid on which the interpolated pre-activations are scanned for sign
            changes (local minima closer to the hyperplane than a quarter of the largest distance
            are polished).
        dip_margin: a coordinate whose cubic Hermite path (values and time derivatives at both
            ends of a step) comes closer to its hyperplane than this share of its end distances is
            examined on the step's dense output: it may cross and come back inside the step.
        event_max: at most this many crossings in a step are located one by one (event mode) when
            bulk correction does not pass the error test; with more the step is redone shorter.
        dop853_below: rtol at or below which DOP853 (8th order, 12 evaluations a step) is used
            instead of RK45 (5th order, 6). Where crossings limit the steps (bulk mode) the cheaper
            step wins: the README's default job at rtol 1e-9 took 25,490 evaluations with DOP853
            and 12,412 with RK45 (the two 5e-10 apart); DOP853 pays only where smooth stretches
            dominate at the tightest tolerances.
        slide_reg: pull of the sliding weights towards 1/2 when they are not unique
            (``filippov.least_squares``).
        slide_margin: a sliding coordinate at a bound of its weight leaves when its rate away from
            the plane exceeds this fraction of its jump's (``filippov.exits``).
        bulk_budget: share of the stepper's error budget the estimated error of a bulk correction
            may take.
        bulk_refine: passes that re-find the crossing times and jump integrals of a bulk-corrected
            step along its corrected path (each contracts the error of the crossing times by about
            |moved| / |delta|).
        bulk: bulk correction allowed (False: every crossing is located; for experiments and
            benchmarks).
        max_redos: bulk steps redone shorter in a row after which the step's first crossing is
            located instead (crossings that do not thin out as the step shrinks).
        max_stuck: zero-length events in a row after which the run stops (a degenerate tangency).
    """
    nodes: int = 9
    scan: int = 64
    dip_margin: float = 0.5
    event_max: int = 4
    dop853_below: float = 1e-10
    slide_reg: float = 1e-7
    slide_margin: float = 1e-9
    bulk_budget: float = 0.1
    bulk_refine: int = 2
    bulk: bool = True
    max_redos: int = 3
    max_stuck: int = 200

    def __post_init__(self):
        for name in ("nodes", "scan", "event_max", "bulk_refine", "max_redos", "max_stuck"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "nodes" else 0):
                raise ValueError(f"KinkOptions.{name} must be an integer >= {2 if name == 'nodes' else 0}, "
                                 f"got {value!r}")
        for name in ("dip_margin", "dop853_below", "slide_reg", "slide_margin", "bulk_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"KinkOptions.{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.bulk, bool):
            raise ValueError(f"KinkOptions.bulk must be True or False, got {self.bulk!r}")


DEFAULT = KinkOptions()

_current: contextvars.ContextVar[KinkOptions] = contextvars.ContextVar("truncflow_kink_options", default=DEFAULT)


def current() -> KinkOptions:
    """The options a run without explicit ones uses: those of the innermost :func:`using`, else defaults."""
    return _current.get()


@contextlib.contextmanager
def using(options: KinkOptions):
    """Runs of ``method="kinks"`` started inside use ``options``, unless they are given their own
    (``simulate(..., kink_options=...)``, ``run_kinks(..., options=...)``). Scoped to this context
    (thread, task); nothing global is changed."""
    if not isinstance(options, KinkOptions):
        raise TypeError(f"using() needs a KinkOptions, got {type(options).__name__}")
    token = _current.set(options)
    try:
        yield options
    finally:
        _current.reset(token)
