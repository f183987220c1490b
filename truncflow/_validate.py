"""Input checks shared by the public API: every message names the offending input."""
from __future__ import annotations

import math
import numbers

import numpy as np


def as_float_array(a, name: str, *, ndim: int | None = None, allow_float32: bool = False) -> np.ndarray:
    """Return ``a`` as a float64 array (or float32 when allowed), checking its dimension.

    No copy is made when ``a`` already has an accepted dtype.
    """
    if a is None:
        raise ValueError(f"{name} is missing")
    arr = np.asarray(a)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    accepted = (np.float64, np.float32) if allow_float32 else (np.float64,)
    if arr.dtype not in accepted:
        arr = arr.astype(np.float64)
    return arr


def require_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError if ``a`` holds NaN or infinity, saying how many and where the first is."""
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name} contains {len(bad)} non-finite value(s) (NaN or inf), first at index {first}")


def positive(value, name: str, *, allow_none: bool = False):
    """Return ``float(value)`` after checking it is a finite number > 0."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def choice(value, name: str, options) -> str:
    """Return ``value`` after checking it is one of ``options``."""
    if value not in options:
        opts = ", ".join(repr(o) for o in options)
        raise ValueError(f"unknown {name} {value!r}: expected one of {opts}")
    return value


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``int(value)`` after checking it is an integer (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or \
            (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def finite_number(value, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """Return ``float(value)`` after checking it is a real number (not a bool), finite, in [low, high].

    For numbers read from a file (JSON): an int too large for a float is refused, not raised on."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if ok:
        try:
            v = float(value)
        except (OverflowError, ValueError):
            ok = False
        else:
            ok = math.isfinite(v) and (low is None or v >= low) and (high is None or v <= high)
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    return v


# ------------------------------------------------------------------ memory
def available_memory() -> int:
    """Bytes of memory this process can still allocate without swapping.

    ``psutil.virtual_memory().available``, lowered to the room left under a cgroup
    (container) memory limit when one is set and readable.
    """
    import psutil

    available = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            available = min(available, max(int(limit) - usage, 0))
        break
    return available


def format_bytes(n_bytes: int | float) -> str:
    """``n_bytes`` for a person: '512 B', '3.2 GiB', '4.4e+13 TiB'."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.3g} {unit}"
        value /= 1024
    return f"{value:.3g} TiB"


#: Allocations smaller than this are never refused by :func:`require_memory`.
UNCHECKED_BYTES = 64 * 2**20


def require_memory(n_bytes: int, what: str) -> None:
    """Raise ValueError, before anything is allocated, when ``n_bytes`` exceeds the memory
    available now (:func:`available_memory`). ``what`` names the request and its size,
    e.g. ``"n_points=10^12 points of width 3"``; the message adds the two amounts.
    Requests below :data:`UNCHECKED_BYTES` are not probed (a probe reads /proc and the
    cgroup files, ~0.4 ms: too slow for the parameters of every step of a flow)."""
    if n_bytes < UNCHECKED_BYTES:
        return
    available = available_memory()
    if n_bytes > available:
        raise ValueError(f"{what} would need about {format_bytes(n_bytes)} of memory, but only "
                         f"{format_bytes(available)} is available")


# ------------------------------------------------------------ result files
def _series_dims(spec: str) -> tuple[str, ...]:
    """('L', 'Q') from a per-record shape written as ``"(L, Q)"``; () from ``"()"``."""
    inner = spec.strip()[1:-1]
    return tuple(s.strip() for s in inner.split(",") if s.strip())


def check_series(series: dict, spec: dict) -> dict:
    """Check the per-record arrays of a result against their per-record shapes.

    Args:
        series: name -> array with a leading record axis T.
        spec: name -> per-record shape as text, e.g. ``{"cost": "()", "spread": "(L, Q)"}``
            (``_SERIES`` of ``engine.record``); every name in ``spec`` must be in ``series``.
    Returns:
        the sizes ``{"T": T, "L": L, ...}`` every array agrees on.
    Raises ValueError naming the array and the inconsistency: a non-numeric dtype, a
    wrong number of dimensions, no records (T = 0), a leading length other than the
    first array's, or a size (L, Q, M, P) that disagrees with an earlier array. Arrays
    in ``series`` that are not in ``spec`` must be numeric with the same leading T.
    """
    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}        # the array each size was first read from
    for name in list(spec) + [k for k in series if k not in spec]:
        a = series[name]
        if not isinstance(a, np.ndarray) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"array {name!r} is not numeric (dtype {getattr(a, 'dtype', type(a).__name__)})")
        dims = ("T",) + _series_dims(spec[name]) if name in spec else ("T",)
        if name in spec and a.ndim != len(dims):
            raise ValueError(f"array {name!r} has shape {a.shape}, expected ({', '.join(dims)})")
        if a.ndim == 0:
            raise ValueError(f"array {name!r} has no record axis (shape ())")
        if a.shape[0] == 0:
            raise ValueError(f"array {name!r} holds no records (a result has at least one)")
        for axis, dim in enumerate(dims):
            if dim not in sizes:
                sizes[dim], origin[dim] = a.shape[axis], name
            elif a.shape[axis] != sizes[dim]:
                label = "number of records" if dim == "T" else dim
                raise ValueError(f"array {name!r} has shape {a.shape}: its {label} {a.shape[axis]} disagrees "
                                 f"with the {label} {sizes[dim]} of {origin[dim]!r}")
    return sizes


def check_array_shapes(arrays: dict, spec: dict, sizes: dict) -> None:
    """Check run-level arrays against shapes given as tuples of size names.

    ``spec``: name -> e.g. ``("L", "M", "M")``; an array in ``spec`` is optional, but when
    present must have that many dimensions and agree with ``sizes`` (``{"L": 3, ...}``,
    e.g. from :func:`check_series`; names not yet in ``sizes`` are bound by the first
    array that has them). Every array must be numeric. Raises ValueError naming the
    array and the inconsistency.
    """
    origin = {dim: "the records" for dim in sizes}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(f"array {name!r} is not numeric (dtype {getattr(a, 'dtype', type(a).__name__)})")
        dims = spec.get(name)
        if dims is None:
            continue
        if a.ndim != len(dims):
            raise ValueError(f"array {name!r} has shape {a.shape}, expected ({', '.join(dims)})")
        for axis, dim in enumerate(dims):
            if dim not in sizes:
                sizes[dim], origin[dim] = a.shape[axis], repr(name)
            elif a.shape[axis] != sizes[dim]:
                raise ValueError(f"array {name!r} has shape {a.shape}: its {dim} {a.shape[axis]} disagrees "
                                 f"with the {dim} {sizes[dim]} of {origin[dim]}")


def check_counts(arrays: dict, names, *, low: int | None = 0, what: str = "counts") -> None:
    """Raise ValueError unless each named array present holds whole numbers >= ``low`` (counters,
    labels; ``low=None``: any whole numbers, e.g. class IDs): an integer dtype, or finite integral floats."""
    for name in names:
        a = arrays.get(name)
        if a is None or np.issubdtype(a.dtype, np.integer):
            bad = a is not None and a.size and low is not None and a.min() < low
        else:
            with np.errstate(invalid="ignore"):
                bad = not np.all(np.isfinite(a) & (a == np.round(a)) & (a >= (-np.inf if low is None else low)))
        if bad:
            at_least = "" if low is None else f" >= {low}"
            raise ValueError(f"array {name!r} must hold whole numbers{at_least} ({what}), found "
                             f"{a.reshape(-1)[:4].tolist()}")
