"""Sweeps: one job file, many runs (the ``[sweep]`` section of a run configuration).

::

    [sweep]
    seed = [0, 1, 2, 3]                        # a top-level key
    "network.scale" = [0.1, 0.3]               # <section>.<key>: a list of values
    "data.seed" = { start = 0, stop = 100 }    # integers start, start + step, ... < stop
    "flow.lr" = { start = 0.01, stop = 0.1, num = 4 }   # num evenly spaced values, ends included

One member per combination of the values (the Cartesian product, first key slowest).
Every member is a whole configuration, checked like any other; an error names the
member and its values. Members that differ only in their parameters and data (same
shapes, same flow options) run together with :func:`truncflow.simulate_ensemble`;
the rest in groups of equal options.

Outputs (``write_sweep``): ``members/NNNN/result.npz`` per member, ``summary.csv`` (one
row per member: its values, status, final time, cost and gradient norm, the fraction of
points truncated by the last layer, and each cluster's collapse time: the first record
at which 99% of the cluster is collapsed by the last layer, empty if never) and
``summary.png`` (the members' costs against time, and the distributions of final cost,
collapse times and truncated fractions).
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import numbers
from pathlib import Path

import numpy as np

from .engine.methods import Status

__all__ = ["expand_sweep", "run_sweep", "write_sweep", "summary_rows", "MAX_MEMBERS", "COLLAPSED"]

#: Most members a sweep may have.
MAX_MEMBERS = 100_000
#: A cluster counts as collapsed when this fraction of it is collapsed by the last layer.
COLLAPSED = 0.99
#: Sections whose keys a sweep may not vary (where and how the sweep itself runs).
_FIXED_SECTIONS = ("output", "run", "sweep")


def expand_sweep(sweep: dict, schema: dict, fail) -> tuple[list[str], list[tuple]]:
    """The swept keys and the members' values.

    Args:
        sweep: the [sweep] table; schema: the configuration's SCHEMA (section -> keys);
        fail: ``fail(key, message)`` raises the configuration error.
    Returns:
        (keys, members): keys as written ("seed", "network.scale"); one tuple of values per member.
    """
    if not isinstance(sweep, dict) or not sweep:
        fail(None, "[sweep] needs at least one key: a list of values for it")
    keys, values = [], []
    for key, spec in sweep.items():
        section, _, name = key.rpartition(".")
        if section in _FIXED_SECTIONS:
            fail(key, f"[{section}] keys cannot be swept")
        if section not in schema or name not in schema[section]:
            fail(key, "is not a configuration key: write a top-level key (seed) or <section>.<key>, "
                      "e.g. \"network.scale\"")
        values.append(_values(key, spec, fail))
        keys.append(key)
    n = int(np.prod([len(v) for v in values]))
    if n > MAX_MEMBERS:
        fail(None, f"{n} members (the product of the lists' lengths) is more than {MAX_MEMBERS}")
    return keys, list(itertools.product(*values))


def _values(key, spec, fail) -> list:
    if isinstance(spec, list):
        if not spec:
            fail(key, "is an empty list: give at least one value")
        return spec
    if not isinstance(spec, dict):
        fail(key, f"must be a list of values or a range {{start, stop[, step]}} / {{start, stop, num}}, "
                  f"got {spec!r}")
    unknown = set(spec) - {"start", "stop", "step", "num"}
    if unknown or not {"start", "stop"} <= set(spec) or ("num" in spec and "step" in spec):
        fail(key, "a range is { start = A, stop = B } (integers A, A+1, ... < B), with step = S, or "
                  "{ start = A, stop = B, num = K } (K evenly spaced numbers, both ends included)")
    start, stop = spec["start"], spec["stop"]
    for name in ("start", "stop", "step"):
        v = spec.get(name, 1)
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            fail(key, f"range {name} must be a number, got {v!r}")
    if "num" in spec:
        num = spec["num"]
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_MEMBERS:
            fail(key, f"range num must be an integer in [1, {MAX_MEMBERS}], got {num!r}")
        return [float(v) for v in np.linspace(start, stop, num)]
    step = spec.get("step", 1)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, stop, step)) or step == 0:
        fail(key, "a range without num takes integers start, stop and a nonzero step")
    out = list(range(start, stop, step))
    if not out:
        fail(key, f"range(start={start}, stop={stop}, step={step}) is empty")
    if len(out) > MAX_MEMBERS:
        fail(key, f"range has {len(out)} values, more than {MAX_MEMBERS}")
    return out


def member_table(table: dict, keys: list[str], values: tuple) -> dict:
    """The configuration table of one member: ``table`` with each key set to its value."""
    member = copy.deepcopy(table)
    for key, value in zip(keys, values):
        section, _, name = key.rpartition(".")
        if section:
            member.setdefault(section, {})[name] = value
        else:
            member[name] = value
    return member


def run_sweep(cfg, say=print) -> list:
    """Run every member of a sweep configuration (a RunConfig with ``members``); Results in member order."""
    from . import simulate_ensemble

    groups: dict[str, list[int]] = {}
    for i, m in enumerate(cfg.members):
        kw = m.simulate_kwargs
        shape = (m.dataset.points.shape, str(m.dataset.points.dtype), m.dataset.targets.shape,
                 m.params.n_layers, m.params.out_dim)
        groups.setdefault(repr((sorted((k, repr(v)) for k, v in kw.items()), shape)), []).append(i)
    results = [None] * len(cfg.members)
    for n, members in enumerate(groups.values()):
        first = cfg.members[members[0]]
        say(f"  ensemble {n + 1}/{len(groups)}: {len(members)} member{'s' if len(members) != 1 else ''}, "
            f"{first.simulate_kwargs['method']}")
        got = simulate_ensemble([cfg.members[i].params for i in members],
                                [cfg.members[i].dataset for i in members], config={"sweep": cfg.name},
                                **first.simulate_kwargs)
        for i, r in zip(members, got):
            r.config["member"] = i
            r.config["sweep_values"] = dict(zip(cfg.sweep_keys, cfg.sweep_values[i]))
            r.config["toml"] = cfg.members[i].table
            results[i] = r
    return results


def summary_rows(cfg, results) -> list[dict]:
    """One row per member: its swept values and what its run ended with (see the module docstring)."""
    rows = []
    for i, r in enumerate(results):
        row = {"member": i}
        row.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                    for k, v in zip(cfg.sweep_keys, cfg.sweep_values[i])})
        collapsed = r.series["collapsed_fraction"][:, -1, :]          # (T, Q) last layer
        sizes = np.bincount(cfg.members[i].dataset.labels, minlength=collapsed.shape[1])
        truncated = r.series["truncated_fraction"][-1, -1, :]
        row.update(status=r.status, t_final=float(r.t[-1]), cost=float(r.series["cost"][-1]),
                   grad_norm=float(r.series["grad_norm"][-1]),
                   truncated_last_layer=float(np.dot(truncated, sizes) / max(sizes.sum(), 1)))
        for q in range(collapsed.shape[1]):
            hit = np.nonzero(collapsed[:, q] >= COLLAPSED)[0]
            row[f"collapse_time_{q}"] = float(r.t[hit[0]]) if hit.size else ""
        rows.append(row)
    return rows


def write_sweep(cfg, results, folder: Path) -> list[tuple[str, Path]]:
    """Write each member's result, summary.csv and summary.png into ``folder``; (label, path) written."""
    folder = Path(folder)
    width = len(str(len(results) - 1))
    for i, r in enumerate(results):
        r.save(folder / "members" / f"{i:0{width}d}" / "result.npz")
    rows = summary_rows(cfg, results)
    table = folder / "summary.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written = [(f"{len(results)} results", folder / "members"), ("summary table", table)]
    try:
        written.append(("summary plot", _plot(rows, results, folder / "summary.png", cfg.name)))
    except ImportError:
        pass
    return written


def format_summary(rows, limit: int = 12) -> str:
    """A short text table: the first rows and the distribution of the final cost."""
    keys = [k for k in rows[0] if k not in ("grad_norm",) and not k.startswith("collapse_time_")]
    lines = ["  ".join(f"{k:>14.14}" for k in keys)]
    for row in rows[:limit]:
        lines.append("  ".join(f"{_cell(row[k]):>14.14}" for k in keys))
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows in summary.csv")
    costs = np.array([row["cost"] for row in rows])
    ok = sum(Status(row["status"]).success for row in rows)
    lines.append(f"{len(rows)} members, {ok} succeeded; final cost min {costs.min():.3g}, median "
                 f"{np.median(costs):.3g}, max {costs.max():.3g}")
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _plot(rows, results, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for r in results:
        ax[0, 0].plot(r.t[1:], r.series["cost"][1:], lw=0.8, alpha=max(0.05, min(1.0, 10 / len(results))))
    ax[0, 0].set(xscale="log", yscale="log", xlabel="flow time t", ylabel="cost", title="cost of every member")
    costs = np.array([row["cost"] for row in rows])
    positive = costs[costs > 0]
    bins = np.geomspace(positive.min(), positive.max() * 1.0001, 30) if positive.size and \
        positive.min() < positive.max() else 30
    ax[0, 1].hist(costs, bins=bins)
    ax[0, 1].set(xscale="log" if positive.size == costs.size and costs.size else "linear",
                 xlabel="final cost", ylabel="members", title="final cost")
    n_clusters = sum(1 for k in rows[0] if k.startswith("collapse_time_"))
    for q in range(n_clusters):
        times = [row[f"collapse_time_{q}"] for row in rows if row[f"collapse_time_{q}"] != ""]
        never = len(rows) - len(times)
        ax[1, 0].hist(times, bins=30, alpha=0.6, label=f"cluster {q} ({never} never)")
    ax[1, 0].set(xlabel="collapse time (99% collapsed by the last layer)", ylabel="members",
                 title="collapse times")
    if ax[1, 0].has_data():
        ax[1, 0].legend(fontsize=8)
    ax[1, 1].hist([row["truncated_last_layer"] for row in rows], bins=30, range=(0, 1))
    ax[1, 1].set(xlabel="fraction of points truncated by the last layer (final)", ylabel="members",
                 title="truncated fraction")
    fig.suptitle(f"sweep {title}: {len(rows)} members")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
