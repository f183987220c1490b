"""What each integration method supports, and why a run stopped (issue 23 item 2).

One registry, :data:`REGISTRY`, says for each ``method=`` of :func:`truncflow.simulate`
what it supports: adaptive tolerances, checkpoints, where its points may live
(placements), float32 sweeps, how an ensemble runs it, and the options that apply
to it alone. :func:`truncflow.simulate`, the configuration and the CLI ask it, and
word their refusals with the helpers here, so a new method, or a method that learns
something, is one entry to change.

:class:`Status` is why a run stopped. Its values are the strings stored in result
files (``result.status`` stays that plain string), so files written before the enum
load unchanged.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Method", "REGISTRY", "METHOD_NAMES", "Status", "SUCCESS_STATUSES", "spec", "supporting",
           "either", "ADAPTIVE_OPTIONS", "SGD_OPTIONS", "METHOD_OPTIONS", "methods_taking", "placement_refusal",
           "checkpoint_refusal", "precision_refusal", "float32_refusal", "gpu_refusal", "cluster_refusal"]

#: Where the points of a dataset live: here (a :class:`truncflow.Dataset`), on a Dask
#: cluster or on a GPU (the names of the dataset classes).
HERE, DISTRIBUTED, DEVICE = "Dataset", "DistributedDataset", "DeviceDataset"

#: Options of an adaptive (error-controlled) method: they apply to no other.
ADAPTIVE_OPTIONS = ("rtol", "atol", "first_step", "max_step")
#: Options of stochastic gradient descent alone (``method="sgd"``, :mod:`truncflow.engine.sgd`).
SGD_OPTIONS = ("batch_size", "replacement", "seed", "momentum")
#: Options of :func:`truncflow.simulate` that apply to some methods only, in the order
#: the configuration checks them.
METHOD_OPTIONS = ADAPTIVE_OPTIONS + ("lr", "record_truncation_times", "max_evals") + SGD_OPTIONS

#: How :func:`truncflow.simulate_ensemble` runs a method's members: "compiled" (their
#: options checked once; on points that fit one chunk every member's steps run together
#: in compiled code), "shared plan" (options checked once, members one after the other
#: or in worker processes), "one by one" (each member checked and run as simulate would).
ENSEMBLE_WAYS = ("compiled", "shared plan", "one by one")


@dataclass(frozen=True)
class Method:
    """What one ``method=`` supports."""

    name: str
    description: str                  # one line, for help texts
    adaptive: bool                    # error-controlled steps: ADAPTIVE_OPTIONS apply
    checkpoints: bool                 # checkpoint= / resume= (a run that can be continued)
    placements: tuple[str, ...]       # dataset classes it runs on; (HERE,): needs the points here
    float32: bool                     # precision="float32" (a float32 per-point sweep)
    ensembles: str                    # one of ENSEMBLE_WAYS
    options: tuple[str, ...]          # the METHOD_OPTIONS that apply to it
    why_float64: str = ""             # why it refuses float32 (where it does)

    def __post_init__(self):
        assert self.ensembles in ENSEMBLE_WAYS, self.ensembles
        assert set(self.options) <= set(METHOD_OPTIONS), self.options
        assert self.adaptive == set(ADAPTIVE_OPTIONS).issubset(self.options), self.name
        assert HERE in self.placements
        assert self.float32 or self.why_float64, self.name

    @property
    def needs_points_here(self) -> bool:
        """Runs only on a :class:`truncflow.Dataset` (not on a Dask cluster or a GPU)."""
        return self.placements == (HERE,)

    def runs_on(self, where: str) -> bool:
        """Whether it runs on a dataset of class name ``where``."""
        return where in self.placements


_EVERYWHERE = (HERE, DISTRIBUTED, DEVICE)

#: The methods, in the order they are listed to a user.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("rk45", "adaptive Dormand-Prince with error control (rtol, atol)", adaptive=True, checkpoints=True,
           placements=_EVERYWHERE, float32=True, ensembles="shared plan",
           options=ADAPTIVE_OPTIONS + ("max_evals",)),
    Method("gd", "gradient descent: Euler steps of length lr", adaptive=False, checkpoints=True,
           placements=_EVERYWHERE, float32=True, ensembles="compiled", options=("lr", "max_evals")),
    Method("sgd", "stochastic gradient descent: minibatch steps of length lr", adaptive=False, checkpoints=True,
           placements=_EVERYWHERE, float32=True, ensembles="one by one",
           options=("lr", "max_evals") + SGD_OPTIONS),
    Method("events", "exact, event to event (aligned model, input cost)", adaptive=False, checkpoints=False,
           placements=(HERE,), float32=False, ensembles="one by one", options=("record_truncation_times",),
           why_float64="decides every kink exactly"),
    Method("kinks", "experimental: locates pattern changes, follows sliding modes", adaptive=True,
           checkpoints=True, placements=_EVERYWHERE, float32=False, ensembles="one by one",
           options=ADAPTIVE_OPTIONS + ("max_evals",),
           why_float64=("decides each point's side of every hyperplane from its pre-activations, which a "
                        "float32 sweep rounds at 1e-7 relative, far above the tolerances it keeps (float32 "
                        "points are welcome: widened exactly, they give the float64 points' run)")),
)}
METHOD_NAMES = tuple(REGISTRY)


def spec(method: str) -> Method:
    """The registry entry of ``method`` (a ValueError naming the known ones if there is none)."""
    try:
        return REGISTRY[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, METHOD_NAMES))}") \
            from None


def supporting(feature: str) -> tuple[str, ...]:
    """The methods, in registry order, that support ``feature``: a boolean field ("adaptive",
    "checkpoints", "float32"), a placement (HERE, DISTRIBUTED, DEVICE) or an option of
    METHOD_OPTIONS."""
    if feature in _EVERYWHERE:
        return tuple(m.name for m in REGISTRY.values() if m.runs_on(feature))
    if feature in METHOD_OPTIONS:
        return methods_taking(feature)
    if feature in ("adaptive", "checkpoints", "float32"):
        return tuple(m.name for m in REGISTRY.values() if getattr(m, feature))
    raise ValueError(f"unknown feature {feature!r}")


def methods_taking(option: str) -> tuple[str, ...]:
    """The methods an option of METHOD_OPTIONS applies to."""
    return tuple(m.name for m in REGISTRY.values() if option in m.options)


def either(names, quote: str = "'") -> str:
    """"'rk45' or 'gd'" (``quote='"'``: as TOML writes strings)."""
    return " or ".join(f"{quote}{n}{quote}" for n in names)


# ------------------------------------------------------------ refusals
# Each wording is derived from the registry: the methods it names are those that support
# what was asked for.

def placement_refusal(method: str, where: str) -> str:
    """simulate on a dataset ``where`` (a class name) that ``method`` does not run on."""
    m = spec(method)
    needs = "the points here, in a truncflow.Dataset" if m.needs_points_here else \
        f"a {' or a '.join(m.placements)}"
    return f"method={method!r} needs {needs}: for a {where} use method {either(supporting(where))}"


def checkpoint_refusal(method: str) -> str:
    """checkpoint= for a method without checkpoints."""
    return f"checkpoint applies to method {either(supporting('checkpoints'))}, not {method!r}"


def precision_refusal(method: str, precision: str) -> str:
    """simulate(precision=...) other than float64 for a method without a float32 sweep."""
    return (f"precision={precision!r} applies to method {either(supporting('float32'))}; "
            f"method={method!r} {spec(method).why_float64} and runs in float64")


def float32_refusal(method: str, quote: str = "'") -> str:
    """The configuration's or the CLI's float32 for a method without it (prefix the setting)."""
    return f"applies to method {either(supporting('float32'), quote)}, not {method!r}"


def gpu_refusal(method: str, quote: str = "'") -> str:
    """A GPU (device = "cuda") for a method that needs the points here."""
    return f"a GPU runs method {either(supporting(DEVICE), quote)}, not {method!r}"


def cluster_refusal(method: str, quote: str = "'") -> str:
    """A Dask cluster for a method that needs the points here."""
    return f"a Dask cluster runs method {either(supporting(DISTRIBUTED), quote)}, not {method!r}"


# ------------------------------------------------------------- statuses
class Status(str, enum.Enum):
    """Why a run stopped. A value equals the string stored in result files: ``result.status``
    is that plain string (``Status(result.status)`` gives the member back)."""

    T_END = "t_end"
    COST_TOL = "cost_tol"
    GRAD_TOL = "grad_tol"
    MAX_EVALS = "max_evals"
    MAX_TIME = "max_time"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)

    @property
    def success(self) -> bool:
        """The run did what it was asked (reached t_end or a tolerance)."""
        return self in _SUCCESSES

    @property
    def message(self) -> str:
        """What a person reads (``result.message`` starts with it)."""
        return _MESSAGES[self]

    @property
    def ended_early(self) -> bool:
        """Stopped by a budget or a signal: the run may be continued from its checkpoint."""
        return self in (Status.INTERRUPTED, Status.MAX_EVALS, Status.MAX_TIME)

    @property
    def abnormal(self) -> bool:
        """Stopped in a state that may not be valid (its last state is checked before it is recorded)."""
        return self in (Status.DIVERGED, Status.FAILED, Status.INTERRUPTED)


_SUCCESSES = frozenset({Status.T_END, Status.COST_TOL, Status.GRAD_TOL})
_MESSAGES = {
    Status.T_END: "reached t_end",
    Status.COST_TOL: "cost fell below cost_tol",
    Status.GRAD_TOL: "gradient norm fell below grad_tol",
    Status.MAX_EVALS: "reached the maximum number of gradient evaluations",
    Status.MAX_TIME: "reached the wall-clock budget",
    Status.DIVERGED: "diverged",
    Status.FAILED: "failed",
    Status.INTERRUPTED: "interrupted",
}
#: The statuses of a successful run, as stored strings.
SUCCESS_STATUSES = tuple(s.value for s in Status if s.success)
