"""truncflow.observe (MODEL.md section 11) against a direct NumPy computation.

The direct computation takes the images x~^(l) and the cone coordinates
a = W^(l) x~^(l-1) + b^(l) from tests/reference.py (one point at a time, no shared code)
and forms every statistic with plain NumPy: truncated (a_k <= 0) fractions per layer,
cluster and coordinate, the population covariance trace of each cluster's images, the
within / between scatter ratio, distinct activation patterns, per-cluster costs.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

import truncflow as tf

import reference as ref
from conftest import assert_close, make_problem


@pytest.fixture(autouse=True, scope="module")
def _one_numba_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def direct(params, points, labels, targets, kind, Q):
    """Every field of an Observation, from the reference images with NumPy."""
    x = np.asarray(points, dtype=np.float64)
    N, M = x.shape
    L = params.n_layers
    cw, cb = np.asarray(params.cum_weights), np.asarray(params.cum_biases)
    img = ref.images(cw, cb, x)                      # (L+1, N, M)
    a = np.stack([img[l] @ cw[l].T + cb[l] for l in range(L)])   # (L, N, M)
    trunc = a <= 0
    out = {k: np.full(s, np.nan) for k, s in [("truncated_fraction", (L, Q)), ("collapsed_fraction", (L, Q)),
                                              ("coordinate_truncated_fraction", (L, Q, M)),
                                              ("free_coordinates", (L, Q)), ("spread", (L, Q))]}
    within, between = np.zeros(L), np.zeros(L)
    for l in range(L):
        overall = img[l + 1].mean(axis=0)
        for q in range(Q):
            sel = labels == q
            n = sel.sum()
            if n == 0:
                continue
            t = trunc[l, sel]
            out["truncated_fraction"][l, q] = t.any(axis=1).mean()
            out["collapsed_fraction"][l, q] = t.all(axis=1).mean()
            out["coordinate_truncated_fraction"][l, q] = t.mean(axis=0)
            out["free_coordinates"][l, q] = (~t).sum(axis=1).mean()
            z = img[l + 1, sel]
            out["spread"][l, q] = np.trace(np.atleast_2d(np.cov(z.T, bias=True)))
            within[l] += n * out["spread"][l, q]
            between[l] += n * np.sum((z.mean(axis=0) - overall) ** 2)
    out["collapse_ratio"] = within / between
    ow, ob = (params.out_weight, params.out_bias) if kind == "output" else (None, None)
    out["cost_per_cluster"] = ref.cost(cw, cb, x, labels, targets, kind, ow, ob)
    out["cost"] = out["cost_per_cluster"].sum()
    pats = ref.patterns(cw, cb, x).reshape(N, -1)
    out["n_patterns"] = len(np.unique(pats, axis=0))
    out["patterns"] = pats
    out["images"] = img
    return out


def check(obs, d, rtol=1e-12, ratio=True):
    scale = max(1.0, np.abs(d["images"]).max())
    assert obs.cost == pytest.approx(d["cost"], rel=rtol)
    assert_close(obs.cost_per_cluster, d["cost_per_cluster"], rtol, "cost per cluster")
    assert obs.cost_per_cluster.sum() == pytest.approx(obs.cost, rel=1e-14)
    for name in ("truncated_fraction", "collapsed_fraction", "coordinate_truncated_fraction", "free_coordinates"):
        got, want = getattr(obs, name), d[name]
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        assert_close(got[ok], want[ok], 1e-14, name)
    ok = ~np.isnan(d["spread"])
    assert np.array_equal(np.isnan(obs.spread), ~ok)
    # spread: E|z - mean|^2 computed from moment sums: cancellation of order eps * scale^2
    assert_close(obs.spread[ok], d["spread"][ok], 1e-10, "spread", floor=scale ** 2)
    assert np.all(obs.spread[ok] >= 0)
    if ratio:
        assert_close(obs.collapse_ratio, d["collapse_ratio"], 1e-9, "collapse ratio")
    assert obs.n_patterns == d["n_patterns"]
    # the per-point hash separates exactly the distinct patterns (no collision in these cases)
    _, inv_p = np.unique(d["patterns"], axis=0, return_inverse=True)
    _, inv_h = np.unique(obs.pattern_hash, return_inverse=True)
    same_p = inv_p.ravel()[:, None] == inv_p.ravel()[None, :]
    same_h = inv_h[:, None] == inv_h[None, :]
    assert np.array_equal(same_p, same_h)
    assert obs.pattern_hash.dtype == np.uint64 and obs.pattern_hash.shape == (len(inv_h),)


def problem_with_collapse(seed, L=3, M=4, N=40, Q=3, P=2):
    """conftest.make_problem with layer 2 pushed down so that some points collapse (all a_k <= 0)."""
    pr = make_problem(seed, L=L, M=M, N=N, Q=Q, P=P, bias_scale=0.8)
    b = np.array(pr.params.biases)
    b[1] -= 1.0
    params = tf.Params.from_layers(pr.params.weights, b, pr.params.out_weight, pr.params.out_bias)
    return params, pr


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_observe_against_numpy(kind, seed):
    params, pr = problem_with_collapse(seed)
    targets = pr.targets_in if kind == "input" else pr.targets_out
    ds = tf.Dataset(pr.points, pr.labels, targets)
    obs = tf.observe(params, ds, kind)
    d = direct(params, pr.points, pr.labels, targets, kind, 3)
    check(obs, d)
    # the case is not trivial: truncated, collapsed and untouched points
    assert 0 < d["collapsed_fraction"].max() and d["coordinate_truncated_fraction"].min() < 1
    assert 1 < d["n_patterns"] < pr.points.shape[0]
    # the patterns are those of truncflow.activation_patterns
    pats = tf.activation_patterns(params, pr.points)
    assert np.array_equal(pats.reshape(len(pats), -1), d["patterns"])
    assert obs.n_patterns == len(np.unique(pats.reshape(len(pats), -1), axis=0))


def test_observe_wide_layer_two_pattern_words():
    """M = 70: two 64-bit words per layer in the patterns and in the hash."""
    pr = make_problem(3, L=2, M=70, N=25, Q=2, scale=0.3, bias_scale=0.5)
    ds = pr.dataset("input")
    obs = tf.observe(pr.params, ds)
    d = direct(pr.params, pr.points, pr.labels, pr.targets_in, "input", 2)
    check(obs, d, rtol=1e-11)
    assert tf.activation_patterns(pr.params, pr.points).shape == (25, 2, 2)


def test_points_on_a_hyperplane_count_as_truncated():
    """W = I, b = 0: a point with a zero coordinate is truncated there (a_k == 0)."""
    params = tf.Params.from_layers(np.eye(2)[None], np.zeros((1, 2)))
    pts = np.array([[0.0, 1.0], [1.0, 1.0], [-1.0, 2.0], [0.0, 0.0]])
    ds = tf.Dataset(pts, [0, 0, 1, 1], np.zeros((2, 2)))
    obs = tf.observe(params, ds)
    assert_close(obs.coordinate_truncated_fraction[0], [[0.5, 0.0], [1.0, 0.5]], 0, "coordinate fractions")
    assert_close(obs.truncated_fraction[0], [0.5, 1.0], 0, "truncated")
    assert_close(obs.collapsed_fraction[0], [0.0, 0.5], 0, "collapsed")
    assert_close(obs.free_coordinates[0], [1.5, 0.5], 0, "free coordinates")
    assert obs.n_patterns == 3                  # {1}, {0, 1}, {1}, {}
    # images: max(x, 0); cluster 0 -> (0, 1), (1, 1); cluster 1 -> (0, 2), (0, 0)
    assert_close(obs.spread[0], [0.25, 1.0], 1e-15, "spread")
    assert obs.cost == pytest.approx((1 + 2 + 4) / 8, rel=1e-15)
    check(obs, direct(params, pts, ds.labels, ds.targets, "input", 2))


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.long  # compiles the kernels for float32 points
def test_float32_points(kind):
    params, pr = problem_with_collapse(4, N=50)
    pts32 = pr.points.astype(np.float32)
    targets = pr.targets_in if kind == "input" else pr.targets_out
    obs32 = tf.observe(params, tf.Dataset(pts32, pr.labels, targets), kind)
    pts64 = pts32.astype(np.float64)            # the same values, exactly
    check(obs32, direct(params, pts64, pr.labels, targets, kind, 3))
    obs64 = tf.observe(params, tf.Dataset(pts64, pr.labels, targets), kind)
    for name in ("cost_per_cluster", "truncated_fraction", "collapsed_fraction", "coordinate_truncated_fraction",
                 "free_coordinates", "spread", "collapse_ratio"):
        assert_close(getattr(obs32, name), getattr(obs64, name), 1e-13, name, floor=1.0)
    assert np.array_equal(obs32.pattern_hash, obs64.pattern_hash)


def test_empty_cluster_and_shift():
    """A cluster without points gives NaN fractions and spreads, cost 0; the moment origin
    ``shift`` changes nothing but round-off."""
    params, pr = problem_with_collapse(5)
    labels = np.where(pr.labels == 2, 0, pr.labels)          # cluster 2 empty
    with pytest.warns(tf.EmptyClusterWarning, match="cluster"):
        ds = tf.Dataset(pr.points, labels, pr.targets_in)
    with np.errstate(invalid="ignore"):     # 0 / 0 for the empty cluster's fractions
        obs = tf.observe(params, ds)
    d = direct(params, pr.points, labels, pr.targets_in, "input", 3)
    check(obs, d, ratio=False)          # the ratio: see the test below
    assert np.all(np.isnan(obs.truncated_fraction[:, 2])) and np.all(np.isnan(obs.spread[:, 2]))
    assert obs.cost_per_cluster[2] == 0
    full = tf.observe(params, tf.Dataset(pr.points, pr.labels, pr.targets_in))
    for shift in (np.zeros((3, 4)), np.full((3, 4), 3.0)):
        other = tf.observe(params, tf.Dataset(pr.points, pr.labels, pr.targets_in), shift=shift)
        assert_close(other.spread, full.spread, 1e-10, "spread with shift", floor=1.0)
        assert_close(other.collapse_ratio, full.collapse_ratio, 1e-9, "ratio with shift")
        assert np.array_equal(other.coordinate_truncated_fraction, full.coordinate_truncated_fraction)


def test_empty_cluster_collapse_ratio_is_finite():
    params = tf.Params.from_layers(np.eye(2)[None], np.zeros((1, 2)))
    pts = np.array([[1.0, 2.0], [2.0, 1.0], [-1.0, 3.0], [3.0, 3.0]])
    with pytest.warns(tf.EmptyClusterWarning):
        three_clusters = tf.Dataset(pts, [0, 0, 1, 1], np.zeros((3, 2)))   # cluster 2 empty
    with np.errstate(invalid="ignore"):
        three = tf.observe(params, three_clusters)
    two = tf.observe(params, tf.Dataset(pts, [0, 0, 1, 1], np.zeros((2, 2))))
    # images (1,2), (2,1) | (0,3), (3,3): within = 2 * 0.5 + 2 * 2.25 = 5.5, between = 4 * 0.75^2 = 2.25
    d = direct(params, pts, np.array([0, 0, 1, 1]), np.zeros((2, 2)), "input", 2)
    assert_close(two.collapse_ratio, d["collapse_ratio"], 1e-12, "two clusters")
    assert_close(two.collapse_ratio, [5.5 / 2.25], 1e-14, "by hand")
    assert_close(three.collapse_ratio, two.collapse_ratio, 1e-12, "with an empty third cluster")


def test_collapsed_cluster_has_zero_spread_and_ratio_falls():
    """A cluster mapped entirely to the apex of layer 1: spread 0, collapsed fraction 1,
    free coordinates 0, and its images sit at the apex."""
    M = 3
    rng = np.random.default_rng(7)
    W = np.eye(M) + 0.2 * rng.standard_normal((M, M))
    c0 = rng.normal(-3.0, 0.3, (15, M))          # far on the negative side of every hyperplane
    c1 = rng.normal(+3.0, 0.3, (15, M))          # positive orthant: untouched
    pts = np.vstack([c0, c1]) @ np.linalg.inv(W).T   # a = W x = the sampled coordinates (b = 0)
    params = tf.Params.from_layers(W[None], np.zeros((1, M)))
    ds = tf.Dataset(pts, np.repeat([0, 1], 15), np.zeros((2, M)))
    obs = tf.observe(params, ds)
    assert obs.collapsed_fraction[0, 0] == 1 and obs.truncated_fraction[0, 1] == 0
    assert obs.free_coordinates[0, 0] == 0 and obs.free_coordinates[0, 1] == M
    assert obs.spread[0, 0] == pytest.approx(0, abs=1e-12)
    assert_close(obs.spread[0, 1], np.trace(np.cov(pts[15:].T, bias=True)), 1e-12, "untouched spread")
    check(obs, direct(params, pts, ds.labels, ds.targets, "input", 2))
    apex = params.cones()[0][0]
    assert_close(tf.truncate(params, pts[:15]), np.tile(apex, (15, 1)), 1e-12, "apex", floor=1.0)
    assert obs.n_patterns == 2


def test_observe_rejects_bad_input():
    params, pr = problem_with_collapse(0)
    ds = pr.dataset("input")
    with pytest.raises(ValueError, match="kind"):
        tf.observe(params, ds, "hidden")
    with pytest.raises(ValueError, match="output layer"):
        tf.observe(tf.Params.from_layers(params.weights, params.biases), pr.dataset("output"), "output")
