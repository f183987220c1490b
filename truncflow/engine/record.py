"""What a run observes and keeps: the Recorder, the Result and its file.

A record holds the time, cost, gradient norm, parameters and the observables of
MODEL.md section 11; nothing of size N is kept per record (the one per-point
array is the pattern hash of the last record, used to count pattern changes).
"""
from __future__ import annotations

import json
import math
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import atomic_savez
from ..observe import Observation, cluster_means, observe_checked, pattern_changes
from ..params import Params
from .methods import SUCCESS_STATUSES, Status

__all__ = ["Result", "Recorder", "load_result", "package_versions", "check_recorder_state"]

#: Per-record arrays of a Result, with their per-record shapes (T is the leading axis).
_SERIES = {
    "t": "()", "cost": "()", "cost_per_cluster": "(Q,)", "grad_norm": "()",
    "truncated_fraction": "(L, Q)", "collapsed_fraction": "(L, Q)",
    "coordinate_truncated_fraction": "(L, Q, M)", "free_coordinates": "(L, Q)",
    "spread": "(L, Q)", "collapse_ratio": "(L,)", "n_patterns": "()", "pattern_changes": "()",
    "steps_accepted": "()", "steps_rejected": "()", "evaluations": "()",
    "weights": "(L, M, M)", "biases": "(L, M)", "cum_weights": "(L, M, M)", "cum_biases": "(L, M)",
    "out_weight": "(P, M)", "out_bias": "(P,)", "sliding_points": "(L, Q)",
}
#: Series added after the first result files: filled in when an older file lacks them.
_LATER_SERIES = {"sliding_points": lambda s: np.zeros(np.shape(s["truncated_fraction"]), dtype=np.int64)}
#: Why an optional quantity may be missing from a Result.
_ABSENT_HINTS = {
    "truncation_times": "they are recorded by method='events' with record_truncation_times=True",
    "thresholds": "thresholds exist for aligned parameters (Params.aligned) only",
    "scales": "scales exist for aligned parameters (Params.aligned) only",
    "frames": "frames are recorded for aligned parameters (Params.aligned) only",
}
#: Points of the data kept with a result (a fixed random subsample) for snapshots.
SAMPLE_SIZE = 2000
#: Prefix of the run-level arrays (``Result.arrays``) in a result file.
_ARRAY_PREFIX = "run__"
#: The format a result file is written in, and those this truncflow reads (a file without
#: a "format" entry in its metadata is of format 1: the first files had none).
RESULT_FORMAT = 1
_READ_FORMATS = (1,)
#: Per-record arrays that hold counts (whole numbers >= 0).
_COUNT_SERIES = ("n_patterns", "pattern_changes", "steps_accepted", "steps_rejected", "evaluations")
#: Per-record arrays that hold parameters (finite: only states that can be observed are recorded).
_PARAM_SERIES = ("weights", "biases", "cum_weights", "cum_biases", "out_weight", "out_bias")
#: Relative slack of the check that no record lies past t_end.
_T_END_SLACK = 1e-9

#: Status codes: why a run stopped (:class:`truncflow.engine.methods.Status`, stored as its
#: value), with their messages, and those of a successful run.
STATUS_MESSAGES = {s.value: s.message for s in Status}
SUCCESS = SUCCESS_STATUSES


def package_versions() -> dict:
    import numba
    import scipy

    from .._version import __version__
    return {"truncflow": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "numba": numba.__version__, "python": platform.python_version()}


@dataclass(eq=False)
class Result:
    """The outcome of :func:`truncflow.simulate`.

    Per-record arrays (T records, L layers, Q clusters, width M, output dim P):
        t (T,), cost (T,), cost_per_cluster (T, Q), grad_norm (T,),
        truncated_fraction (T, L, Q), collapsed_fraction (T, L, Q),
        coordinate_truncated_fraction (T, L, Q, M), free_coordinates (T, L, Q),
        spread (T, L, Q), collapse_ratio (T, L), n_patterns (T,), pattern_changes (T,)
        (points whose activation pattern changed since the previous record; 0 first),
        steps_accepted, steps_rejected, evaluations (T,): counters at each record,
        weights, biases, cum_weights, cum_biases (T, L, M, M) / (T, L, M),
        out_weight (T, P, M), out_bias (T, P) (P = 0 without output layer),
        sliding_points (T, L, Q) int64: points of each cluster held on a hyperplane of
        each layer in a sliding mode (method="kinks"; 0 for the other methods, and when
        a file written before this series is loaded);
        aligned runs also ``scales`` and ``thresholds`` (T, L, M), derived from the
        cumulative parameters and the frames.
    Run-level arrays in ``arrays`` (also attributes): "sample_points" (S, M) and
    "sample_labels" (S,), a fixed random subsample of at most SAMPLE_SIZE points of
    the data (for snapshots of data and cones); "frames" (L, M, M) for aligned runs; "truncation_times" (N, L, M) when the event solver was asked for them: the
    first time each point is truncated in each layer and coordinate (0 if at the
    start, inf if never).
    Scalars: status (see STATUS_MESSAGES), message, success, config (dict), versions (dict).
    ``params`` is the list of recorded :class:`Params`; ``final`` the last one.
    """

    series: dict
    status: str
    message: str
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    def __getattr__(self, name):
        series = self.__dict__.get("series", {})
        if name in series:
            return series[name]
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        if name in _ABSENT_HINTS:
            raise AttributeError(f"this run has no {name}: {_ABSENT_HINTS[name]}")
        raise AttributeError(name)

    @property
    def success(self) -> bool:
        return self.status in SUCCESS

    @property
    def n_records(self) -> int:
        return len(self.series["t"])

    @property
    def scales(self) -> np.ndarray:
        """(T, L, M) ``lambda^(l)`` of an aligned run: ``W^(l) = diag(lambda^(l)) R^(l)``."""
        frames = self._frames("scales")
        return np.einsum("tlkj,lkj->tlk", self.series["cum_weights"], frames)

    @property
    def thresholds(self) -> np.ndarray:
        """(T, L, M) thresholds ``t^(l) = -b^(l) / lambda^(l)`` of an aligned run."""
        return -self.series["cum_biases"] / self.scales

    def _frames(self, what: str) -> np.ndarray:
        if "frames" not in self.arrays:
            raise AttributeError(f"this run has no {what}: {_ABSENT_HINTS[what]}")
        return self.arrays["frames"]

    def params_at(self, index: int) -> Params:
        """The :class:`Params` of record ``index``, both forms exactly as recorded."""
        s = self.series
        has_out = s["out_weight"].shape[1] > 0
        return Params._build(s["weights"][index], s["biases"][index], s["cum_weights"][index],
                             s["cum_biases"][index], s["out_weight"][index] if has_out else None,
                             s["out_bias"][index] if has_out else None, frames=self.arrays.get("frames"))

    @property
    def params(self) -> list[Params]:
        return [self.params_at(i) for i in range(self.n_records)]

    @property
    def final(self) -> Params:
        return self.params_at(self.n_records - 1)

    @property
    def cluster_names(self) -> list[str]:
        """"cluster q", with the original class ID when the data's IDs were mapped (Dataset.class_ids)."""
        Q = self.series["cost_per_cluster"].shape[1]
        ids = self.arrays.get("class_ids")
        if ids is None or np.array_equal(ids, np.arange(Q)):
            return [f"cluster {q}" for q in range(Q)]
        return [f"cluster {q} (class {int(i)})" for q, i in enumerate(ids)]

    def summary(self) -> str:
        """A few lines for a person: status, time reached, cost, truncation, counters."""
        s = self.series
        lines = [f"status: {self.status} ({self.message})",
                 f"t = {s['t'][-1]:.6g}, cost {s['cost'][0]:.6g} -> {s['cost'][-1]:.6g}, "
                 f"gradient norm {s['grad_norm'][-1]:.3g}"]
        frac = s["truncated_fraction"][-1]
        coll = s["collapsed_fraction"][-1]
        for q in range(frac.shape[1]):
            lines.append(f"{self.cluster_names[q]}: truncated fraction per layer {np.array2string(frac[:, q], precision=3)}, "
                         f"collapsed {np.array2string(coll[:, q], precision=3)}, "
                         f"cost {s['cost_per_cluster'][-1, q]:.3g}")
        lines.append(f"steps accepted {int(s['steps_accepted'][-1])}, rejected {int(s['steps_rejected'][-1])}, "
                     f"gradient evaluations {int(s['evaluations'][-1])}, "
                     f"distinct activation patterns {int(s['n_patterns'][-1])}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ file
    def save(self, path) -> Path:
        """Write everything to ``path`` (a ``.npz``; the suffix is added if missing).

        Written to a temporary file and renamed: an interruption leaves the old file or
        the new one, never a part of one.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta = {"status": self.status, "message": self.message, "config": self.config,
                "versions": self.versions, "format": RESULT_FORMAT}
        arrays = {_ARRAY_PREFIX + k: v for k, v in self.arrays.items()}
        return atomic_savez(path, __meta__=np.array(json.dumps(meta, default=_json_default)),
                            **self.series, **arrays)

    def __repr__(self) -> str:
        return f"Result(status={self.status!r}, records={self.n_records}, t_final={self.series['t'][-1]:.6g})"


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a result's configuration")


def check_storable(config: dict) -> None:
    """Raise ValueError now, not after the run, if ``config`` cannot be written to a result file."""
    try:
        json.dumps(config, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config cannot be stored with the result: {exc}") from None


def load_result(path) -> Result:
    """Read a Result written by :meth:`Result.save`, checking that it is consistent.

    Never unpickles. Raises ValueError naming the file and the problem: not a result
    file, missing entries, a metadata entry of the wrong type (status must be a known
    status, message a string, config and versions tables), non-numeric arrays, per-record
    arrays whose number of records T differs or is 0, sizes (L, Q, M, P) that
    disagree between arrays (the per-record shapes of ``_SERIES``), including the
    run-level frames, sample points and truncation times, or counters and sample
    labels that are not whole numbers >= 0, a format other than those this truncflow
    reads (a file without one is of format 1), record times that are not finite, negative,
    or decreasing, records past the run's t_end when its config holds one (for method "gd"
    past the time of its last step, ``ceil(t_end / lr) * lr``), and costs that are not
    finite (a record is made only of a state whose cost is finite).
    """
    from .._validate import check_array_shapes, check_counts, check_series

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"result file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"cannot read result file {path}: not a truncflow result file (.npz, as written by "
                         "Result.save)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "__meta__" not in z.files:
                raise ValueError(f"{path} is not a truncflow result (no __meta__ entry)")
            meta = json.loads(str(z["__meta__"]))
            series = {k: z[k] for k in z.files if k != "__meta__" and not k.startswith(_ARRAY_PREFIX)}
            arrays = {k[len(_ARRAY_PREFIX):]: z[k] for k in z.files if k.startswith(_ARRAY_PREFIX)}
        if not isinstance(meta, dict):
            raise ValueError(f"its __meta__ entry is a JSON {type(meta).__name__}, not a table")
        fmt = meta.get("format", 1)
        if isinstance(fmt, bool) or fmt not in _READ_FORMATS:
            raise ValueError(f"{path} has format {fmt!r}; this truncflow reads result files of format "
                             f"{', '.join(map(str, _READ_FORMATS))}")
        if "truncated_fraction" in series:
            for name, fill in _LATER_SERIES.items():
                series.setdefault(name, fill(series))
        missing = [k for k in ("status", "message") if k not in meta] + [k for k in _SERIES if k not in series]
        if missing:
            raise ValueError(f"{path} is not a complete truncflow result (missing {', '.join(missing)})")
        if not isinstance(meta["status"], str) or meta["status"] not in STATUS_MESSAGES:
            raise ValueError(f"unknown status {meta['status']!r} (expected one of {', '.join(STATUS_MESSAGES)})")
        for key, kind in (("message", str), ("config", dict), ("versions", dict)):
            if key in meta and not isinstance(meta[key], kind):
                raise ValueError(f"its {key} is a {type(meta[key]).__name__}, expected a {kind.__name__}")
        sizes = check_series(series, _SERIES)
        check_array_shapes(arrays, {"frames": ("L", "M", "M"), "sample_points": ("S", "M"),
                                    "sample_labels": ("S",), "truncation_times": ("N", "L", "M"),
                                    "class_ids": ("Q",)}, sizes)
        check_counts(series, _COUNT_SERIES)
        _check_times(series["t"], meta.get("config"))
        _check_finite(series, ("cost",))
        check_counts(arrays, ("sample_labels",))
        check_counts(arrays, ("class_ids",), low=None, what="class IDs")
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if str(path) in msg else f"cannot read result file {path}: {msg}") from None
    except Exception as exc:  # a corrupt or foreign file: zipfile, pickle, json errors
        raise ValueError(f"cannot read result file {path}: {type(exc).__name__}: {exc}") from None
    return Result(series, meta["status"], meta["message"], meta.get("config", {}), meta.get("versions", {}),
                  arrays)


def _check_finite(arrays: dict, names) -> None:
    """Raise ValueError unless each named array holds finite values only (names it and the first bad value)."""
    from .._validate import require_finite
    for name in names:
        require_finite(arrays[name], f"array {name!r}")


def _t_end_bound(config) -> float | None:
    """The latest time a record of a run with this config may have: its t_end (for method
    "gd" the time of its last step, ceil(t_end / lr) steps of lr); None when the config
    holds no usable t_end."""
    if not isinstance(config, dict):
        return None
    t_end, lr = config.get("t_end"), config.get("lr")
    if isinstance(t_end, bool) or not isinstance(t_end, (int, float)) or not 0 < t_end < math.inf:
        return None
    bound = float(t_end)
    if config.get("method") in ("gd", "sgd") and not isinstance(lr, bool) and isinstance(lr, (int, float)) \
            and 0 < lr < math.inf:
        bound = max(bound, max(1, math.ceil(t_end / lr * (1 - 1e-12))) * float(lr))
    return bound


def _check_times(t: np.ndarray, config) -> None:
    """Record times: finite, >= 0, never decreasing, none past the run's t_end (see :func:`_t_end_bound`)."""
    if np.iscomplexobj(t):
        raise ValueError(f"array 't' is complex (dtype {t.dtype}), expected real times")
    _check_finite({"t": t}, ("t",))
    if t.min() < 0:
        raise ValueError(f"array 't' holds a negative record time {float(t.min())!r}")
    down = np.flatnonzero(np.diff(t) < 0)
    if down.size:
        i = int(down[0])
        raise ValueError(f"array 't' is not in increasing order: t[{i + 1}] = {float(t[i + 1])!r} after "
                         f"t[{i}] = {float(t[i])!r}")
    bound = _t_end_bound(config)
    if bound is not None and t[-1] > bound * (1 + _T_END_SLACK):
        raise ValueError(f"array 't' holds records past the run's t_end = {config['t_end']!r}: the last "
                         f"at t = {float(t[-1])!r}")


def check_recorder_state(scalars, arrays: dict, *, t: float | None = None, sizes: dict | None = None,
                         n_points: int | None = None) -> None:
    """Check a recorder's part of a checkpoint (:meth:`Recorder.state`) before anything uses it.

    Raises ValueError naming the entry: ``n_records`` not a whole number >= 1; a missing
    ``row__*`` series (one per ``_SERIES``) or ``array__sample_points``,
    ``array__sample_labels``, ``array__class_ids``, ``last_hash``; series whose record
    count differs from ``n_records`` or whose sizes disagree (``check_series``), also
    with the run-level arrays and with ``sizes`` ({"L", "M", "Q", "S"} of this run, when
    given); record times that are not finite, not strictly increasing, negative or past
    ``t`` (the time the checkpoint was taken, when given); costs and parameters that are
    not finite; counters and labels that are not whole numbers >= 0; a ``last_hash`` that
    is not one integer per point (``n_points``, when given).
    """
    from .._validate import check_array_shapes, check_counts, check_series, integer
    if not isinstance(scalars, dict):
        raise ValueError(f"its state entry 'recorder' is a {type(scalars).__name__}, expected a table")
    n = integer(scalars.get("n_records"), "its recorder's n_records", low=1, high=2**62)
    names = [f"row__{k}" for k in _SERIES] + ["array__sample_points", "array__sample_labels",
                                              "array__class_ids", "last_hash"]
    missing = [k for k in names if k not in arrays]
    if missing:
        raise ValueError(f"it lacks the array(s) {', '.join(map(repr, missing))} of its records")
    rows = {f"row__{k}": arrays[f"row__{k}"] for k in _SERIES}
    found = check_series(rows, {f"row__{k}": spec for k, spec in _SERIES.items()})
    if found["T"] != n:
        raise ValueError(f"its record series hold {found['T']} records, but its recorder's n_records is {n}")
    for dim, value in (sizes or {}).items():
        if dim in found and found[dim] != value:
            raise ValueError(f"its records have {dim} = {found[dim]}, this run has {dim} = {value}")
    run_arrays = {k: arrays[k] for k in arrays if k.startswith("array__")}
    check_array_shapes(run_arrays, {"array__frames": ("L", "M", "M"), "array__sample_points": ("S", "M"),
                                    "array__sample_labels": ("S",), "array__class_ids": ("Q",)}, found)
    if sizes and "S" in sizes and found["S"] != sizes["S"]:
        raise ValueError(f"array 'array__sample_points' holds a data sample of {found['S']} points, this run's "
                         f"has {sizes['S']}")
    for name, a in list(rows.items()) + list(run_arrays.items()):
        if np.iscomplexobj(a):
            raise ValueError(f"array {name!r} is complex (dtype {a.dtype}), expected real numbers")
    check_counts(rows, [f"row__{k}" for k in _COUNT_SERIES] + ["row__sliding_points"])
    check_counts(run_arrays, ("array__sample_labels",))
    check_counts(run_arrays, ("array__class_ids",), low=None, what="class IDs")
    _check_finite(rows, ["row__t", "row__cost"] + [f"row__{k}" for k in _PARAM_SERIES])
    times = rows["row__t"]
    if times.min() < 0:
        raise ValueError(f"array 'row__t' holds a negative record time {float(times.min())!r}")
    if np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise ValueError(f"array 'row__t' is not strictly increasing: t[{i + 1}] = {float(times[i + 1])!r} "
                         f"after t[{i}] = {float(times[i])!r}")
    if t is not None and times[-1] > t:
        raise ValueError(f"array 'row__t' holds a record at t = {float(times[-1])!r}, after the checkpoint's "
                         f"t = {t!r}")
    h = arrays["last_hash"]
    if not isinstance(h, np.ndarray) or h.ndim != 1 or not np.issubdtype(h.dtype, np.integer) or \
            (n_points is not None and h.shape[0] != n_points):
        want = "(n_points,)" if n_points is None else f"({n_points},)"
        raise ValueError(f"array 'last_hash' has shape {getattr(h, 'shape', None)} and dtype "
                         f"{getattr(h, 'dtype', type(h).__name__)}, expected {want} integers (a pattern "
                         "hash per point)")


def data_sample(dataset, size: int = SAMPLE_SIZE) -> dict:
    """A fixed random subsample of the data (seed 0): {"sample_points", "sample_labels"}."""
    N = dataset.n_points
    idx = np.arange(N) if N <= size else np.sort(np.random.default_rng(0).choice(N, size, replace=False))
    points, labels = dataset.rows(idx)          # a DistributedDataset gathers them from its workers
    return {"sample_points": points, "sample_labels": labels}


class Recorder:
    """Collects records during a run; turns them into a :class:`Result`."""

    def __init__(self, dataset, kind: str, config: dict, like: "Recorder | None" = None):
        """``like``: a recorder of the same dataset object whose shift and data sample are
        copied rather than computed again (an ensemble's members)."""
        self.dataset = dataset
        self.kind = kind
        self.config = config
        self._last_hash = None
        self._rows: dict[str, list] = {k: [] for k in _SERIES}
        if like is not None and like.dataset is dataset:
            self._shift = like._shift
            self.arrays = {k: np.array(like.arrays[k]) for k in ("sample_points", "sample_labels", "class_ids")}
            return
        self._shift = np.ascontiguousarray(cluster_means(dataset))
        self.arrays: dict = data_sample(dataset)
        self.arrays["class_ids"] = np.array(dataset.class_ids, dtype=np.int64)

    def record(self, t: float, params: Params, grad_norm: float, counters: dict,
               observation: Observation | None = None) -> float:
        """Observe ``params`` at time t and keep one record; returns the cost.

        ``observation``: ``observe_checked(params, self.dataset, self.kind, self._shift)``
        when the caller has made it already (an ensemble observes its members together)."""
        obs = observation or observe_checked(params, self.dataset, self.kind, self._shift)
        changes = 0 if self._last_hash is None else pattern_changes(obs.pattern_hash, self._last_hash)
        self._last_hash = obs.pattern_hash
        P = params.out_dim or 0
        M = params.width
        rows = self._rows
        # the observation's arrays are made for this record: kept, not copied
        for k, v in (("t", float(t)), ("cost", obs.cost), ("cost_per_cluster", obs.cost_per_cluster),
                     ("grad_norm", float(grad_norm)), ("truncated_fraction", obs.truncated_fraction),
                     ("collapsed_fraction", obs.collapsed_fraction),
                     ("coordinate_truncated_fraction", obs.coordinate_truncated_fraction),
                     ("free_coordinates", obs.free_coordinates), ("spread", obs.spread),
                     ("collapse_ratio", obs.collapse_ratio), ("n_patterns", obs.n_patterns),
                     ("pattern_changes", changes), ("steps_accepted", int(counters["accepted"])),
                     ("steps_rejected", int(counters["rejected"])), ("evaluations", int(counters["evaluations"]))):
            rows[k].append(v)
        if not P:
            rows["out_weight"].append(np.zeros((0, M)))
            rows["out_bias"].append(np.zeros(0))
        if "sliding" not in counters:
            rows["sliding_points"].append(np.zeros(obs.truncated_fraction.shape, dtype=np.int64))
        row = {"weights": params.weights, "biases": params.biases, "cum_weights": params.cum_weights,
               "cum_biases": params.cum_biases}
        if P:
            row.update(out_weight=params.out_weight, out_bias=params.out_bias)
        if "sliding" in counters:
            row["sliding_points"] = counters["sliding"]
        if params.is_aligned:
            self.arrays.setdefault("frames", np.array(params.frames))
        for k, v in row.items():
            # a read-only array that is no view of another array (Params') cannot change: kept, not copied
            keep = isinstance(v, np.ndarray) and not v.flags.writeable and not isinstance(v.base, np.ndarray)
            rows[k].append(v if keep else np.array(v, copy=True))
        return obs.cost

    @property
    def shift(self) -> np.ndarray:
        """(Q, M) the origin of the records' moment sums: the clusters' input means."""
        return self._shift

    @property
    def n_records(self) -> int:
        return len(self._rows["t"])

    @property
    def times(self) -> list[float]:
        """The record times so far."""
        return [float(t) for t in self._rows["t"]]

    def column(self, name: str) -> np.ndarray:
        """One per-record quantity of the records so far, stacked (leading axis: records)."""
        return np.array(self._rows[name])

    @property
    def last_time(self) -> float | None:
        return float(self._rows["t"][-1]) if self._rows["t"] else None

    def state(self) -> tuple[dict, dict]:
        """(scalars, arrays) from which :meth:`restore` rebuilds this recorder exactly (checkpoints)."""
        arrays = {f"row__{k}": np.array(v) for k, v in self._rows.items()}
        arrays.update({f"array__{k}": v for k, v in self.arrays.items()})
        if self._last_hash is not None:
            arrays["last_hash"] = self._last_hash
        return {"n_records": self.n_records}, arrays

    def restore(self, scalars: dict, arrays: dict) -> None:
        """Continue from a :meth:`state` (of a recorder of the same data and kind).

        The state is checked first (:func:`check_recorder_state`): a damaged one raises
        ValueError and leaves this recorder as it was."""
        check_recorder_state(scalars, arrays, n_points=getattr(self.dataset, "n_points", None))
        n = int(scalars["n_records"])
        self._rows = {k: list(arrays[f"row__{k}"]) for k in _SERIES}
        if any(len(v) != n for v in self._rows.values()):
            raise ValueError("checkpoint is inconsistent: its record series differ in length")
        self.arrays = {k[len("array__"):]: v for k, v in arrays.items() if k.startswith("array__")}
        self._last_hash = arrays.get("last_hash")

    def result(self, status: str, detail: str = "") -> Result:
        series = {k: np.array(v) for k, v in self._rows.items()}
        status = Status(status)             # stored as its plain string: files keep it
        message = status.message + (f": {detail}" if detail else "")
        return Result(series, status.value, message, dict(self.config), package_versions(), dict(self.arrays))
