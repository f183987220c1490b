"""The aligned model (MODEL.md section 9): construction, restricted gradient, threshold
equation, conservation law, and the cluster-separation check.

Independent references (PyTorch autograd of the restricted cost: tests/test_torch.py):
the clip form ``R^T max(R z, t)`` of the truncation map
written here in NumPy, and counts of truncated points computed here.
"""
from __future__ import annotations

import numpy as np
import pytest

import truncflow as tf
from conftest import assert_close
from problems import one_layer_problem, rotation, separated_problem

# ------------------------------------------------------------- construction
def test_aligned_params_expose_frames_scales_thresholds():
    R = np.stack([rotation(3, 0), rotation(3, 1)])
    lam = np.array([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]])
    b = np.array([[0.5, -1.0, 0.0], [1.0, 2.0, -3.0]])
    p = tf.Params.aligned(R, lam, b)
    assert p.is_aligned and "aligned" in repr(p)
    assert_close(p.cum_weights, lam[:, :, None] * R, 1e-15)
    assert_close(p.scales, lam, 1e-15)
    assert_close(p.thresholds, -b / lam, 1e-15)
    assert np.array_equal(p.frames, R)
    apexes, _ = p.cones()
    assert_close(apexes, np.einsum("lkj,lk->lj", R, -b / lam), 1e-14, "apex = R^T t")
    # the truncation map is the clip from below in rotated coordinates
    x = np.random.default_rng(2).standard_normal((50, 3))
    z = x
    for l in range(2):
        z = np.maximum(z @ R[l].T, -b[l] / lam[l]) @ R[l]
    assert_close(tf.truncate(p, x), z, 1e-13, "clip form of the truncation map")


def test_non_aligned_params_have_no_thresholds():
    p = tf.Params.random(1, 2, seed=0)
    assert not p.is_aligned
    with pytest.raises(AttributeError, match="aligned"):
        p.thresholds
    with pytest.raises(ValueError, match="aligned"):
        tf.gradient(p, tf.Dataset(np.zeros((3, 2)), [0, 0, 0], np.zeros((1, 2))), wrt="aligned")


@pytest.mark.parametrize("frames, scales, biases, match", [
    (np.array([[[1.0, 0.1], [0.0, 1.0]]]), np.ones((1, 2)), np.zeros((1, 2)), r"frames\[0\].*not orthogonal"),
    (np.eye(2)[None], np.array([[1.0, 0.0]]), np.zeros((1, 2)), r"scales must be positive.*scales\[0, 1\]"),
    (np.eye(2)[None], np.array([[1.0, -2.0]]), np.zeros((1, 2)), "scales must be positive"),
    (np.eye(2)[None], np.ones((1, 3)), np.zeros((1, 2)), "scales has shape"),
    (np.eye(2)[None], np.ones((1, 2)), np.zeros((2, 2)), "biases has shape"),
    (np.ones((1, 2, 3)), np.ones((1, 2)), np.zeros((1, 2)), "frames has shape"),
    (np.eye(2)[None], np.ones((1, 2)), np.array([[0.0, np.nan]]), "biases contains"),
])
def test_aligned_refuses_bad_input(frames, scales, biases, match):
    with pytest.raises(ValueError, match=match):
        tf.Params.aligned(frames, scales, biases)


def test_aligned_keeps_frames_through_records_and_files(tmp_path):
    params, ds = one_layer_problem()
    r = tf.simulate(params, ds, 0.5, wrt="aligned", n_records=3)
    assert r.final.is_aligned and np.array_equal(r.final.frames, params.frames)
    assert r.thresholds.shape == (r.n_records, 1, 3) and r.scales.shape == (r.n_records, 1, 3)
    assert_close(r.thresholds[-1], r.final.thresholds, 1e-14)
    back = tf.load_result(r.save(tmp_path / "run"))
    assert np.array_equal(back.arrays["frames"], params.frames)
    assert_close(back.final.thresholds, r.final.thresholds, 0)


# --------------------------------------------------------- threshold equation
@pytest.mark.parametrize("case", ["one_layer", "separated"])
@pytest.mark.parametrize("train", ["all", "biases"])
def test_threshold_equation_equals_restricted_gradient(case, train):
    """dt/ds from the effective equation (counts of truncated points) equals
    d(-b/lambda)/ds from the kernels' restricted gradient, to 1e-12."""
    params, ds = one_layer_problem() if case == "one_layer" else separated_problem()
    _, g = tf.gradient(params, ds, wrt="aligned")
    lam, b = params.scales, params.cum_biases
    lam_dot = -g.weights if train == "all" else np.zeros_like(lam)
    b_dot = -g.biases
    t_dot = -(b_dot * lam - b * lam_dot) / lam ** 2
    velocity = tf.threshold_velocity(params, ds, train)
    assert np.abs(velocity).max() > 1e-3              # the thresholds do move
    assert_close(velocity, t_dot, 1e-12, "threshold equation")


def test_threshold_gradient_counts_points_on_the_threshold_as_truncated():
    """Points exactly at w = t are truncated: they enter n_{c,k}, as in the kernels."""
    R = np.eye(1)[None]
    x = np.array([[0.0], [1.0], [1.0], [2.0]])
    ds = tf.Dataset(x, [0, 0, 1, 1], np.array([[3.0], [5.0]]))
    p = tf.Params.aligned(R, np.ones((1, 1)), np.array([[-1.0]]))       # t = 1
    expected = ((1 - 3.0) + (1 - 3.0) + (1 - 5.0)) / 4                    # w = 0, 1 (c0), 1 (c1)
    assert_close(tf.threshold_gradient(p, ds), [[expected]], 1e-15)
    _, g = tf.gradient(p, ds, wrt="aligned")
    assert_close(g.biases, [[-expected]], 1e-15, "dC/db = -dC/dt / lambda")


def test_threshold_below_every_point_does_not_move():
    params, ds = one_layer_problem()
    lam = params.scales
    low = (ds.points @ params.frames[0].T).min(axis=0) - 1.0
    p = tf.Params.aligned(params.frames, lam, -lam * low[None])
    assert np.all(tf.threshold_velocity(p, ds) == 0)
    _, g = tf.gradient(p, ds, wrt="aligned")
    assert np.all(g.weights == 0) and np.all(g.biases == 0)


def test_aligned_flow_conserves_lambda2_plus_b2():
    params, ds = one_layer_problem()
    r = tf.simulate(params, ds, 2.0, wrt="aligned", train="all", rtol=1e-10, atol=1e-12, n_records=5)
    assert r.success
    norm2 = r.scales ** 2 + r.cum_biases ** 2
    assert np.abs(r.thresholds[-1] - r.thresholds[0]).max() > 0.05     # it moved
    assert_close(norm2, np.broadcast_to(norm2[0], norm2.shape), 1e-8, "lambda^2 + b^2")
    # frames stay put: W^(l) R^T stays diagonal
    off = np.einsum("tlij,lkj->tlik", r.cum_weights, params.frames)
    off[:, :, np.arange(3), np.arange(3)] = 0
    assert np.abs(off).max() < 1e-13


def test_aligned_biases_flow_keeps_scales():
    params, ds = one_layer_problem()
    r = tf.simulate(params, ds, 1.0, wrt="aligned", train="biases", n_records=3)
    assert np.array_equal(r.scales[-1], r.scales[0]) or np.abs(r.scales[-1] - r.scales[0]).max() < 1e-15
    assert np.abs(r.cum_biases[-1] - r.cum_biases[0]).max() > 1e-3


def test_wrt_aligned_needs_aligned_params():
    p = tf.Params.random(1, 2, seed=0)
    ds = tf.Dataset(np.zeros((3, 2)), [0, 0, 0], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="Params.aligned"):
        tf.simulate(p, ds, 1.0, wrt="aligned")


# ------------------------------------------------------------- separation
def test_separation_report_counts_match_numpy():
    params, ds = separated_problem()
    rep = tf.separation_report(params, ds)
    # independent count: images layer by layer in clip form
    z = ds.points
    expected = np.zeros((2, 2), dtype=int)
    for l in range(2):
        w = z @ params.frames[l].T
        trunc = np.any(w <= params.thresholds[l], axis=1)
        expected[l] = np.bincount(ds.labels, weights=trunc, minlength=2)
        z = np.maximum(w, params.thresholds[l]) @ params.frames[l]
    assert np.array_equal(rep.truncated_counts, expected)
    assert rep.holds and rep.violations == [] and rep.reason == ""
    assert expected[0, 0] > 0 and expected[1, 1] > 0
    assert "holds" in str(rep)


def test_separation_report_names_each_violation():
    params, ds = separated_problem()
    # move layer 1's thresholds up into cluster 1 (which sits near 5)
    t = params.thresholds.copy()
    t[0] = 5.0
    p = tf.Params.aligned(params.frames, params.scales, -params.scales * t)
    rep = tf.separation_report(p, ds)
    assert not rep.holds
    (layer, cluster, count), = rep.violations
    assert (layer, cluster) == (1, 1) and count == rep.truncated_counts[0, 1] > 0
    assert f"layer 1 truncates {count} point(s) of cluster 1" in rep.reason


def test_separation_needs_one_layer_per_cluster():
    params, ds = one_layer_problem(Q=3)
    rep = tf.separation_report(params, ds)
    assert not rep.holds and "L = Q" in rep.reason
