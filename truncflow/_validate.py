"""Input checks shared by the public API: every message names the offending input."""
from __future__ import annotations

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
