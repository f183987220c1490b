"""Checkpoints: a running flow's whole state on disk, so that a killed run can continue.

A checkpoint holds everything the stepping loop needs to continue *bit for bit* as if
it had never stopped: the state vector, the stepper's derivative and step size
(rk45), the iteration count (gd; sgd: and its velocity), the counters, the record
schedule still pending, the records made so far, and the wall time spent. It is
written after an accepted step (never in the middle of one) to a temporary file
renamed over the old one, so a kill at any moment leaves the previous checkpoint or
the new one.

It also holds a fingerprint of the run (its options, the initial parameters and a
digest of the data): resuming with other data or options is refused, not silently
continued. The file is an ``.npz`` read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import zipfile
from pathlib import Path

import numpy as np

from .._files import atomic_savez
from .._validate import finite_number, integer, require_finite

__all__ = ["Checkpointer", "load_checkpoint", "check_state", "fingerprint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
#: Options that may change between the stopped run and its resumption: the stopping rules.
_MAY_CHANGE = ("max_time", "max_evals", "cost_tol", "grad_tol")


#: Rows hashed at a time by _digest.
_DIGEST_ROWS = 1 << 20


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.asarray(a)
        a = a.reshape(1) if a.ndim == 0 else a          # as np.ascontiguousarray made it
        h.update(str((a.dtype.str, a.shape)).encode())
        for i in range(0, a.shape[0], _DIGEST_ROWS):    # the bytes in C order, a block of rows at a time:
            block = np.ascontiguousarray(a[i:i + _DIGEST_ROWS])     # no copy of a memory-mapped file
            h.update(block.view(np.uint8).ravel())
    return h.hexdigest()


def fingerprint(problem, options: dict, schedule) -> dict:
    """What must agree between a checkpoint and the run that resumes it (JSON-able).

    ``options`` are the flow's options as :func:`simulate` normalized them, ``schedule``
    its record times.
    """
    from .record import _json_default  # noqa: PLC0415 (record imports observe, which is heavy)

    p, d = problem.params, problem.dataset
    options = {k: v for k, v in options.items() if k not in _MAY_CHANGE}
    return {
        "options": json.loads(json.dumps(options, default=_json_default)),
        "params": _digest(p.cum_weights, p.cum_biases, p.out_weight, p.out_bias),
        "data": _digest(d.points, d.labels, d.targets),
        "schedule": _digest(np.asarray(schedule, dtype=np.float64)),
    }


class Checkpointer:
    """Writes a run's checkpoints to ``path`` at most every ``every`` seconds.

    The loop calls :meth:`offer` between steps with a function that returns
    ``(scalars, arrays)`` of its state; it is called and written only when due (or
    forced: after the first record, and when the run stops early).
    """

    def __init__(self, path, every: float, fingerprint: dict, method: str):
        self.path = Path(path)
        self.every = float(every)
        self.fingerprint = fingerprint
        self.method = method
        self._last_write = -np.inf
        self.n_written = 0

    def offer(self, take_state, force: bool = False) -> None:
        """Write ``take_state()`` (the loop's ``(scalars, arrays)``) if ``every`` seconds have passed.

        Called between steps only, where the loop's state is consistent; the state is
        taken only when it is written.
        """
        if not force and time.monotonic() - self._last_write < self.every:
            return
        scalars, arrays = take_state()
        meta = {"format": CHECKPOINT_FORMAT, "method": self.method, "fingerprint": self.fingerprint,
                "state": scalars}
        atomic_savez(self.path, __checkpoint__=np.array(json.dumps(meta)), **arrays)
        self._last_write = time.monotonic()
        self.n_written += 1

    def remove(self) -> None:
        """Delete the checkpoint file (the run finished: its result is the record)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def load_checkpoint(path, expected: dict, method: str, *, n_state: int | None = None,
                    t_end: float | None = None, schedule=None) -> tuple[dict, dict]:
    """(scalars, arrays) of the checkpoint at ``path``, after checking it belongs to this run
    and is whole, before anything of it is used.

    Args:
        expected: this run's :func:`fingerprint`; method: "rk45", "kinks", "gd" or "sgd";
        n_state: the length of this run's state vector (``problem.pack(params).size``);
        t_end: the run's end time; schedule: its record times (0 first, increasing).
        Pass all three. (Left out, as by callers written before they existed: t_end is
        the fingerprint's, the arrays need only agree in length with ``y``, and the
        pending record times need only be increasing times after t.)

    Raises ValueError, one sentence naming the checkpoint and the entry, for:

    * a missing or foreign file, a format or method other than this run's, a fingerprint
      (options, initial parameters, data, record times) that differs from ``expected``;
    * the state's scalars: rk45 and kinks ``t`` a number in [0, t_end], ``h_abs`` finite > 0,
      ``status`` "running" or "finished" (then t = t_end; "failed" too when the run
      finished); gd and sgd ``k`` a whole number with k steps of lr not past the last step
      (before it unless the run finished; sgd's batches are a function of k and of the
      options in the fingerprint: batch_size, replacement, seed, momentum); ``counters``
      a table of whole numbers >= 0 with
      accepted, rejected and evaluations; ``evaluations`` a whole number >= the counted
      one; ``elapsed`` finite >= 0; ``cost`` and ``grad_norm`` numbers; ``pending`` the
      record times of ``schedule`` after t, in order; ``finished`` (optional) a table of a
      known status and a detail string;
    * the arrays: ``y`` (and ``f`` for rk45 and kinks, the velocity ``v`` for sgd) float64 of
      shape (n_state,), finite;
    * kinks: its stepper, step limit, last accepted state, step controller, counts, pattern,
      sliding set and sliding intervals (:func:`_check_kinks_state`);
      ``eval_y`` and ``eval_rhs`` float64 of shape (n_state,), and when ``eval_y`` is the
      state ``y`` of a run that goes on (the evaluation is used again) ``eval_rhs``,
      ``cost`` and ``grad_norm`` finite;
    * the records (:func:`record.check_recorder_state`): their number, shapes and sizes
      (L, M, Q and the data sample of this run), times finite, increasing, in [0, t],
      finite costs and parameters, whole counters, a pattern hash per point.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a truncflow checkpoint (not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            meta = json.loads(str(z["__checkpoint__"])) if "__checkpoint__" in names else None
            arrays = {k: z[k] for k in names if k != "__checkpoint__"}
    except Exception as exc:  # corrupt file
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise ValueError(f"{path} is not a truncflow checkpoint (no valid __checkpoint__ entry)")
    if isinstance(meta.get("format"), bool) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}; this truncflow reads "
                         f"format {CHECKPOINT_FORMAT}")
    if meta.get("method") != method:
        raise ValueError(f"checkpoint {path} is of a method={meta.get('method')!r} run, not {method!r}")
    found = meta.get("fingerprint")
    if not isinstance(found, dict):
        raise ValueError(f"{path} is not a truncflow checkpoint (its fingerprint is a "
                         f"{type(found).__name__}, not a table)")
    for key, what in (("data", "the data (points, labels or targets)"), ("params", "the initial parameters"),
                      ("schedule", "the record times")):
        if found.get(key) != expected[key]:
            raise ValueError(f"checkpoint {path} does not belong to this run: {what} differ")
    if found.get("options") != expected["options"]:
        a, b = found.get("options"), expected["options"]
        a = a if isinstance(a, dict) else {}
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"checkpoint {path} does not belong to this run: options differ "
                         f"({', '.join(f'{k}: {a.get(k)!r} there, {b.get(k)!r} here' for k in keys[:4])})")
    try:
        if t_end is None:
            t_end = finite_number(expected["options"].get("t_end"), "the run's t_end", low=0.0)
        if n_state is None:
            y = arrays.get("y")
            n_state = y.shape[0] if isinstance(y, np.ndarray) and y.ndim == 1 else -1
        check_state(meta["state"], arrays, method, n_state=n_state, t_end=t_end, schedule=schedule,
                    options=expected["options"])
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} is damaged: {exc}") from None
    return meta["state"], arrays


#: The stepper's statuses a checkpoint may hold (scipy's RK45 and CompiledRK45).
_RK45_STATUSES = ("running", "finished")
#: Largest counter a checkpoint may hold (the compiled loops count in int64).
_MAX_COUNT = 2**62
#: Relative slack of the comparisons of times (the gd loop's ``t * (1 + 1e-12)``).
_TIME_SLACK = 1e-12


def _float64_vector(arrays: dict, name: str, n_state: int, *, finite: bool = True) -> np.ndarray:
    a = arrays.get(name)
    if a is None:
        raise ValueError(f"it lacks the array {name!r}")
    if a.dtype != np.float64 or a.shape != (n_state,):
        raise ValueError(f"array {name!r} has shape {a.shape} and dtype {a.dtype}, expected float64 of "
                         f"shape ({n_state},) (the length of this run's state)")
    if finite:
        require_finite(a, f"array {name!r}")
    return a


def check_state(state: dict, arrays: dict, method: str, *, n_state: int, t_end: float, schedule,
                options: dict) -> None:
    """Check a checkpoint's state (its scalars and arrays) for a run of ``method``; see
    :func:`load_checkpoint`. Raises ValueError naming the entry (without the path)."""
    from .record import STATUS_MESSAGES, check_recorder_state  # noqa: PLC0415 (record imports observe)

    def entry(name):
        if name not in state:
            raise ValueError(f"its state lacks the entry {name!r}")
        return state[name]

    def count(name, value, low=0):
        return integer(value, f"its state entry {name!r}", low=low, high=_MAX_COUNT)

    t_end = float(t_end)
    finished = state.get("finished")
    if finished is not None:
        if not isinstance(finished, dict) or not isinstance(finished.get("status"), str) or \
                finished["status"] not in STATUS_MESSAGES or not isinstance(finished.get("detail"), str):
            raise ValueError(f"its state entry 'finished' must be a table of a status (one of "
                             f"{', '.join(STATUS_MESSAGES)}) and a detail string, got {finished!r}")

    # the stepper's part: the time reached
    if method in ("rk45", "kinks"):
        t = finite_number(entry("t"), "its state entry 't'", low=0.0, high=t_end)
        h_abs = entry("h_abs")
        try:
            ok = finite_number(h_abs, "h_abs", low=0.0) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"its state entry 'h_abs' (the step size) must be a finite number > 0, got {h_abs!r}")
        status = entry("status")
        statuses = _RK45_STATUSES + (("failed",) if finished is not None else ())
        if not isinstance(status, str) or status not in statuses:
            raise ValueError(f"its state entry 'status' must be one of {', '.join(map(repr, statuses))}, "
                             f"got {status!r}")
        if status == "finished" and t != t_end:
            raise ValueError(f"its state entry 'status' is 'finished' at t = {t!r}, before t_end = {t_end!r}")
    else:
        lr = finite_number(options.get("lr"), "the run's lr", low=0.0)
        if lr <= 0:
            raise ValueError(f"the run's lr must be > 0, got {lr!r}")
        n_steps = max(1, math.ceil(t_end / lr * (1 - 1e-12)))     # _GdLoop.n_steps
        last = n_steps if finished is not None else n_steps - 1
        k = entry("k")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= last:
            raise ValueError(f"its state entry 'k' must be a whole number of steps in [0, {last}] (steps of "
                             f"lr = {lr!r} up to t_end = {t_end!r}), got {k!r}")
        t = k * lr
    # the loop's part
    counters = entry("counters")
    if not isinstance(counters, dict) or not all(k in counters for k in ("accepted", "rejected", "evaluations")):
        raise ValueError(f"its state entry 'counters' must be a table of accepted, rejected and evaluations, "
                         f"got {counters!r}")
    for key, value in counters.items():
        count(f"counters.{key}", value)
    evaluations = count("evaluations", entry("evaluations"))
    if evaluations < counters["evaluations"]:
        raise ValueError(f"its state entry 'evaluations' ({evaluations}) is below the evaluations counted at "
                         f"the last record ({counters['evaluations']})")
    finite_number(entry("elapsed"), "its state entry 'elapsed'", low=0.0)
    pending = entry("pending")
    if not isinstance(pending, list):
        raise ValueError(f"its state entry 'pending' must be a list of record times, got {pending!r}")
    for v in pending:
        finite_number(v, "its state entry 'pending': each record time", low=0.0, high=t_end)
    # the record times still to come: those of the schedule after t (the gd loop's "after"
    # has a slack of 1e-12 t)
    pending_array = np.asarray(pending, dtype=np.float64)
    if schedule is None:    # (a caller that does not say): increasing times after t at least
        if np.any(np.diff(pending_array) <= 0) or (pending and pending[0] <= t * (1 - _TIME_SLACK)):
            raise ValueError(f"its state entry 'pending' must be increasing record times after t = {t!r}, "
                             f"got {_short(pending)}")
    else:
        later = np.asarray(schedule, dtype=np.float64)[1:]
        n_least = int(np.count_nonzero(later > t * (1 + _TIME_SLACK)))
        n_most = int(np.count_nonzero(later > t * (1 - _TIME_SLACK)))
        tail = later[later.size - len(pending):] if pending else later[:0]
        if not (n_least <= len(pending) <= n_most) or not np.array_equal(pending_array, tail):
            raise ValueError(f"its state entry 'pending' must be the {n_least} record time(s) of this run "
                             f"after t = {t!r}, in order, got {_short(pending)}")
    for name in ("cost", "grad_norm"):      # NaN allowed here: see the evaluation below
        value = entry(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _is_float(value):
            raise ValueError(f"its state entry {name!r} must be a number, got {_short(value)}")

    # the arrays
    y = _float64_vector(arrays, "y", n_state)
    if method in ("rk45", "kinks"):
        _float64_vector(arrays, "f", n_state)
    if method == "kinks":
        _check_kinks_state(state, arrays, n_state=n_state, t=t, t_end=t_end, options=options)
    if method == "sgd":
        _float64_vector(arrays, "v", n_state)          # the momentum's velocity
    eval_y = _float64_vector(arrays, "eval_y", n_state, finite=False)
    # The loop's last evaluation (cost, grad_norm, eval_rhs at eval_y) is used again only when it
    # is of the state y and the run goes on: then it must be valid. Another one (of the last
    # record; of a trial step a signal interrupted) or that of a finished run may be NaN.
    reused = finished is None and np.array_equal(eval_y, y)
    _float64_vector(arrays, "eval_rhs", n_state, finite=reused)
    if reused:
        for name in ("cost", "grad_norm"):
            finite_number(state[name], f"its state entry {name!r} (of its state y)")

    # the records
    sizes = {dim: options[key] for dim, key in (("L", "n_layers"), ("M", "width"), ("Q", "n_clusters"))
             if isinstance(options.get(key), int)}
    n_points = options.get("n_points") if isinstance(options.get("n_points"), int) else None
    if n_points is not None:
        from .record import SAMPLE_SIZE  # noqa: PLC0415
        sizes["S"] = min(n_points, SAMPLE_SIZE)
    check_recorder_state(entry("recorder"), arrays, t=t * (1 + _TIME_SLACK), sizes=sizes, n_points=n_points)


#: The steppers of method="kinks" (``engine.kinks.controller``).
_KINKS_STEPPERS = ("RK45", "DOP853")


def _check_kinks_state(state: dict, arrays: dict, *, n_state: int, t: float, t_end: float, options: dict) -> None:
    """The kink integrator's part of a checkpoint (``KinkIntegrator._state``): the stepper's name
    and step limit, the last accepted state, the step controller, the counts, the pattern, the
    sliding set and the sliding intervals. Raises ValueError naming the entry."""
    def entry(name):
        if name not in state:
            raise ValueError(f"its state lacks the entry {name!r}")
        return state[name]

    if entry("stepper") not in _KINKS_STEPPERS:
        raise ValueError(f"its state entry 'stepper' must be one of {', '.join(map(repr, _KINKS_STEPPERS))}, "
                         f"got {_short(state['stepper'])}")
    for name, value in (("max_step", entry("max_step")),):
        if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
            raise ValueError(f"its state entry {name!r} must be a finite number > 0 or null, got {_short(value)}")
    last_t = finite_number(entry("last_t"), "its state entry 'last_t'", low=0.0, high=t_end)
    if last_t < t:
        raise ValueError(f"its state entry 'last_t' ({last_t!r}) is before the stepper's time t = {t!r}")
    _float64_vector(arrays, "last_y", n_state)
    control = entry("control")
    if not isinstance(control, dict) or set(control) != {"h_cap", "redos", "stuck", "located_left"}:
        raise ValueError(f"its state entry 'control' must be a table of h_cap, redos, stuck and located_left, "
                         f"got {_short(control)}")
    h_cap = control["h_cap"]
    if h_cap is not None and not (_is_number(h_cap) and math.isfinite(h_cap) and h_cap > 0):
        raise ValueError(f"its state entry 'control.h_cap' must be a finite number > 0 or null, got {_short(h_cap)}")
    for key in ("redos", "stuck", "located_left"):
        integer(control[key], f"its state entry 'control.{key}'", low=0, high=_MAX_COUNT)
    stats = entry("stats")
    if not isinstance(stats, dict) or stats.get("stepper") != state["stepper"]:
        raise ValueError(f"its state entry 'stats' must be a table of counts naming the stepper "
                         f"{state['stepper']!r}, got {_short(stats)}")
    for key, value in stats.items():
        if key != "stepper":
            integer(value, f"its state entry 'stats.{key}'", low=0, high=_MAX_COUNT)
    N, L, M = (options.get(k) for k in ("n_points", "n_layers", "width"))
    if not all(isinstance(v, int) for v in (N, L, M)):
        raise ValueError("its run's options lack n_points, n_layers or width")
    pat = arrays.get("patterns")
    shape = (N, L, -(-M // 64))
    if not isinstance(pat, np.ndarray) or pat.dtype != np.uint64 or pat.shape != shape:
        got = f"{pat.shape} {pat.dtype}" if isinstance(pat, np.ndarray) else "nothing"
        raise ValueError(f"its array 'patterns' must be uint64 of shape {shape} (points, layers, words), got {got}")
    sliding = entry("sliding")
    if not isinstance(sliding, list) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in c)
            and 0 <= c[0] < N and 0 <= c[1] < L and 0 <= c[2] < M for c in sliding) \
            or len({tuple(c) for c in sliding}) != len(sliding):
        raise ValueError(f"its state entry 'sliding' must be a list of distinct [point, layer, coordinate] "
                         f"within ({N}, {L}, {M}), got {_short(sliding)}")
    iv = arrays.get("intervals")
    if not isinstance(iv, np.ndarray) or iv.dtype != np.float64 or iv.ndim != 2 or iv.shape[1] != 5:
        raise ValueError("its array 'intervals' must be float64 of shape (n, 5) (point, layer, coordinate, "
                         "entry time, exit time)")
    ids, t_in, t_out = iv[:, :3], iv[:, 3], iv[:, 4]
    if not (np.all(np.isfinite(ids)) and np.array_equal(ids, np.round(ids)) and np.all(ids >= 0)
            and np.all(ids < np.array([N, L, M]))):
        raise ValueError(f"its array 'intervals' must start each row with a point, layer and coordinate "
                         f"within ({N}, {L}, {M})")
    if not (np.all(np.isfinite(t_in)) and np.all((t_in >= 0) & (t_in <= last_t))
            and np.all(np.isnan(t_out) | ((t_out >= t_in) & (t_out <= last_t)))):
        raise ValueError(f"its array 'intervals' must hold entry times in [0, {last_t!r}] and exit times "
                         f"after them (NaN: still sliding)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_float(value) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _short(values) -> str:
    text = repr(values)
    return text if len(text) <= 80 else text[:77] + "..."
