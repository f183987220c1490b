"""Reading a configuration's table and wording its errors: :class:`ConfigError`, and the
:class:`Reader` whose every check names the file, the section and the key."""
from __future__ import annotations

import difflib
import numbers
from pathlib import Path

import numpy as np

from .schema import SCHEMA


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the problem."""


def type_name(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "number"
    return type(value).__name__


def short(value) -> str:
    s = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


class Reader:
    """The parsed TOML of one configuration (or one sweep member), where it came from, and the
    checked reads of its values; each failed check raises a :class:`ConfigError` naming the
    file, the section and the key. It holds nothing but what it was made with."""

    def __init__(self, table: dict, source: str, base_dir: Path, name: str):
        self.table = table
        self.source = source
        self.base_dir = base_dir
        self.default_name = name

    # ------------------------------------------------------------- errors
    def fail(self, section: str | None, key: str | None, message: str):
        where = ""
        if section is not None:
            where = f"[{section}] " if section else ""
            if key is not None:
                where += f"{key}: "
        raise ConfigError(f"{self.source}: {where}{message}")

    # ------------------------------------------------------------ structure
    def check_structure(self):
        sections = [s for s in SCHEMA if s]
        for key, value in self.table.items():
            if isinstance(value, dict):
                if key not in sections:
                    hint = did_you_mean(key, sections)
                    hint = hint.replace(" '", " [").replace("'?", "]?")
                    raise ConfigError(f"{self.source}: unknown section [{key}]{hint}; allowed sections: "
                                      + ", ".join(f"[{s}]" for s in sections))
                for sub, subvalue in value.items():
                    if sub not in SCHEMA[key]:
                        hint = did_you_mean(sub, list(SCHEMA[key]))
                        raise ConfigError(f"{self.source}: unknown key '{sub}' in [{key}]{hint}; allowed keys: "
                                          + ", ".join(SCHEMA[key]))
                    if isinstance(subvalue, dict):
                        self.fail(key, sub, "must be a value, not a table")
            elif key not in SCHEMA[""]:
                if key in sections:
                    self.fail("", None, f"'{key}' must be a section [{key}], not a value")
                hint = did_you_mean(key, list(SCHEMA[""]))
                raise ConfigError(f"{self.source}: unknown top-level key '{key}'{hint}; allowed top-level keys: "
                                  + ", ".join(SCHEMA[""]) + "; sections: "
                                  + ", ".join(f"[{s}]" for s in sections))

    def section(self, name: str) -> dict:
        return dict(self.table.get(name, {})) if name else {k: v for k, v in self.table.items()
                                                             if not isinstance(v, dict)}

    # ---------------------------------------------------------- scalar reads
    def number(self, sec, tbl, key, *, default=None, required=False, positive=False, nonneg=False):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            self.fail(sec, key, f"must be a number, got {type_name(v)} {short(v)}")
        v = float(v)
        if not np.isfinite(v):
            self.fail(sec, key, f"must be finite, got {v}")
        if positive and v <= 0:
            self.fail(sec, key, f"must be > 0, got {short(tbl[key])}")
        if nonneg and v < 0:
            self.fail(sec, key, f"must be >= 0, got {short(tbl[key])}")
        return v

    def integer(self, sec, tbl, key, *, default=None, required=False, minimum=None, maximum=None):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            self.fail(sec, key, f"must be an integer, got {type_name(v)} {short(v)}")
        if minimum is not None and v < minimum:
            self.fail(sec, key, f"must be an integer >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            self.fail(sec, key, f"must be an integer <= {maximum}, got {v}")
        return int(v)

    def string(self, sec, tbl, key, *, default=None, required=False, choices=None):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required" + (f" (one of {', '.join(map(repr, choices))})" if choices else ""))
            return default
        v = tbl[key]
        if not isinstance(v, str):
            self.fail(sec, key, f"must be a string, got {type_name(v)} {short(v)}")
        if choices is not None and v not in choices:
            self.fail(sec, key, f"unknown value {v!r}; expected one of {', '.join(map(repr, choices))}")
        return v

    def array(self, sec, tbl, key, ndim, *, shape=None, what=None):
        """A nested list of numbers with ``ndim`` levels; ``shape`` entries of None are free."""
        v = tbl[key]
        arr = self._to_array(sec, key, v, ndim, what)
        if shape is not None:
            for axis, (got, want) in enumerate(zip(arr.shape, shape)):
                if want is not None and got != want:
                    expect = "x".join("?" if s is None else str(s) for s in shape)
                    self.fail(sec, key, f"has shape {'x'.join(map(str, arr.shape))}, expected {expect}"
                                        + (f" ({what})" if what else ""))
        return arr

    def _to_array(self, sec, key, value, ndim, what):
        def shape_of(v, depth):
            if depth == 0:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    self.fail(sec, key, f"must hold numbers, found {type_name(v)} {short(v)}")
                return ()
            if not isinstance(v, list):
                self.fail(sec, key, f"must be a {ndim}-dimensional list"
                                    + (f" ({what})" if what else "") + f", got {type_name(v)} {short(v)}")
            if len(v) == 0:
                self.fail(sec, key, "must not be empty")
            shapes = {shape_of(item, depth - 1) for item in v}
            if len(shapes) != 1:
                self.fail(sec, key, "rows have different lengths (need a rectangular array)")
            return (len(v),) + shapes.pop()

        shape_of(value, ndim)
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            self.fail(sec, key, "must hold finite numbers")
        return arr

    def scalar_or_list(self, sec, tbl, key, n, *, default):
        if key not in tbl:
            return default
        v = tbl[key]
        if isinstance(v, list):
            arr = self.array(sec, tbl, key, 1, shape=(n,), what=f"one value per cluster, Q={n}")
        else:
            arr = self.number(sec, tbl, key)
        if np.any(np.asarray(arr) < 0):
            self.fail(sec, key, f"must be >= 0, got {short(v)}")
        return arr

    def only_for(self, sec, tbl, rules, owner_key, owner_value):
        for key, allowed in rules.items():
            if key in tbl and owner_value not in allowed:
                self.fail(sec, key, f"applies only to {owner_key} = "
                                    + " or ".join(repr(a) for a in allowed) + f", not {owner_value!r}")

    def api(self, sec, key, call, *args, **kwargs):
        """Call into the API, turning its ValueError into a ConfigError naming the section."""
        try:
            return call(*args, **kwargs)
        except ConfigError:
            raise
        except ValueError as exc:
            message = str(exc)
            # The API names the argument itself ("frozen_layers must ..."): do not repeat it.
            self.fail(sec, None if key is not None and message.startswith(key) else key, message)


def ids_text(ids, limit: int = 8) -> str:
    """'1, 2, 5' or '0, 1, ..., 999': class IDs for a message."""
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids)) if len(ids) <= limit else \
        ", ".join(map(str, ids[:limit - 1])) + f", ..., {ids[-1]}"


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
