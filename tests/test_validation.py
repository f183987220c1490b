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


# ------------------------------------------- class IDs, empty clusters (issue item 5)
from unittest import mock                                   # noqa: E402

from truncflow import _validate                            # noqa: E402
from truncflow.data import EmptyClusterWarning, encode_labels   # noqa: E402


@pytest.mark.parametrize("ids", [[1, 2], [0, 10**6], [-3, 7], [2**40, 5]])
def test_class_ids_are_mapped_in_sorted_order(ids):
    pts = np.arange(8.0).reshape(4, 2)
    raw = np.array([ids[0], ids[1], ids[1], ids[0]])
    ds = tf.Dataset.from_class_ids(pts, raw, [[0.0, 0.0], [1.0, 1.0]])
    assert ds.n_clusters == 2 and ds.counts.tolist() == [2, 2]
    assert ds.class_ids.tolist() == sorted(ids)
    assert np.array_equal(ds.class_ids[ds.labels], raw)
    assert "class_ids=" in repr(ds)
    codes, class_ids = encode_labels(raw.astype(np.float64) if max(map(abs, ids)) < 2**53 else raw)
    assert np.array_equal(codes, ds.labels) and np.array_equal(class_ids, ds.class_ids)


def test_class_ids_need_one_target_row_per_class():
    with pytest.raises(ValueError, match=r"targets have 3 rows but the labels hold 2 distinct class IDs \(1, 2\)"):
        tf.Dataset.from_class_ids(np.zeros((4, 2)), [1, 2, 2, 1], np.zeros((3, 2)))


def test_out_of_range_label_names_value_index_and_remedy():
    with pytest.raises(ValueError, match=r"label 2 out of range \(labels\[1\]\): labels must lie in \[0, 2\).*"
                                         r"Dataset.from_class_ids"):
        tf.Dataset(np.zeros((3, 2)), [1, 2, 2], np.zeros((2, 2)))


def test_unused_label_value_warns_but_is_allowed():
    with pytest.warns(EmptyClusterWarning, match=r"1 of the 3 clusters have no points: cluster\(s\) 0"):
        ds = tf.Dataset(np.zeros((4, 2)), [1, 2, 2, 1], np.zeros((3, 2)))
    assert ds.counts.tolist() == [0, 2, 2]
    assert issubclass(EmptyClusterWarning, UserWarning)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.with_targets(np.ones((3, 2)))           # the same clusters: no second warning
    with pytest.warns(EmptyClusterWarning, match=r"cluster\(s\) 0, 3"):
        ds.with_targets(np.ones((4, 2)))


@pytest.mark.parametrize("labels, pattern", [
    (np.array([0, 1, 2**64 - 1], dtype=np.uint64), r"within int64: labels\[2\]"),
    (np.array([0.0, 1e300, 1.0]), r"labels\[1\] = 1e\+300 is not an integer within int64"),
    (np.array([0.0, -np.inf, 1.0]), r"labels\[1\] = -inf \(NaN or inf\)"),
    (np.array([0.0, 1.0, np.nan]), r"labels\[2\] = nan"),
    (np.array([0, 1, 2], dtype=complex), r"labels must be integers.*dtype complex128"),
    (np.array([None, 1, 2], dtype=object), r"labels must be integers.*dtype object"),
])
def test_bad_label_values_named(labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        tf.Dataset(np.zeros((3, 2)), labels, np.zeros((2, 2)))


def test_class_ids_argument_checked():
    with pytest.raises(ValueError, match=r"class_ids have shape \(3,\), expected \(2,\)"):
        tf.Dataset(np.zeros((2, 2)), [0, 1], np.zeros((2, 2)), class_ids=[4, 5, 6])
    with pytest.raises(ValueError, match=r"class_ids must be distinct"):
        tf.Dataset(np.zeros((2, 2)), [0, 1], np.zeros((2, 2)), class_ids=[4, 4])
    ds = tf.Dataset(np.zeros((2, 2)), [0, 1], np.zeros((2, 2)), class_ids=[7, 3])
    assert ds.class_ids.tolist() == [7, 3] and ds.with_targets(np.ones((2, 2))).class_ids.tolist() == [7, 3]


# ------------------------------------------------- sizes refused before allocating
@pytest.fixture
def little_memory():
    with mock.patch.object(_validate, "available_memory", return_value=64 * 2**20):
        yield


def test_too_many_layers_refused():
    with pytest.raises(ValueError, match=r"n_layers = 100000000 is too many layers: at most 100000"):
        tf.Params.random(100_000_000, 2)


@pytest.mark.parametrize("call, pattern", [
    (lambda: tf.Params.random(2, 10**5), r"n_layers = 2: a network of 2 layers of width M=100000 would need "
                                         r"about .* TiB of memory, but only 64 MiB is available"),
    (lambda: tf.Params.random(1, 2, out_dim=10**9), r"P=1000000000 outputs would need"),
    (lambda: tf.gaussian_clusters(10**12, [[0.0, 0.0]]), r"n_points=1000000000000 points of width M=2 would need "
                                                        r"about .* TiB"),
    (lambda: tf.uniform_balls(10**8, [[0.0, 0.0]]), r"n_points=100000000 points"),
])
def test_sizes_that_do_not_fit_are_refused(little_memory, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize("args, word", [((2.5, 2), "n_layers"), ((0, 2), "n_layers"), ((1, 0), "width"),
                                        ((1, True), "width"), ((1, 2, -1.0), "scale")])
def test_random_params_arguments(args, word):
    kwargs = {"scale": args[2]} if len(args) > 2 else {}
    with pytest.raises(ValueError, match=word):
        tf.Params.random(*args[:2], **kwargs)


def test_per_cluster_partials_that_do_not_fit_are_refused(prob, little_memory):
    """Per-cluster sums keep Q slots of (L, M, M) per chunk: far too many clusters is refused."""
    Qbig = 300_000
    with pytest.warns(EmptyClusterWarning, match=r"299998 of the 300000 clusters have no points"):
        ds = tf.Dataset(prob.points, prob.labels, np.zeros((Qbig, M)))
    with pytest.raises(ValueError, match=r"partial sums \(300000 cluster slot\(s\).*would need"):
        tf.gradient(prob.params, ds, per_cluster=True)
    assert np.isfinite(tf.cost(prob.params, ds))      # the total needs one slot


# ------------------------------------------------------------ overflow is an error
BIG = 1e160


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("wrt", ["cumulative", "layers"])
@pytest.mark.parametrize("per_cluster", [False, True])
def test_overflowing_forward_pass_raises(prob, kind, wrt, per_cluster):
    pts = np.array(prob.points)
    pts[0] = [BIG, -BIG, BIG]
    ds = prob.dataset(kind, points=pts)
    with pytest.raises(ValueError, match=r"the forward pass overflowed: cost is (inf|not finite).*"
                                         r"points or parameters too large.*max \|x\| = 1e\+160"):
        tf.gradient(prob.params, ds, kind, wrt, per_cluster=per_cluster)
    with pytest.raises(ValueError, match=r"overflowed"):
        tf.cost(prob.params, ds, kind, per_cluster=per_cluster)


def test_overflowing_aligned_gradient_raises():
    params = tf.Params.aligned(np.eye(2)[None], [[1.0, 1.0]], [[0.0, 0.0]])
    ds = tf.Dataset(np.array([[BIG, BIG], [1.0, 2.0]]), [0, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"forward pass overflowed: cost is inf"):
        tf.gradient(params, ds, wrt="aligned")


def test_overflowing_truncation_map_raises():
    params = tf.Params.from_cumulative(1e10 * np.eye(2)[None], np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"the truncation map overflowed: images is not finite"):
        tf.truncate(params, np.array([[-1e300, 1.0]]))


def test_large_but_finite_values_still_work(prob):
    pts = 1e150 * np.asarray(prob.points)
    c, g = tf.gradient(tf.Params.from_cumulative(np.eye(3)[None], np.zeros((1, 3))),
                       tf.Dataset(pts, prob.labels, np.zeros((Q, M))))
    assert np.isfinite(c) and np.isfinite(g.weights).all() and c > 1e298


@pytest.mark.parametrize("cum_weights", [[1e-200, 1e200], [1e-300, 1e300]])
def test_layer_weights_overflow_refused(cum_weights):
    cw = np.stack([s * np.eye(2) for s in cum_weights])
    with pytest.raises(ValueError, match=r"layer weights W_l = W\^\(l\) \(W\^\(l-1\)\)\^-1 \(overflow"):
        tf.Params.from_cumulative(cw, np.array([[0.0, 0.0], [1.0, 1.0]]))


# ------------------------------------------------- result files checked on load
@pytest.fixture(scope="module")
def saved_result(tmp_path_factory):
    params, ds = _small()
    path = tmp_path_factory.mktemp("result") / "run.npz"
    tf.simulate(params, ds, 0.5, method="gd", lr=0.1, n_records=3).save(path)
    with np.load(path, allow_pickle=False) as z:
        return path, {k: z[k] for k in z.files}


def _rewrite(tmp_path, entries, **changes):
    import json
    entries = dict(entries)
    for key, value in changes.items():
        if key == "meta":
            entries["__meta__"] = np.array(json.dumps(value))
        elif value is None:
            entries.pop(key)
        else:
            entries[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **entries)
    return path


def test_saved_result_loads(saved_result):
    path, _ = saved_result
    result = tf.load_result(path)
    assert result.n_records == 3 and "cost" in result.summary()


@pytest.mark.parametrize("change, pattern", [
    (lambda e: {"cost": e["cost"][:-1]}, r"array 'cost' has shape \(2,\): its number of records 2 disagrees with "
                                         r"the number of records 3 of 't'"),
    (lambda e: {"biases": e["biases"][:, :, :1]}, r"array 'biases' has shape \(3, 1, 1\): its M 1 disagrees"),
    (lambda e: {"weights": e["weights"][:, :, :1]}, r"array 'weights' has shape \(3, 1, 1, 2\): its M 1 disagrees "
                                                    r"with the M 2 of 'coordinate_truncated_fraction'"),
    (lambda e: {"cost_per_cluster": e["cost_per_cluster"][:, :1]}, r"array 'truncated_fraction'.*its Q 2 "
                                                                   r"disagrees with the Q 1 of 'cost_per_cluster'"),
    (lambda e: {"spread": e["spread"][..., 0]}, r"array 'spread' has shape \(3, 1\), expected \(T, L, Q\)"),
    (lambda e: {k: v[:0] for k, v in e.items() if k != "__meta__" and not k.startswith("run__")},
     r"holds no records"),
    (lambda e: {"grad_norm": np.array(["a", "b", "c"])}, r"array 'grad_norm' is not numeric"),
    (lambda e: {"run__sample_points": e["run__sample_points"][:, :1]}, r"array 'sample_points'.*its M 1"),
    (lambda e: {"meta": {"status": "exploded", "message": ""}}, r"unknown status 'exploded'"),
    (lambda e: {"meta": {"status": "t_end", "message": "", "config": [1, 2]}}, r"its config is a list, expected a dict"),
    (lambda e: {"meta": [1, 2]}, r"__meta__ entry is a JSON list"),
    (lambda e: {"t": None}, r"missing t"),
    (lambda e: {"evaluations": np.full(3, np.nan)}, r"array 'evaluations' must hold whole numbers >= 0"),
    (lambda e: {"run__sample_labels": -e["run__sample_labels"] - 1}, r"array 'sample_labels' must hold whole"),
])
def test_inconsistent_result_file_refused(tmp_path, saved_result, change, pattern):
    _, entries = saved_result
    path = _rewrite(tmp_path, entries, **change(entries))
    with pytest.raises(ValueError, match=rf"{path}.*{pattern}"):
        tf.load_result(path)


def test_result_file_without_later_series_loads_with_them_filled(tmp_path):
    """A result written before the sliding_points series existed still loads (zeros)."""
    import json

    prob_params = tf.Params.from_layers(np.eye(2)[None], np.zeros((1, 2)))
    ds = tf.Dataset(np.array([[1.0, -1.0], [2.0, 0.5]]), np.array([0, 1]), np.zeros((2, 2)))
    r = tf.simulate(prob_params, ds, 0.1, method="gd", lr=0.05)
    path = r.save(tmp_path / "new.npz")
    with np.load(path) as z:
        entries = {k: z[k] for k in z.files if k != "sliding_points"}
    np.savez(tmp_path / "old.npz", **entries)
    old = tf.load_result(tmp_path / "old.npz")
    assert old.sliding_points.shape == r.sliding_points.shape and not old.sliding_points.any()
    assert json.loads(str(entries["__meta__"]))["status"] == old.status
