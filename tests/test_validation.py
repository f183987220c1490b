"""Bad input raises ValueError with a message that names the problem."""
from __future__ import annotations

import numpy as np
import pytest

import truncflow as tf

from conftest import make_problem

L, M, N, Q, P = 2, 3, 8, 2, 2


@pytest.fixture(scope="module")
def prob():
    return make_problem(5, L=L, M=M, N=N, Q=Q, P=P)


def with_value(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


# ------------------------------------------------------------------- points
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_points(prob, bad):
    pts = with_value(prob.points, (3, 1), bad)
    with pytest.raises(ValueError, match=r"points.*non-finite.*\(3, 1\)"):
        tf.truncate(prob.params, pts)
    with pytest.raises(ValueError, match="non-finite"):
        tf.activation_patterns(prob.params, pts)
    with pytest.raises(ValueError, match=r"points.*non-finite"):
        tf.Dataset(pts, prob.labels, prob.targets_in)
    with pytest.raises(ValueError, match=r"points.*non-finite"):
        tf.truncate(prob.params, pts.astype(np.float32))


@pytest.mark.parametrize("shape", [(N,), (N, M, 1), ()])
def test_points_wrong_ndim(prob, shape):
    pts = np.zeros(shape)
    with pytest.raises(ValueError, match=r"points must have 2 dimension"):
        tf.truncate(prob.params, pts)
    with pytest.raises(ValueError, match=r"points must have 2 dimension"):
        tf.Dataset(pts, prob.labels, prob.targets_in)


def test_points_width_mismatch(prob):
    with pytest.raises(ValueError, match=r"width 4.*M=3"):
        tf.truncate(prob.params, np.zeros((N, M + 1)))
    with pytest.raises(ValueError, match=r"width 2.*M=3"):
        tf.activation_patterns(prob.params, np.zeros((N, M - 1)))
    ds = tf.Dataset(np.zeros((N, M + 1)), prob.labels, np.zeros((Q, M + 1)))
    with pytest.raises(ValueError, match=r"width 4.*M=3"):
        tf.gradient(prob.params, ds)


@pytest.mark.parametrize("shape", [(0, M), (N, 0)])
def test_empty_points(prob, shape):
    with pytest.raises(ValueError, match=r"empty|at least one"):
        tf.truncate(prob.params, np.zeros(shape))
    with pytest.raises(ValueError, match=r"empty|at least one"):
        tf.Dataset(np.zeros(shape), np.zeros(shape[0], dtype=int), prob.targets_in)


def test_non_numeric_points(prob):
    with pytest.raises(ValueError, match=r"points must be a numeric array"):
        tf.truncate(prob.params, np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match=r"points must be real"):
        tf.truncate(prob.params, np.zeros((2, M), dtype=complex))
    with pytest.raises(ValueError, match=r"points is missing"):
        tf.truncate(prob.params, None)


# ------------------------------------------------------------------- labels
@pytest.mark.parametrize("bad", [-1, Q, Q + 5])
def test_labels_out_of_range(prob, bad):
    labels = prob.labels.copy()
    labels[2] = bad
    with pytest.raises(ValueError, match=rf"label {bad} out of range.*\[0, {Q}\)"):
        tf.Dataset(prob.points, labels, prob.targets_in)


@pytest.mark.parametrize("n", [N - 1, N + 1])
def test_labels_wrong_length(prob, n):
    with pytest.raises(ValueError, match=rf"labels have shape \({n},\), expected \({N},\)"):
        tf.Dataset(prob.points, np.zeros(n, dtype=int), prob.targets_in)
    with pytest.raises(ValueError, match=r"labels have shape"):
        tf.Dataset(prob.points, np.zeros((N, 1), dtype=int), prob.targets_in)


@pytest.mark.parametrize("labels", [np.full(N, 0.5), np.array(["0"] * N), np.full(N, np.nan),
                                    np.zeros(N, dtype=bool)])
def test_labels_not_integers(prob, labels):
    with pytest.raises(ValueError, match=r"labels must be integers"):
        tf.Dataset(prob.points, labels, prob.targets_in)


def test_integer_valued_float_labels_accepted(prob):
    ds = tf.Dataset(prob.points, prob.labels.astype(np.float64), prob.targets_in)
    assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, prob.labels)


# ------------------------------------------------------------------ targets
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets(prob, bad):
    with pytest.raises(ValueError, match=r"targets.*non-finite"):
        tf.Dataset(prob.points, prob.labels, with_value(prob.targets_in, (1, 2), bad))


def test_targets_shape(prob):
    with pytest.raises(ValueError, match=r"targets must have 2 dimension"):
        tf.Dataset(prob.points, prob.labels, np.zeros(M))
    with pytest.raises(ValueError, match=r"targets have shape \(0, 3\)"):
        tf.Dataset(prob.points, np.zeros(N, dtype=int), np.zeros((0, M)))


def test_targets_width_mismatch(prob):
    ds = tf.Dataset(prob.points, prob.labels, np.zeros((Q, M + 2)))
    with pytest.raises(ValueError, match=r"input cost needs targets of shape \(Q, 3\)"):
        tf.gradient(prob.params, ds, "input")
    with pytest.raises(ValueError, match=r"output cost needs targets of shape \(Q, 2\)"):
        tf.gradient(prob.params, ds, "output")
    with pytest.raises(ValueError, match=r"input cost needs targets"):
        tf.cost(prob.params, ds, "input")


# ------------------------------------------------------------------- params
@pytest.mark.parametrize("which", ["weights", "biases"])
@pytest.mark.parametrize("form", ["layers", "cumulative"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_params(prob, which, form, bad):
    p = prob.params
    w, b = (p.weights, p.biases) if form == "layers" else (p.cum_weights, p.cum_biases)
    if which == "weights":
        w = with_value(w, (1, 0, 2), bad)
    else:
        b = with_value(b, (0, 1), bad)
    make = tf.Params.from_layers if form == "layers" else tf.Params.from_cumulative
    name = which if form == "layers" else f"cum_{which}"
    with pytest.raises(ValueError, match=rf"{name} contains 1 non-finite"):
        make(w, b)


@pytest.mark.parametrize("which", ["out_weight", "out_bias"])
def test_non_finite_output_layer(prob, which):
    p = prob.params
    ow, ob = np.array(p.out_weight), np.array(p.out_bias)
    if which == "out_weight":
        ow[0, 0] = np.nan
    else:
        ob[0] = np.nan
    with pytest.raises(ValueError, match=rf"{which} contains 1 non-finite"):
        tf.Params.from_layers(np.array(p.weights), np.array(p.biases), ow, ob)


def test_params_wrong_ndim(prob):
    w, b = np.array(prob.params.weights), np.array(prob.params.biases)
    with pytest.raises(ValueError, match=r"weights must have 3 dimension"):
        tf.Params.from_layers(w[0], b)
    with pytest.raises(ValueError, match=r"biases must have 2 dimension"):
        tf.Params.from_layers(w, b[0])
    with pytest.raises(ValueError, match=r"cum_weights must have 3 dimension"):
        tf.Params.from_cumulative(w[None], b)


def test_params_mismatched_shapes(prob):
    w, b = np.array(prob.params.weights), np.array(prob.params.biases)
    with pytest.raises(ValueError, match=r"biases has shape \(2, 4\), expected \(2, 3\)"):
        tf.Params.from_layers(w, np.zeros((L, M + 1)))
    with pytest.raises(ValueError, match=r"biases has shape \(3, 3\), expected \(2, 3\)"):
        tf.Params.from_layers(w, np.zeros((L + 1, M)))
    with pytest.raises(ValueError, match=r"square"):
        tf.Params.from_layers(np.zeros((L, M, M + 1)), b)
    with pytest.raises(ValueError, match=r"at least one layer"):
        tf.Params.from_layers(np.zeros((0, M, M)), np.zeros((0, M)))


def test_out_weight_wrong_width(prob):
    w, b = np.array(prob.params.weights), np.array(prob.params.biases)
    with pytest.raises(ValueError, match=r"out_weight has shape \(2, 4\), expected \(P, 3\)"):
        tf.Params.from_layers(w, b, np.zeros((P, M + 1)), np.zeros(P))
    with pytest.raises(ValueError, match=r"out_bias has shape \(3,\), expected \(2,\)"):
        tf.Params.from_layers(w, b, np.zeros((P, M)), np.zeros(P + 1))
    with pytest.raises(ValueError, match=r"out_weight and out_bias must be given together"):
        tf.Params.from_layers(w, b, np.zeros((P, M)), None)
    with pytest.raises(ValueError, match=r"out_weight has shape"):
        prob.params.with_output(np.zeros((P, M + 1)), np.zeros(P))


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_layer_product():
    w = np.stack([1e200 * np.eye(2)] * 2)
    with pytest.raises(ValueError, match=r"cumulative weights.*overflow"):
        tf.Params.from_layers(w, np.zeros((2, 2)))


# ---------------------------------------------------------------------- API
def test_output_cost_without_output_layer(prob):
    params = prob.params.with_output(None, None)
    assert not params.has_output
    ds = prob.dataset("output")
    with pytest.raises(ValueError, match=r"output cost needs an output layer"):
        tf.gradient(params, ds, "output")
    with pytest.raises(ValueError, match=r"output cost needs an output layer"):
        tf.cost(params, ds, "output")


@pytest.mark.parametrize("kw,match", [(dict(kind="inptu"), r"unknown kind 'inptu'"),
                                      (dict(kind="Input"), r"unknown kind"),
                                      (dict(wrt="layer"), r"unknown wrt 'layer'"),
                                      (dict(wrt=None), r"unknown wrt None")])
def test_unknown_kind_or_wrt(prob, kw, match):
    with pytest.raises(ValueError, match=match):
        tf.gradient(prob.params, prob.dataset(), **kw)


@pytest.mark.parametrize("layers", [-1, L + 1, 1.0, True, "1"])
def test_truncate_layers_out_of_range(prob, layers):
    with pytest.raises(ValueError, match=rf"layers must be an integer in \[0, {L}\]"):
        tf.truncate(prob.params, prob.points, layers)


def test_not_params_or_dataset(prob):
    with pytest.raises(ValueError, match=r"params must be a truncflow.Params"):
        tf.truncate((prob.params.weights, prob.params.biases), prob.points)
    with pytest.raises(ValueError, match=r"dataset must be a truncflow.Dataset"):
        tf.gradient(prob.params, (prob.points, prob.labels, prob.targets_in))


# ------------------------------------------------- found in review: more bad input
def _small():
    params = tf.Params.from_layers(np.eye(2)[None] * 1.5, np.array([[0.1, -0.2]]))
    pts = np.random.default_rng(0).standard_normal((12, 2))
    return params, tf.Dataset(pts, np.arange(12) % 2, np.zeros((2, 2)))


def test_observe_shift_is_checked():
    params, ds = _small()
    with pytest.raises(ValueError, match=r"shift has shape"):
        tf.observe(params, ds, shift=np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"shift contains"):
        tf.observe(params, ds, shift=np.full((2, 2), np.nan))


def test_params_constructor_refuses_inconsistent_arrays():
    with pytest.raises(ValueError, match=r"from_layers or Params.from_cumulative"):
        tf.Params(np.eye(2)[None], np.zeros((1, 2)), np.eye(3)[None], np.zeros((1, 5)), np.zeros((1, 2, 2)))


@pytest.mark.parametrize("kwargs, word", [
    (dict(method="rk45", lr=-1.0), "lr"),
    (dict(method="gd", lr=0.1, rtol=-1.0), "rtol"),
    (dict(frozen_layers=1), "frozen_layers"),
    (dict(max_evals=2.5), "max_evals"),
    (dict(n_records=1), "n_records"),
])
def test_simulate_checks_every_given_value(kwargs, word):
    params, ds = _small()
    with pytest.raises(ValueError, match=word):
        tf.simulate(params, ds, 1.0, **kwargs)


def test_load_result_corrupt_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"cannot read result file"):
        tf.load_result(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, __meta__=np.array('{"status": "t_end"}'))
    with pytest.raises(ValueError, match=r"missing"):
        tf.load_result(partial)


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_points=2.7), "n_points"),
    (dict(n_points=10, dtype=np.int32), "dtype"),
    (dict(n_points=10, std=[1.0, 2.0, 3.0]), "std"),
])
def test_generator_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        tf.gaussian_clusters(centers=np.zeros((2, 2)), **kwargs)
