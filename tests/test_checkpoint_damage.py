"""A damaged checkpoint is refused, with one sentence naming the checkpoint and the entry,
before anything of it runs (issue 22: a checkpoint whose t was NaN hung ``--resume``).

Real checkpoints (of rk45 and gd runs stopped by max_evals) are damaged entry by entry;
a hypothesis test draws damage at random; the command line is run in a real process.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import truncflow as tf
from conftest import make_problem
from truncflow.engine import integrate
from truncflow.engine.checkpoint import load_checkpoint

T_END = 2.0
N_RECORDS = 25
OPTIONS = {"rk45": dict(rtol=1e-7, atol=1e-10), "gd": dict(lr=0.01)}


class _Caught(Exception):
    pass


def _schedule():
    return integrate._record_schedule(T_END, None, N_RECORDS)


def _make_checkpoint(folder: Path, method: str) -> SimpleNamespace:
    """A real checkpoint of a run stopped by max_evals, and what the resuming run expects of it
    (its fingerprint, caught on its way to load_checkpoint)."""
    prob = make_problem(11, L=2, M=3, N=400, Q=2)
    params, ds = prob.params, prob.dataset("input")
    kw = dict(method=method, n_records=N_RECORDS, **OPTIONS[method])
    path = folder / f"{method}.ckpt"
    r = tf.simulate(params, ds, T_END, checkpoint=path, checkpoint_every=0, max_evals=60, **kw)
    assert r.status == "max_evals" and path.is_file()
    caught = {}

    def spy(path_, expected, method_, **kwargs):
        caught.update(expected=expected)
        raise _Caught

    real = integrate.load_checkpoint
    integrate.load_checkpoint = spy
    try:
        with pytest.raises(_Caught):
            tf.simulate(params, ds, T_END, checkpoint=path, resume=True, **kw)
    finally:
        integrate.load_checkpoint = real
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__checkpoint__"]))
        arrays = {k: z[k] for k in z.files if k != "__checkpoint__"}
    return SimpleNamespace(path=path, method=method, expected=caught["expected"], meta=meta, arrays=arrays,
                           n_state=arrays["y"].size, params=params, dataset=ds, kw=kw)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {m: _make_checkpoint(folder, m) for m in ("rk45", "gd")}


def _load(ck, path):
    return load_checkpoint(path, ck.expected, ck.method, n_state=ck.n_state, t_end=T_END, schedule=_schedule())


def _write(path: Path, meta, arrays: dict) -> Path:
    np.savez(path, __checkpoint__=np.array(json.dumps(meta)), **arrays)
    return path


def _copy(ck):
    return json.loads(json.dumps(ck.meta)), {k: np.array(v) for k, v in ck.arrays.items()}


def test_undamaged_checkpoints_load_and_resume(checkpoints, tmp_path):
    for ck in checkpoints.values():
        state, arrays = _load(ck, ck.path)
        assert state == ck.meta["state"] and arrays.keys() == ck.arrays.keys()
        # a final checkpoint of a finished run (written by the engine) names its status
        meta, arrays = _copy(ck)
        meta["state"]["finished"] = {"status": "max_evals", "detail": "at the limit"}
        _load(ck, _write(tmp_path / f"finished_{ck.method}.npz", meta, arrays))
        # rewritten as the tests below rewrite it, undamaged, it resumes to the end
        copy = _write(tmp_path / f"copy_{ck.method}.npz", *_copy(ck))
        r = tf.simulate(ck.params, ck.dataset, T_END, checkpoint=copy, resume=True, **ck.kw)
        assert r.status == "t_end" and r.n_records > ck.meta["state"]["recorder"]["n_records"]


def _set(*keys, value):
    def change(meta, arrays):
        node = meta["state"]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


def _drop(key):
    def change(meta, arrays):
        if key in arrays:
            del arrays[key]
        else:
            del meta["state"][key]
    return change


def _array(key, fn):
    def change(meta, arrays):
        arrays[key] = fn(arrays[key])
    return change


def _nan_at_first(a):
    a = np.array(a, dtype=np.float64)
    a.reshape(-1)[0] = np.nan
    return a


def _pending(fn):
    def change(meta, arrays):
        meta["state"]["pending"] = fn(meta["state"]["pending"])
    return change


# (method, change, words in the message)
DAMAGE = {
    "t_nan": ("rk45", _set("t", value=math.nan), "'t'"),
    "t_past_t_end": ("rk45", _set("t", value=1e9), "'t'"),
    "t_negative": ("rk45", _set("t", value=-0.5), "'t'"),
    "t_string": ("rk45", _set("t", value="0.1"), "'t'"),
    "t_missing": ("rk45", _drop("t"), "'t'"),
    "t_huge_int": ("rk45", _set("t", value=10**400), "'t'"),
    "y_too_short": ("rk45", _array("y", lambda a: a[:-1]), "'y'"),
    "y_nan": ("rk45", _array("y", _nan_at_first), "'y'"),
    "y_inf": ("gd", _array("y", lambda a: np.full_like(a, np.inf)), "'y'"),
    "y_float32": ("rk45", _array("y", lambda a: a.astype(np.float32)), "'y'"),
    "y_2d": ("gd", _array("y", lambda a: a[None]), "'y'"),
    "y_missing": ("gd", _drop("y"), "'y'"),
    "f_missing": ("rk45", _drop("f"), "'f'"),
    "f_nan": ("rk45", _array("f", _nan_at_first), "'f'"),
    "h_abs_zero": ("rk45", _set("h_abs", value=0.0), "'h_abs'"),
    "h_abs_nan": ("rk45", _set("h_abs", value=math.nan), "'h_abs'"),
    "h_abs_negative": ("rk45", _set("h_abs", value=-1e-3), "'h_abs'"),
    "status_unknown": ("rk45", _set("status", value="exploded"), "'status'"),
    "status_failed_unfinished": ("rk45", _set("status", value="failed"), "'status'"),
    "status_finished_before_t_end": ("rk45", _set("status", value="finished"), "'status'"),
    "k_negative": ("gd", _set("k", value=-1), "'k'"),
    "k_past_t_end": ("gd", _set("k", value=10**9), "'k'"),
    "k_not_whole": ("gd", _set("k", value=2.5), "'k'"),
    "k_bool": ("gd", _set("k", value=True), "'k'"),
    "k_missing": ("gd", _drop("k"), "'k'"),
    "accepted_negative": ("rk45", _set("counters", "accepted", value=-1), "'counters.accepted'"),
    "rejected_not_whole": ("rk45", _set("counters", "rejected", value=2.5), "'counters.rejected'"),
    "counted_evaluations_nan": ("gd", _set("counters", "evaluations", value=math.nan), "'counters.evaluations'"),
    "counters_incomplete": ("rk45", _set("counters", value={"accepted": 1}), "'counters'"),
    "counters_a_list": ("gd", _set("counters", value=[1, 2, 3]), "'counters'"),
    "evaluations_negative": ("rk45", _set("evaluations", value=-3), "'evaluations'"),
    "evaluations_below_counted": ("rk45", _set("evaluations", value=0), "'evaluations'"),
    "elapsed_nan": ("gd", _set("elapsed", value=math.nan), "'elapsed'"),
    "elapsed_negative": ("rk45", _set("elapsed", value=-1.0), "'elapsed'"),
    "cost_a_string": ("rk45", _set("cost", value="low"), "'cost'"),
    "cost_nan_reused": ("rk45", lambda meta, arrays: (_set("cost", value=math.nan)(meta, arrays),
                                                      arrays.update(eval_y=arrays["y"].copy())), "'cost'"),
    "grad_norm_inf_reused": ("gd", _set("grad_norm", value=math.inf), "'grad_norm'"),
    "pending_unsorted": ("rk45", _pending(lambda p: p[::-1]), "'pending'"),
    "pending_outside_schedule": ("rk45", _pending(lambda p: [p[0] + 1e-3] + p[1:]), "'pending'"),
    "pending_one_missing": ("gd", _pending(lambda p: p[1:]), "'pending'"),
    "pending_one_before_t": ("rk45", _pending(lambda p: [1e-3] + p), "'pending'"),
    "pending_nan": ("gd", _pending(lambda p: p[:-1] + [math.nan]), "'pending'"),
    "pending_not_a_list": ("rk45", _set("pending", value=1.0), "'pending'"),
    "eval_y_too_long": ("rk45", _array("eval_y", lambda a: np.concatenate([a, a])), "'eval_y'"),
    "eval_rhs_nan_reused": ("gd", _array("eval_rhs", _nan_at_first), "'eval_rhs'"),
    "eval_rhs_missing": ("rk45", _drop("eval_rhs"), "'eval_rhs'"),
    "records_cost_truncated": ("rk45", _array("row__cost", lambda a: a[:-1]), "'row__cost'"),
    "records_weights_truncated": ("gd", _array("row__weights", lambda a: a[:, :, :2]), "'row__weights'"),
    "records_t_nan": ("rk45", _array("row__t", _nan_at_first), "'row__t'"),
    "records_t_past_t": ("rk45", _array("row__t", lambda a: np.append(a[:-1], 1.5)), "'row__t'"),
    "records_t_decreasing": ("gd", _array("row__t", lambda a: a[::-1]), "'row__t'"),
    "records_series_missing": ("rk45", _drop("row__spread"), "'row__spread'"),
    "records_counter_negative": ("gd", _array("row__evaluations", lambda a: -a - 1), "'row__evaluations'"),
    "records_n_records_wrong": ("rk45", _set("recorder", "n_records", value=3), "n_records"),
    "records_n_records_zero": ("gd", _set("recorder", "n_records", value=0), "n_records"),
    "recorder_not_a_table": ("rk45", _set("recorder", value=[12]), "'recorder'"),
    "sample_points_truncated": ("rk45", _array("array__sample_points", lambda a: a[:, :2]),
                                "'array__sample_points'"),
    "sample_points_other_size": ("gd", lambda meta, arrays: arrays.update(
        array__sample_points=arrays["array__sample_points"][:-1],
        array__sample_labels=arrays["array__sample_labels"][:-1]), "data sample"),
    "last_hash_truncated": ("rk45", _array("last_hash", lambda a: a[:-1]), "'last_hash'"),
    "last_hash_float": ("gd", _array("last_hash", lambda a: a.astype(np.float64)), "'last_hash'"),
    "finished_unknown_status": ("rk45", _set("finished", value={"status": "done", "detail": ""}), "'finished'"),
    "finished_a_string": ("gd", _set("finished", value="t_end"), "'finished'"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_entry(checkpoints, tmp_path, name):
    method, change, words = DAMAGE[name]
    ck = checkpoints[method]
    meta, arrays = _copy(ck)
    change(meta, arrays)
    path = _write(tmp_path / "damaged.npz", meta, arrays)
    with pytest.raises(ValueError) as info:
        _load(ck, path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} is damaged: "), message
    assert words in message, message


FILE_DAMAGE = {
    "garbage_bytes": (lambda path, meta, arrays: path.write_bytes(b"\x00garbage" * 50), "not an .npz"),
    "empty_file": (lambda path, meta, arrays: path.write_bytes(b""), "not an .npz"),
    "truncated_zip": (lambda path, meta, arrays: path.write_bytes(_write(path, meta, arrays).read_bytes()[:-200]),
                      "checkpoint"),
    "no_checkpoint_entry": (lambda path, meta, arrays: np.savez(path, **arrays), "no valid __checkpoint__ entry"),
    "json_a_list": (lambda path, meta, arrays: np.savez(path, __checkpoint__=np.array("[1, 2]"), **arrays),
                    "no valid __checkpoint__ entry"),
    "json_invalid": (lambda path, meta, arrays: np.savez(path, __checkpoint__=np.array("{"), **arrays),
                     "cannot read checkpoint"),
    "checkpoint_entry_numbers": (lambda path, meta, arrays: np.savez(path, __checkpoint__=np.arange(3), **arrays),
                                 "checkpoint"),
    "pickled_array": (lambda path, meta, arrays: np.savez(path, __checkpoint__=np.array(json.dumps(meta)),
                                                          **dict(arrays, y=np.array([{}], dtype=object))),
                      "cannot read checkpoint"),
    "state_a_list": (lambda path, meta, arrays: _write(path, dict(meta, state=[1]), arrays),
                     "no valid __checkpoint__ entry"),
    "format_99": (lambda path, meta, arrays: _write(path, dict(meta, format=99), arrays), "format 99"),
    "fingerprint_a_list": (lambda path, meta, arrays: _write(path, dict(meta, fingerprint=[1]), arrays),
                           "fingerprint"),
    "options_a_list": (lambda path, meta, arrays: _write(path, dict(meta, fingerprint=dict(
        meta["fingerprint"], options=[1])), arrays), "options differ"),
}


@pytest.mark.parametrize("name", sorted(FILE_DAMAGE))
def test_damaged_checkpoint_file_is_refused(checkpoints, tmp_path, name):
    damage, words = FILE_DAMAGE[name]
    ck = checkpoints["rk45"]
    meta, arrays = _copy(ck)
    path = tmp_path / "damaged.npz"
    damage(path, meta, arrays)
    with pytest.raises(ValueError) as info:
        _load(ck, path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message, message


def test_evaluation_not_of_the_state_need_not_be_finite(checkpoints, tmp_path):
    """The loop's last evaluation is reused only when it is of the state y (the rk45 loop's
    is of its last record, here): another one, e.g. of a trial step a signal interrupted,
    may be NaN; a checkpoint is refused for it only when it would be used."""
    ck = checkpoints["rk45"]
    assert not np.array_equal(ck.arrays["eval_y"], ck.arrays["y"])
    meta, arrays = _copy(ck)
    meta["state"].update(cost=math.nan, grad_norm=math.inf)
    arrays.update(eval_y=np.full_like(arrays["y"], np.inf), eval_rhs=np.full_like(arrays["y"], np.nan))
    _load(ck, _write(tmp_path / "trial.npz", meta, arrays))
    arrays["eval_y"] = arrays["y"].copy()
    with pytest.raises(ValueError, match="is damaged: .*('eval_rhs'|'cost')"):
        _load(ck, _write(tmp_path / "trial.npz", meta, arrays))


def test_callers_that_pass_no_sizes_still_refuse_a_nan_time(checkpoints, tmp_path):
    """Without n_state, t_end and schedule (callers written before them) t_end is the
    fingerprint's: the time of issue 22 is refused all the same."""
    ck = checkpoints["rk45"]
    assert load_checkpoint(ck.path, ck.expected, "rk45")[0] == ck.meta["state"]
    for value in (math.nan, 1e9):
        meta, arrays = _copy(ck)
        meta["state"]["t"] = value
        with pytest.raises(ValueError, match="is damaged: its state entry 't'"):
            load_checkpoint(_write(tmp_path / "d.npz", meta, arrays), ck.expected, "rk45")


def test_simulate_refuses_a_damaged_checkpoint_before_running(checkpoints, tmp_path):
    ck = checkpoints["rk45"]
    meta, arrays = _copy(ck)
    meta["state"]["t"] = math.nan
    path = _write(tmp_path / "d.npz", meta, arrays)
    path.rename(tmp_path / "d.ckpt")
    with pytest.raises(ValueError, match="is damaged: its state entry 't'"):
        tf.simulate(ck.params, ck.dataset, T_END, checkpoint=tmp_path / "d.ckpt", resume=True, **ck.kw)


# ------------------------------------------------------------ random damage
_DELETE = object()

FLOAT_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0, -0.0, 5e-324, 1e9, -1.0]))
SCALAR_VALUES = st.one_of(
    FLOAT_VALUES,
    st.integers(-2**70, 2**70), st.booleans(), st.none(), st.text(max_size=4),
    st.lists(st.floats(allow_nan=True), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(_DELETE),
)
ARRAY_DTYPES = st.sampled_from([np.float64, np.float32, np.int64, np.uint64, np.bool_, np.complex128])


@st.composite
def _array_damage(draw, original: np.ndarray):
    how = draw(st.sampled_from(["delete", "element", "truncate", "cast", "random"]))
    if how == "delete":
        return _DELETE
    if how == "element" and original.size:
        a = np.array(original)
        index = draw(st.integers(0, a.size - 1))
        if np.issubdtype(a.dtype, np.floating):
            a.reshape(-1)[index] = draw(FLOAT_VALUES | st.sampled_from(
                [float(a.reshape(-1)[index])]))
        else:
            low = 0 if np.issubdtype(a.dtype, np.unsignedinteger) or a.dtype == np.bool_ else -3
            a.reshape(-1)[index] = draw(st.integers(low, 3))
        return a
    if how == "truncate" and original.ndim:
        axis = draw(st.integers(0, original.ndim - 1))
        return np.take(original, range(max(original.shape[axis] - 1, 0)), axis=axis)
    if how == "cast":
        return np.array(original).astype(draw(ARRAY_DTYPES))
    return draw(hnp.arrays(draw(ARRAY_DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))


def _scalar_paths(state):
    paths = [(k,) for k in state] + [("counters", k) for k in state["counters"]]
    paths += [("recorder", "n_records"), ("finished",)]
    if state["pending"]:
        paths.append(("pending", 0))
    return paths


def _same(meta, arrays, ck) -> bool:
    if json.dumps(meta, sort_keys=True) != json.dumps(ck.meta, sort_keys=True) or arrays.keys() != ck.arrays.keys():
        return False
    return all(a.dtype == ck.arrays[k].dtype and a.shape == ck.arrays[k].shape and a.tobytes() == ck.arrays[k].tobytes()
               for k, a in arrays.items())


def _assert_resumable(ck, state, arrays):
    """What the loops rely on, said again independently of load_checkpoint."""
    n = ck.n_state
    for name in ("y", "f") if ck.method == "rk45" else ("y",):
        a = arrays[name]
        assert a.dtype == np.float64 and a.shape == (n,) and np.isfinite(a).all(), name
    assert arrays["eval_y"].shape == (n,) and arrays["eval_rhs"].shape == (n,)
    if np.array_equal(arrays["eval_y"], arrays["y"]):
        assert np.isfinite(arrays["eval_rhs"]).all() and math.isfinite(state["cost"])
        assert math.isfinite(state["grad_norm"])
    if ck.method == "rk45":
        t = state["t"]
        assert type(t) in (int, float) and 0 <= t <= T_END
        assert type(state["h_abs"]) in (int, float) and 0 < state["h_abs"] < math.inf
        assert state["status"] == "running" or (state["status"] == "finished" and t == T_END) \
            or "finished" in state
    else:
        k = state["k"]
        assert type(k) is int and 0 <= k <= math.ceil(T_END / 0.01)
        t = k * 0.01
    assert all(type(v) is int and 0 <= v for v in state["counters"].values())
    assert type(state["evaluations"]) is int and state["evaluations"] >= 0
    assert type(state["elapsed"]) in (int, float) and 0 <= state["elapsed"] < math.inf
    pending = state["pending"]
    assert pending == sorted(pending) and set(pending) <= set(_schedule()) and all(p > t * (1 - 1e-12) for p in pending)
    n_records = state["recorder"]["n_records"]
    assert type(n_records) is int and n_records >= 1
    assert all(arrays[k].shape[:1] == (n_records,) for k in arrays if k.startswith("row__"))
    times = arrays["row__t"]
    assert np.isfinite(times).all() and np.all(np.diff(times) > 0) and times[-1] <= t * (1 + 1e-12)
    assert arrays["last_hash"].shape == (400,)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_damage_is_refused_or_harmless(checkpoints, tmp_path_factory, data):
    ck = checkpoints[data.draw(st.sampled_from(["rk45", "gd"]), label="method")]
    meta, arrays = _copy(ck)
    for _ in range(data.draw(st.integers(1, 3), label="n_damages")):
        if data.draw(st.booleans(), label="in the arrays"):
            key = data.draw(st.sampled_from(sorted(arrays) or ["y"]), label="array")
            if key not in arrays:
                continue
            value = data.draw(_array_damage(arrays[key]), label="value")
            if value is _DELETE:
                del arrays[key]
            else:
                arrays[key] = value
        else:
            path = data.draw(st.sampled_from(_scalar_paths(ck.meta["state"])), label="entry")
            value = data.draw(SCALAR_VALUES, label="value")
            node = meta["state"]
            for k in path[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict) or (isinstance(node, list) and path[-1] < len(node)):
                if value is _DELETE:
                    if isinstance(node, dict):
                        node.pop(path[-1], None)
                    else:
                        node.pop(path[-1])
                else:
                    node[path[-1]] = value
    path = tmp_path_factory.mktemp("random") / "damaged.npz"
    _write(path, meta, arrays)
    unchanged = _same(meta, arrays, ck)
    try:
        state, loaded = _load(ck, path)
    except ValueError as exc:
        assert not unchanged, exc
        message = str(exc)
        assert "\n" not in message and str(path) in message
        event("refused")
        return
    event("unchanged" if unchanged else "loaded, changed")
    _assert_resumable(ck, state, loaded)
    # ... and a run resumes from it: it ends (within the alarm) with a Result, never a hang or a traceback
    result = _resume_under_alarm(ck, path, seconds=60)
    assert result.n_records >= state["recorder"]["n_records"]
    assert np.all(np.diff(result.t) > 0) and result.t[-1] <= T_END * (1 + 1e-12)


class _Hung(BaseException):
    pass


def _resume_under_alarm(ck, path, seconds):
    """``simulate(resume=True)`` from the checkpoint at ``path``, raising _Hung after ``seconds``."""
    import signal

    def alarm(signum, frame):
        raise _Hung(f"resuming {path} did not end in {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return tf.simulate(ck.params, ck.dataset, T_END, checkpoint=path, resume=True, **ck.kw)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------ a real process
JOB = """
seed = 0
[data]
source = "gaussian"
n_points = 300
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]
[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]
[flow]
kind = "input"
t_end = 60.0
rtol = 1e-5
atol = 1e-8
max_evals = 40
[record]
n_records = 30
"""


def _cli(*args, cwd, timeout):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "truncflow", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """The folder of a real ``truncflow run`` stopped by max_evals: it holds a checkpoint."""
    folder = tmp_path_factory.mktemp("cli")
    job = folder / "job.toml"
    job.write_text(JOB)
    proc = _cli("run", job, "--out", folder / "D", "--checkpoint-every", "0", "-q", cwd=folder, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert (folder / "D" / "checkpoint.npz").is_file()
    return folder / "D"


def _damaged_copy(stopped_run, tmp_path, entry, value) -> Path:
    out = tmp_path / "D"
    shutil.copytree(stopped_run, out)
    checkpoint = out / "checkpoint.npz"
    with np.load(checkpoint, allow_pickle=False) as z:
        meta = json.loads(str(z["__checkpoint__"]))
        arrays = {k: z[k] for k in z.files if k != "__checkpoint__"}
    meta["state"][entry] = value
    _write(checkpoint, meta, arrays)
    return out


def _resume(folder, *options):
    try:
        return _cli("run", "--resume", folder, *options, cwd=folder.parent, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("truncflow run --resume on a damaged checkpoint did not end within 30 s")


@pytest.mark.parametrize("entry, value", [("t", math.nan), ("t", 1e9), ("h_abs", math.nan)])
def test_resume_from_a_damaged_checkpoint_is_one_line_exit_2_in_a_real_process(stopped_run, tmp_path, entry, value):
    """Issue 22: a checkpoint whose t is NaN hung ``truncflow run --resume``, deaf to signals."""
    proc = _resume(_damaged_copy(stopped_run, tmp_path, entry, value), "-q")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("truncflow: error: checkpoint ") and f"is damaged: its state entry '{entry}'" in lines[0]


def test_resume_from_a_damaged_checkpoint_ends_without_quiet(stopped_run, tmp_path):
    """Without --quiet the same refusal, as the last line of stderr (the progress bar's
    "starting" line may come before it: the command line starts its bar before the
    checkpoint is read; and with an empty Numba cache, the notice that kernels compile)."""
    proc = _resume(_damaged_copy(stopped_run, tmp_path, "t", math.nan))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("truncflow: error: checkpoint ") and "is damaged: its state entry 't'" in lines[-1]
    notices = ("flow time: starting", "compiling the Numba kernels for the first time")   # an empty cache
    assert all(not line.strip() or line.startswith(notices) for line in lines[:-1]), proc.stderr
