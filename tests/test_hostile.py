"""Hostile input: every case ends in a clean error or a finite, correct result.

Property-based (hypothesis) over generated run configurations (TOML text with mutated
keys and values), data files (.npy, .npz, .csv with odd shapes, dtypes, NaN/inf, huge
values, odd labels), arrays passed to Dataset, Params, cost and gradient, and damaged
result files. "Clean"
means a ValueError (ConfigError) with a message, or for the command line exit code 2
and exactly one line on stderr, with no warning emitted on the way; "correct" means
finite and equal to the slow NumPy reference of tests/reference.py.

Tiny problems only (a few points, at most a few layers), and ``--check`` for the
command line: no flow runs here. The memory available is patched down to 256 MiB so
that huge sizes are refused at once instead of being allocated.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import truncflow as tf
from truncflow import _validate
from truncflow.cli import main
from truncflow.config import SCHEMA, load_config
from truncflow.data import EmptyClusterWarning

import reference

SETTINGS = settings(max_examples=60, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])

#: Memory the size checks see during these tests: huge sizes are refused, never allocated.
FAKE_MEMORY = 256 * 2**20


@pytest.fixture(autouse=True)
def small_memory():
    with mock.patch.object(_validate, "available_memory", return_value=FAKE_MEMORY):
        yield


@pytest.fixture(scope="module")
def folder():
    """A folder with a valid data file the generated configurations may point at."""
    with tempfile.TemporaryDirectory() as d:
        rng = np.random.default_rng(0)
        table = np.column_stack([rng.standard_normal((20, 2)), np.repeat([3, 7], 10)])
        np.save(Path(d) / "data.npy", table)
        yield Path(d)


# ------------------------------------------------------------------- helpers
def run_cli(*argv):
    """(exit code, stdout, stderr, warnings) of ``truncflow`` called in-process."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue(), [str(w.message) for w in caught]


def assert_clean_cli(code, err, caught, context=""):
    """Exit 0 with nothing on stderr, or exit 2 with exactly one error line; no warnings."""
    assert not caught, (context, caught)
    if code == 0:
        assert err == "", (context, err)
        return
    assert code == 2, (context, code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("truncflow: error: ") and len(lines[0]) > 20, (context, err)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def to_toml(table: dict) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for section, body in table.items():
        if isinstance(body, dict):
            lines.append(f"[{json.dumps(section)}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def finite_or_overflow(call):
    """Run ``call()``: a ValueError must say what overflowed; anything returned must be finite."""
    try:
        value = call()
    except ValueError as exc:
        assert "overflow" in str(exc), exc
        return None
    for a in value if isinstance(value, tuple) else (value,):
        if isinstance(a, tf.Gradient):
            for part in (a.weights, a.biases, a.out_weight, a.out_bias):
                assert part is None or np.isfinite(part).all()
        else:
            assert np.isfinite(a).all(), value
    return value


# ------------------------------------------------------------ configurations
BASE = {
    "seed": 0,
    "data": {"source": "gaussian", "n_points": 24, "centers": [[-2.0, -2.0], [2.0, 2.0]], "std": 0.5,
             "targets": "centers"},
    "network": {"init": "identity", "layers": 2},
    "flow": {"t_end": 1.0},
    "record": {"n_records": 5},
}
NETWORKS = [
    {"init": "identity", "layers": 2},
    {"init": "random", "layers": 2, "scale": 0.3, "seed": 1},
    {"init": "cones", "apexes": [[-2.0, -2.0], [2.0, 2.0]], "edges": [[[1.0, 0.0], [0.0, 1.0]],
                                                                     [[-1.0, 0.0], [0.0, -1.0]]]},
    {"init": "aligned", "thresholds": [[-3.0, -3.0]], "scales": 1.0},
    {"init": "layers", "weights": [[[1.0, 0.0], [0.0, 1.0]]], "biases": [[0.5, 0.5]]},
    {"init": "cumulative", "cum_weights": [[[2.0, 0.0], [0.0, 1.0]]], "cum_biases": [[0.0, 1.0]]},
]
DATA = [
    BASE["data"],
    {"source": "balls", "n_points": 10, "centers": [[0.0, 0.0], [3.0, 3.0]], "radius": 1.0, "targets": "centers"},
    {"source": "file", "path": "data.npy", "targets": "means"},
    {"source": "file", "path": "data.npy", "targets": [[0.0, 0.0], [1.0, 1.0]]},
]
WORDS = ["", "identity", "random", "cones", "aligned", "layers", "cumulative", "gaussian", "balls", "file",
         "means", "centers", "onehot", "input", "output", "rk45", "gd", "events", "all", "weights", "biases",
         "float32", "float64", "data.npy", "nope.npy", "cumulative"]
SCALARS = st.one_of(
    st.integers(-3, 6),
    st.sampled_from([0, -1, 10**5, 10**6, 10**8, 10**12, 2**62, 2**63 - 1, -2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e-308, 5e-324, 1e160, -1e160, 0.5, 1e-12]),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=6),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
SECTIONS = {"": ["description", "seed"], **{s: list(k) for s, k in SCHEMA.items() if s}}


def numeric_grid(draw, ndim):
    """A nested list of floats of a random (possibly ragged-free) shape with hostile entries."""
    shape = draw(st.tuples(*[st.integers(1, 3)] * ndim))
    elements = st.one_of(st.floats(-5, 5), st.sampled_from([0.0, 1e160, -1e300, 1e308, 1e-300]))
    return draw(hnp.arrays(np.float64, shape, elements=elements)).tolist()


PLAUSIBLE = st.one_of(st.integers(1, 4), st.floats(0.01, 10.0), st.sampled_from(WORDS))


@st.composite
def configurations(draw):
    """A valid configuration with zero to three keys set, deleted or added: half of the new
    values plausible for a key (small numbers, known words, small grids), half hostile."""
    table = {"seed": 0, "data": dict(draw(st.sampled_from(DATA))), "network": dict(draw(st.sampled_from(NETWORKS))),
             "flow": {"t_end": 1.0}, "record": {"n_records": 5}}
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(list(SECTIONS)))
        body = table if section == "" else table.setdefault(section, {})
        action = draw(st.sampled_from(["plausible", "plausible", "hostile", "grid", "delete", "unknown"]))
        key = draw(st.sampled_from(SECTIONS[section]))
        if action == "delete":
            body.pop(key, None)
        elif action == "unknown":
            body[draw(st.text(min_size=1, max_size=5))] = draw(SCALARS)
        elif action == "grid":
            body[key] = numeric_grid(draw, draw(st.integers(1, 3)))
        else:
            body[key] = draw(PLAUSIBLE if action == "plausible" else VALUES)
    return table


@SETTINGS
@given(configurations())
def test_generated_configurations_fail_cleanly_or_work(folder, table):
    path = folder / "job.toml"
    path.write_text(to_toml(table), encoding="utf-8")
    code, _, err, caught = run_cli("run", path, "--check", "--quiet")
    assert_clean_cli(code, err, caught, table)
    event(f"exit {code}")
    if code == 0:       # valid: the cost of the initial state is finite (or refused as an overflow)
        cfg = load_config(path)
        finite_or_overflow(lambda: tf.cost(cfg.params, cfg.dataset, cfg.simulate_kwargs["kind"]))


@SETTINGS
@given(st.data())
def test_mutated_toml_text_fails_cleanly_or_works(folder, data):
    text = to_toml({**BASE, "network": data.draw(st.sampled_from(NETWORKS))})
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + data.draw(st.sampled_from(["", "\n", "=", "[", "]", '"', ",", "9" * 25, "-",
                                                     "1e999", "nan", "[data]", "x = 1\n"])) + text[j:]
    path = folder / "mutated.toml"
    path.write_text(text, encoding="utf-8")
    code, _, err, caught = run_cli("run", path, "--check", "--quiet")
    assert_clean_cli(code, err, caught, text)
    event(f"exit {code}")


# ---------------------------------------------------------------- data files
LABEL_VALUES = st.one_of(st.integers(-3, 4), st.sampled_from([10**6, -10**9, 2**40]),
                         st.sampled_from([0.5, np.nan, np.inf, 1e300, 2.0]))


@st.composite
def data_arrays(draw):
    """(points-ish array, labels-ish array): half plain tables of small floats and small
    integer labels, half of odd shapes, dtypes and values."""
    if draw(st.booleans()):
        n, m = draw(st.integers(1, 6)), draw(st.integers(1, 3))
        points = draw(hnp.arrays(np.float64, (n, m), elements=st.floats(-4, 4)))
        labels = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        return points, labels
    n = draw(st.integers(0, 6))
    m = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_,
                                  np.complex128]))
    shape = draw(st.sampled_from([(n, m), (n, m), (n,), (n, m, 2), ()]))
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(st.floats(-4, 4, width=16 if dtype == np.float16 else 64),
                             st.sampled_from([np.nan, np.inf, 1e30, 6e4]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)     # 1e30 -> inf in float16/32: on purpose
            points = draw(hnp.arrays(np.float64, shape, elements=elements)).astype(dtype)
    else:
        points = draw(hnp.arrays(dtype, shape))
    n_labels = draw(st.sampled_from([n, n, max(n - 1, 0), n + 1]))
    labels = np.array(draw(st.lists(LABEL_VALUES, min_size=n_labels, max_size=n_labels)), dtype=np.float64)
    if draw(st.booleans()) and np.all(np.abs(labels) < 2.0**62) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return points, labels


def write_data(folder: Path, fmt: str, points, labels) -> Path:
    """Write points and labels as ``fmt``; .npy and .csv need a table (points with the label last)."""
    if fmt == "npz":
        path = folder / "d.npz"
        np.savez(path, points=points, labels=labels)
        return path
    path = folder / f"d.{fmt}"
    try:
        table = np.column_stack([points, labels]) if points.ndim == 2 else points
    except ValueError:
        table = points
    if fmt == "npy":
        np.save(path, table)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                np.savetxt(path, np.atleast_1d(table).astype(np.float64), delimiter=",", fmt="%.17g")
            except (ValueError, TypeError):
                path.write_text("1,2,x\n")
    return path


@SETTINGS
@given(data_arrays(), st.sampled_from(["npy", "npz", "csv"]))
def test_data_files_load_cleanly_or_correctly(folder, arrays, fmt):
    points, labels = arrays
    sub = Path(tempfile.mkdtemp(dir=folder))
    path = write_data(sub, fmt, points, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            p, lab = tf.load_points(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            p = None
    if p is not None:
        assert p.ndim == 2 and p.shape[0] == lab.shape[0] >= 1 and p.shape[1] >= 1
        assert p.dtype in (np.float32, np.float64) and np.isfinite(p).all()
        assert lab.dtype == np.int64
        ds = tf.Dataset.from_class_ids(p, lab, np.zeros((np.unique(lab).size, p.shape[1])))
        assert np.array_equal(ds.class_ids[ds.labels], lab) and ds.counts.all()
    config = sub / "job.toml"
    config.write_text(to_toml({"data": {"source": "file", "path": path.name, "targets": "means"},
                               "network": {"layers": 1}, "flow": {"t_end": 1.0}}))
    code, _, err, caught = run_cli("run", config, "--check", "--quiet")
    assert_clean_cli(code, err, caught)
    assert (code == 0) == (p is not None), err
    event(f"exit {code}")


# -------------------------------------------------------------- API arrays
HOSTILE_FLOATS = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, -0.0, 1e160, -1e160, 1e300, 1e-300,
                                                              np.nan, np.inf]))


HOSTILE_FLOAT32 = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([0.0, 1e30, -1e30, 1e-30, np.nan, np.inf]))


def maybe_hostile(draw, shape, dtype=np.float64):
    """An array of ``shape``: small floats, or (one time in three) hostile entries."""
    if draw(st.integers(0, 2)) == 0:
        elements = HOSTILE_FLOAT32 if dtype == np.float32 else HOSTILE_FLOATS
    else:
        elements = st.floats(-3, 3, width=32 if dtype == np.float32 else 64)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def problems(draw):
    N, M, L, Q = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    points = maybe_hostile(draw, (N, M), draw(st.sampled_from([np.float64, np.float32])))
    labels = np.array(draw(st.lists(st.integers(0, Q - 1) | st.integers(-1, Q), min_size=N, max_size=N)))
    targets = maybe_hostile(draw, (Q, M))
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 1e-200, 1e150]))
    cum_w = np.eye(M) + 0.3 * draw(hnp.arrays(np.float64, (L, M, M), elements=st.floats(-1, 1)))
    cum_b = maybe_hostile(draw, (L, M))
    return points, labels, targets, scale * cum_w, cum_b


@SETTINGS
@given(problems(), st.sampled_from(["cumulative", "layers"]), st.booleans())
def test_arrays_to_cost_and_gradient(problem, wrt, per_cluster):
    points, labels, targets, cum_w, cum_b = problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", EmptyClusterWarning)
        try:
            ds = tf.Dataset(points, labels, targets)
            params = tf.Params.from_cumulative(cum_w, cum_b)
        except ValueError as exc:
            assert str(exc)
            event("refused by Dataset or Params")
            return
        result = finite_or_overflow(lambda: tf.gradient(params, ds, wrt=wrt, per_cluster=per_cluster))
    event("overflow" if result is None else "finite")
    if result is None:
        return
    cost, grad = result
    # Correct: equal to the NumPy reference where the reference itself is accurate. It
    # solves W x = sigma(a) - b, losing about eps |A| |b| to cancellation, so: away from
    # kinks, for well-conditioned layers whose biases do not dwarf the data.
    with np.errstate(over="ignore"):
        data_scale = max(1.0, float(np.max(np.abs(ds.points))), float(np.max(np.abs(ds.targets))))
        bias_scale = float(np.max(np.abs(params.inverses))) * float(np.max(np.abs(params.cum_biases)))
        scale = np.float64(data_scale + bias_scale) ** 2
        pre = reference.cumulative_preacts(params.cum_weights, params.cum_biases, ds.points)
        size = float(np.max(np.abs(pre)))
    if not (np.isfinite(scale) and bias_scale <= 1e6 * data_scale and np.min(np.abs(pre)) > 1e-9 * size
            and np.linalg.cond(params.cum_weights).max() < 1e6):
        return
    event("compared with the reference")
    expected = reference.cost(params.cum_weights, params.cum_biases, ds.points, ds.labels, ds.targets)
    assert np.allclose(cost, expected if per_cluster else expected.sum(), rtol=1e-9, atol=1e-9 * scale)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 0, 50, 100, 150, 153, 154, 155, 160, 200]),
       st.sampled_from(["input", "output"]), st.sampled_from(["cumulative", "layers"]))
def test_large_magnitudes_overflow_cleanly_or_match_the_reference(seed, exponent, kind, wrt):
    """Random problems scaled by 10^exponent (points, biases, targets): up to the edge of
    float64 the cost is finite and equals the reference; beyond it, a clean overflow error."""
    rng = np.random.default_rng(seed)
    N, M, L, Q, P = (int(v) for v in rng.integers(1, [7, 4, 4, 4, 3], endpoint=True))
    s = 10.0 ** exponent
    points = s * rng.standard_normal((N, M))
    labels = np.arange(N) % Q
    cum_w = np.eye(M) + 0.3 * rng.uniform(-1, 1, (L, M, M))
    cum_b = s * rng.standard_normal((L, M))
    ow, ob = rng.standard_normal((P, M)), s * rng.standard_normal(P)
    targets = s * rng.standard_normal((Q, M if kind == "input" else P))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", EmptyClusterWarning)
        try:
            params = tf.Params.from_cumulative(cum_w, cum_b, ow, ob)
        except ValueError as exc:
            assert "condition" in str(exc)
            return
        ds = tf.Dataset(points, labels, targets)
        result = finite_or_overflow(lambda: tf.gradient(params, ds, kind, wrt, per_cluster=True))
    event(f"{'overflow' if result is None else 'finite'} at 10^{exponent}")
    if result is None:
        assert exponent >= 150
        return
    expected = reference.cost(params.cum_weights, params.cum_biases, ds.points, ds.labels, ds.targets, kind, ow, ob)
    assert np.allclose(result[0], expected, rtol=1e-8, atol=1e-10 * (s * s)), (result[0], expected)


@SETTINGS
@given(st.lists(st.one_of(st.integers(-2**62, 2**62), st.sampled_from([0.5, np.nan, -np.inf, 1e300, 3.0])),
                min_size=1, max_size=8))
def test_class_ids_are_mapped_or_refused(ids):
    points = np.arange(2.0 * len(ids)).reshape(-1, 2)
    labels = np.array(ids, dtype=np.float64 if any(isinstance(i, float) for i in ids) else np.int64)
    try:
        codes, class_ids = tf.data.encode_labels(labels)
    except ValueError as exc:
        assert "labels" in str(exc)
        return
    assert np.array_equal(class_ids[codes], labels) and np.all(np.diff(class_ids) > 0)
    ds = tf.Dataset.from_class_ids(points, labels, np.zeros((class_ids.size, 2)))
    assert ds.n_clusters == class_ids.size and ds.counts.all()
    assert np.array_equal(ds.class_ids, class_ids)


@SETTINGS
@given(st.integers(-2, 10**9), st.integers(-2, 10**7), st.one_of(st.none(), st.integers(-1, 10**8)))
def test_sizes_refused_before_allocating(n_layers, width, out_dim):
    try:
        params = tf.Params.random(n_layers, width, out_dim=out_dim, scale=0.1)
    except ValueError as exc:
        assert any(word in str(exc) for word in ("n_layers", "width", "out_dim", "condition", "singular", "overflow")), exc
        return
    assert params.n_layers == n_layers and params.width == width
    assert tf.params.network_bytes(n_layers, width, out_dim or 0) <= FAKE_MEMORY


# -------------------------------------------------------------- result files
@pytest.fixture(scope="module")
def result_entries(folder):
    """The arrays of a small saved result (a few gradient-descent steps)."""
    params = tf.Params.from_layers(np.eye(2)[None] * 1.5, np.array([[0.1, -0.2]]))
    ds = tf.Dataset(np.random.default_rng(0).standard_normal((12, 2)), np.arange(12) % 2, np.zeros((2, 2)))
    path = tf.simulate(params, ds, 0.5, method="gd", lr=0.1, n_records=4).save(folder / "result.npz")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def mutate_entry(data, value: np.ndarray) -> np.ndarray | None:
    """A damaged copy of one array of a result file (None: drop it)."""
    op = data.draw(st.sampled_from(["drop", "shorten", "lengthen", "narrow", "text", "scalar", "flatten", "nan"]))
    if op == "drop":
        return None
    if op == "text":
        return np.array(["x"] * max(value.size, 1))
    if op == "scalar" or value.ndim == 0:
        return np.array(data.draw(st.sampled_from([0.0, 1.0, np.nan])))
    if op == "flatten":
        return value.reshape(-1)
    if op == "nan":
        return np.full(value.shape, np.nan)
    axis = data.draw(st.integers(0, value.ndim - 1))
    if op == "narrow" or op == "shorten":
        return np.take(value, range(max(value.shape[axis] - 1, 0)), axis=axis)
    return np.concatenate([value, np.take(value, range(min(1, value.shape[axis])), axis=axis)], axis=axis)


META_VALUES = st.one_of(st.sampled_from(['{"status": "t_end"}', '[1, 2]', '"t_end"', "{", "null",
                                         '{"status": "nope", "message": ""}',
                                         '{"status": "t_end", "message": 3}',
                                         '{"status": ["t_end"], "message": ""}',
                                         '{"status": "t_end", "message": "", "config": "x"}']),
                        st.text(max_size=10))


@SETTINGS
@given(st.data())
def test_damaged_result_files_are_refused_or_consistent(folder, result_entries, data):
    entries = dict(result_entries)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(entries)))
        if key == "__meta__":
            entries[key] = np.array(data.draw(META_VALUES))
            continue
        damaged = mutate_entry(data, entries[key])
        if damaged is None:
            entries.pop(key)
        else:
            entries[key] = damaged
    path = folder / "damaged.npz"
    np.savez(path, **entries)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            result = tf.load_result(path)
        except ValueError as exc:
            assert str(path) in str(exc)
            event("refused")
            return
        event("loaded")
        T = result.n_records
        assert all(len(v) == T for v in result.series.values())
        assert result.summary().startswith("status: ")


# ------------------------------------------------- one line on stderr, really
BAD_NETWORKS = {
    "random_scale_overflow": {"init": "random", "layers": 3, "scale": 1e300},
    "aligned_bias_overflow": {"init": "aligned", "thresholds": [[1e300, 1e300]], "scales": 1e300},
    "layer_product_overflow": {"init": "layers", "weights": [[[1e200, 0.0], [0.0, 1e200]]] * 2,
                               "biases": [[0.0, 0.0], [0.0, 0.0]]},
    "cone_bias_overflow": {"init": "cones", "apexes": [[1e300, 1e300]], "edges": [[[1e-300, 0.0], [0.0, 1e-300]]]},
    "cumulative_layer_overflow": {"init": "cumulative", "cum_weights": [[[1e-200, 0.0], [0.0, 1e-200]],
                                                                        [[1e200, 0.0], [0.0, 1e200]]],
                                  "cum_biases": [[0.0, 0.0], [1.0, 1.0]]},
    "frames_overflow": {"init": "aligned", "thresholds": [[0.0, 0.0]], "frames": [[[1e300, 0.0], [0.0, 1e300]]]},
    "too_many_layers": {"init": "identity", "layers": 100_000_000},
}
BAD_DATA = {
    "std_overflow": {**BASE["data"], "std": 1e308},
    "means_overflow": {**BASE["data"], "centers": [[-1.7e308, -1.7e308], [1.7e308, 1.7e308]], "targets": "means"},
    "too_many_points": {**BASE["data"], "n_points": 10**12},
}
BAD_CONFIGS = {**{k: {**BASE, "network": v} for k, v in BAD_NETWORKS.items()},
               **{k: {**BASE, "data": v} for k, v in BAD_DATA.items()},
               "too_many_records": {**BASE, "record": {"n_records": 10**7}}}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_config_errors_print_exactly_one_line(tmp_path, name):
    path = tmp_path / f"{name}.toml"
    path.write_text(to_toml(BAD_CONFIGS[name]))
    code, out, err, caught = run_cli("run", path, "--check")
    assert code == 2 and out == ""
    assert_clean_cli(code, err, caught, name)


def test_config_errors_one_line_in_a_real_process(tmp_path):
    """The same through a real interpreter: no warning reaches stderr (none is captured)."""
    paths = []
    for name in sorted(BAD_CONFIGS):
        if name not in ("too_many_points", "too_many_records"):     # sizes depend on the machine's memory
            paths.append(tmp_path / f"{name}.toml")
            paths[-1].write_text(to_toml(BAD_CONFIGS[name]))
    script = ("import sys\nfrom truncflow.cli import main\n"
              "for p in sys.argv[1:]:\n"
              "    print(main(['run', p, '--check']), file=sys.stderr)\n"
              "    print('@@', file=sys.stderr, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=300)
    chunks = proc.stderr.split("@@\n")[:-1]
    assert len(chunks) == len(paths), proc.stderr
    for path, chunk in zip(paths, chunks):
        lines = chunk.splitlines()
        assert len(lines) == 2 and lines[0].startswith("truncflow: error: ") and lines[1] == "2", (path.name, chunk)


def test_result_file_with_class_ids_that_are_not_whole_numbers_is_refused(tmp_path):
    """Found by the hypothesis test above: NaN class IDs loaded, then summary() crashed."""
    rng = np.random.default_rng(0)
    ds = tf.Dataset(rng.standard_normal((12, 2)), np.arange(12) % 2, rng.standard_normal((2, 2)))
    r = tf.simulate(tf.Params.random(1, 2, seed=0), ds, 0.5, method="gd", lr=0.1)
    r.save(tmp_path / "r.npz")
    entries = dict(np.load(tmp_path / "r.npz"))
    entries["run__class_ids"] = np.array([np.nan, 1.0])
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match="class_ids' must hold whole numbers"):
        tf.load_result(tmp_path / "bad.npz")
    entries["run__class_ids"] = np.array([-3, 7])
    np.savez(tmp_path / "ok.npz", **entries)
    assert tf.load_result(tmp_path / "ok.npz").cluster_names == ["cluster 0 (class -3)", "cluster 1 (class 7)"]
