"""Hand-built minimizers (MODEL.md section 10): one cone per cluster, 2^Q stationary points.

Layout used throughout: cluster c is a Gaussian blob of radius ~0.5 around ``R d_c``
(d_c distinct unit directions +-e_j), its target ``(R - r) d_c`` lies just outside
the blob on the side facing the other clusters, so that a cone with apex at the
target opening away from the others holds the whole blob.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import truncflow as tf
from truncflow.minimizers import (_separating_direction, _solve_margin_lp, collapse_mask, cone_minimizer,
                                  predicted_cost)

R, R_GAP, SPREAD = 10.0, 3.0, 0.5
#: Cost "zero to round-off", relative to scale^2; gradient "zero", relative to scale^2.
COST_ROUNDOFF = 1e-28
GRAD_ROUNDOFF = 1e-12
#: (Q, M) layouts for full collapse; M = 1 allows at most two clusters (one per side).
LAYOUTS = [(1, 1), (2, 1), (1, 3), (2, 2), (3, 2), (4, 2), (3, 3), (4, 3), (4, 8)]
SUBSET_LAYOUTS = [(2, 1), (3, 2), (4, 3)]


def directions(Q: int, M: int) -> np.ndarray:
    """(Q, M) distinct unit directions: e_1..e_Q when Q <= M, else +e_1, -e_1, +e_2, -e_2, ..."""
    if Q <= M:
        return np.eye(M)[:Q]
    assert Q <= 2 * M, "this layout has at most 2M clusters"
    signed = np.stack([np.eye(M), -np.eye(M)], axis=1).reshape(2 * M, M)
    return signed[:Q]


def radial_dataset(Q: int, M: int, n_per: int = 40, seed: int = 0, dtype=np.float64) -> tf.Dataset:
    """Q blobs of n_per points around R d_c with targets (R - r) d_c; points ordered by cluster."""
    d = directions(Q, M)
    points, labels = tf.gaussian_clusters(n_per * Q, R * d, SPREAD, seed=seed, dtype=dtype)
    return tf.Dataset(points, labels, (R - R_GAP) * d)


def data_scale(ds: tf.Dataset) -> float:
    """Largest absolute coordinate of points and targets."""
    return max(float(np.max(np.abs(ds.points))), float(np.max(np.abs(ds.targets))))


def all_subsets(Q: int):
    """Every subset of range(Q) as a tuple, from () to the full set (2^Q of them)."""
    return list(itertools.chain.from_iterable(itertools.combinations(range(Q), k) for k in range(Q + 1)))


def numpy_images(cum_weights: np.ndarray, cum_biases: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Independent forward pass of MODEL.md section 3 with np.linalg.solve:
    ``z <- W^-1 (relu(W z + b) - b)`` per layer. (N, M) float64."""
    z = np.asarray(points, dtype=np.float64)
    for W, b in zip(cum_weights, cum_biases):
        a = z @ W.T + b
        z = np.linalg.solve(W, (np.maximum(a, 0.0) - b).T).T
    return z


def explicit_cost(ds: tf.Dataset, collapsed) -> float:
    """The predicted cost written out cluster by cluster: free clusters stay put."""
    total = 0.0
    for c in range(ds.n_clusters):
        if c not in collapsed:
            diff = np.asarray(ds.points[ds.labels == c], dtype=np.float64) - ds.targets[c]
            total += float(np.sum(diff ** 2))
    return total / (2 * ds.n_points)


# ------------------------------------------------------------- full collapse
@pytest.mark.parametrize("Q,M", LAYOUTS)
def test_full_collapse_has_zero_cost_and_gradient(Q, M):
    ds = radial_dataset(Q, M)
    scale = data_scale(ds)
    params = cone_minimizer(ds)
    assert params.n_layers == Q and params.width == M and not params.has_output
    cost, grad = tf.gradient(params, ds)
    assert cost <= COST_ROUNDOFF * scale ** 2, cost
    assert grad.norm() <= GRAD_ROUNDOFF * scale ** 2, grad.norm()
    images = tf.truncate(params, ds.points)
    np.testing.assert_allclose(images, ds.targets[ds.labels], rtol=0, atol=1e-12 * scale)
    apexes, _ = params.cones()
    np.testing.assert_allclose(apexes, ds.targets, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("Q,M", [(2, 1), (3, 2), (4, 8)])
def test_full_collapse_gradient_vanishes_per_cluster_and_in_layers(Q, M):
    ds = radial_dataset(Q, M, seed=3)
    scale = data_scale(ds)
    params = cone_minimizer(ds)
    costs, per_cluster = tf.gradient(params, ds, per_cluster=True)
    assert costs.shape == (Q,) and np.all(costs <= COST_ROUNDOFF * scale ** 2), costs
    for c in range(Q):
        assert per_cluster.cluster(c).norm() <= GRAD_ROUNDOFF * scale ** 2, (c, per_cluster.cluster(c).norm())
    _, layers = tf.gradient(params, ds, wrt="layers")
    assert layers.wrt == "layers"
    assert layers.norm() <= GRAD_ROUNDOFF * scale ** 2, layers.norm()
    _, layers_pc = tf.gradient(params, ds, wrt="layers", per_cluster=True)
    assert np.max(np.abs(layers_pc.weights)) <= GRAD_ROUNDOFF * scale ** 2


@pytest.mark.parametrize("Q,M", [(2, 1), (3, 3), (4, 8)])
def test_collapse_agrees_with_independent_numpy_forward_pass(Q, M):
    ds = radial_dataset(Q, M, seed=5)
    scale = data_scale(ds)
    params = cone_minimizer(ds)
    ours = numpy_images(params.cum_weights, params.cum_biases, ds.points)
    np.testing.assert_allclose(ours, ds.targets[ds.labels], rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(tf.truncate(params, ds.points), ours, rtol=0, atol=1e-12 * scale)
    # the layer parameters reproduce the same network by the ordinary forward pass
    x = np.asarray(ds.points, dtype=np.float64)
    for W, b in zip(params.weights, params.biases):
        x = np.maximum(x @ W.T + b, 0.0)
    np.testing.assert_allclose(x, ds.targets[ds.labels] @ params.cum_weights[-1].T + params.cum_biases[-1],
                               rtol=0, atol=1e-11 * scale)


@pytest.mark.parametrize("Q,M", [(2, 1), (3, 2), (4, 3)])
def test_cone_coordinates_have_the_required_signs(Q, M):
    """Each collapsing layer holds its cluster in the closed negative orthant and what it
    sees of the others (later clusters' points, earlier targets) in the open positive one;
    a free layer is W = I with everything it sees strictly positive."""
    ds = radial_dataset(Q, M, seed=7)
    points = np.asarray(ds.points)
    for collapse in all_subsets(Q):
        params = cone_minimizer(ds, collapse)
        for c in range(Q):
            W, b = params.cum_weights[c], params.cum_biases[c]
            apex = -np.linalg.solve(W, b)
            earlier_collapsed = [k for k in collapse if k < c]
            still_free = ~np.isin(ds.labels, earlier_collapsed)
            own = points[ds.labels == c]
            others = np.concatenate([points[still_free & (ds.labels != c)], ds.targets[earlier_collapsed]])
            if c in collapse:
                np.testing.assert_allclose(apex, ds.targets[c], rtol=0, atol=1e-12 * R)
                assert np.all(own @ W.T + b < 0), (collapse, c)
                assert np.all(others @ W.T + b > 0), (collapse, c)
            else:
                assert np.array_equal(W, np.eye(M)), (collapse, c)
                assert np.all(np.concatenate([own, others]) @ W.T + b > 0), (collapse, c)


# ------------------------------------------------ the 2^Q - 1 degenerate minima
@pytest.mark.parametrize("Q,M", SUBSET_LAYOUTS)
def test_every_subset_is_stationary_with_predicted_cost(Q, M):
    ds = radial_dataset(Q, M, seed=11)
    scale = data_scale(ds)
    for collapse in all_subsets(Q):
        params = cone_minimizer(ds, collapse)
        cost, grad = tf.gradient(params, ds)
        predicted = predicted_cost(ds, collapse)
        assert predicted == pytest.approx(explicit_cost(ds, collapse), rel=1e-13, abs=0)
        if len(collapse) == Q:
            assert predicted == 0.0 and cost <= COST_ROUNDOFF * scale ** 2
        else:
            assert predicted > 0 and abs(cost - predicted) <= 1e-12 * predicted, (collapse, cost, predicted)
        assert grad.norm() <= GRAD_ROUNDOFF * scale ** 2, (collapse, grad.norm())
        images = tf.truncate(params, ds.points)
        collapsed_point = np.isin(ds.labels, collapse)
        assert np.array_equal(images[~collapsed_point], ds.points[~collapsed_point]), collapse
        np.testing.assert_allclose(images[collapsed_point], ds.targets[ds.labels[collapsed_point]],
                                   rtol=0, atol=1e-12 * scale)
        # free clusters contribute exactly nothing (MODEL.md section 6); collapsed ones round-off
        _, per_cluster = tf.gradient(params, ds, per_cluster=True)
        for c in range(Q):
            part = per_cluster.cluster(c)
            if c in collapse:
                assert part.norm() <= GRAD_ROUNDOFF * scale ** 2
            else:
                assert not part.weights.any() and not part.biases.any(), (collapse, c)


def test_empty_collapse_is_the_identity_network():
    ds = radial_dataset(3, 2, seed=2)
    params = cone_minimizer(ds, [])
    assert np.array_equal(params.cum_weights, np.broadcast_to(np.eye(2), (3, 2, 2)))
    assert np.array_equal(tf.truncate(params, ds.points), ds.points)
    full = np.sum((ds.points - ds.targets[ds.labels]) ** 2) / (2 * ds.n_points)
    assert tf.cost(params, ds) == pytest.approx(full, rel=1e-13)
    assert predicted_cost(ds, []) == pytest.approx(full, rel=1e-13)


@pytest.mark.parametrize("form", ["list", "tuple", "numpy"])
def test_boolean_mask_equals_the_indices(form):
    """collapse may be a boolean mask of length Q: the same network and cost as its indices."""
    ds = radial_dataset(3, 2, seed=5)
    for subset in all_subsets(3):
        bits = [c in subset for c in range(3)]
        mask = {"list": bits, "tuple": tuple(np.bool_(b) for b in bits), "numpy": np.array(bits)}[form]
        assert np.array_equal(collapse_mask(mask, 3), np.array(bits))
        by_mask, by_index = cone_minimizer(ds, mask), cone_minimizer(ds, list(subset))
        assert np.array_equal(by_mask.cum_weights, by_index.cum_weights), subset
        assert np.array_equal(by_mask.cum_biases, by_index.cum_biases), subset
        assert predicted_cost(ds, mask) == predicted_cost(ds, subset)


@pytest.mark.parametrize("Q,M", [(2, 1), (3, 2), (4, 3)])
def test_free_clusters_stay_free_under_small_perturbation(Q, M):
    """Stationarity: perturbing every cumulative parameter by ~1e-6 (relative) leaves the
    free clusters free, so their gradient contributions stay exactly 0, while the collapsed
    clusters now do contribute (their apex moved off the target)."""
    ds = radial_dataset(Q, M, seed=13)
    rng = np.random.default_rng(17)
    for collapse in all_subsets(Q)[1:-1]:
        params = cone_minimizer(ds, collapse)
        cw, cb = params.cum_weights, params.cum_biases
        cw = cw + 1e-6 * np.abs(cw).max() * rng.standard_normal(cw.shape)
        cb = cb + 1e-6 * np.abs(cb).max() * rng.standard_normal(cb.shape)
        perturbed = tf.Params.from_cumulative(cw, cb)
        _, per_cluster = tf.gradient(perturbed, ds, per_cluster=True)
        images = tf.truncate(perturbed, ds.points)
        for c in range(Q):
            part = per_cluster.cluster(c)
            mine = ds.labels == c
            if c in collapse:
                assert part.norm() > 1e-12, (collapse, c, part.norm())
            else:
                assert not part.weights.any() and not part.biases.any(), (collapse, c)
                assert np.array_equal(images[mine], ds.points[mine]), (collapse, c)


# --------------------------------------------------------------- variants
def test_float32_points():
    ds64 = radial_dataset(3, 3, seed=19)
    ds32 = radial_dataset(3, 3, seed=19, dtype=np.float32)
    assert ds32.points.dtype == np.float32
    scale = data_scale(ds32)
    params = cone_minimizer(ds32)
    cost, grad = tf.gradient(params, ds32)
    assert cost <= COST_ROUNDOFF * scale ** 2 and grad.norm() <= GRAD_ROUNDOFF * scale ** 2
    np.testing.assert_allclose(tf.truncate(params, ds32.points), ds32.targets[ds32.labels],
                               rtol=0, atol=1e-12 * scale)
    assert predicted_cost(ds32, [0]) == pytest.approx(explicit_cost(ds32, [0]), rel=1e-13)
    assert predicted_cost(ds32, [0]) != predicted_cost(ds64, [0])   # the float32 points are used as given


def test_two_clusters_sharing_a_target():
    """The second cone sees the first cluster's images at its own apex: they stay there."""
    points, labels = tf.gaussian_clusters(80, [[10.0, 0.0], [0.0, 10.0]], SPREAD, seed=23)
    ds = tf.Dataset(points, labels, np.zeros((2, 2)))
    params = cone_minimizer(ds)
    cost, grad = tf.gradient(params, ds)
    assert cost <= COST_ROUNDOFF * 100 and grad.norm() <= GRAD_ROUNDOFF * 100
    np.testing.assert_allclose(tf.truncate(params, points), 0.0, rtol=0, atol=1e-12 * 10)


def test_deterministic_and_duplicates_count_once():
    ds = radial_dataset(4, 3, seed=29)
    a, b = cone_minimizer(ds, [2, 0]), cone_minimizer(ds, [0, 2, 2, 0])
    c = cone_minimizer(ds, np.array([0, 2], dtype=np.int32))
    d = cone_minimizer(ds, (k for k in {2, 0}))
    for other in (b, c, d):
        assert np.array_equal(a.cum_weights, other.cum_weights)
        assert np.array_equal(a.cum_biases, other.cum_biases)
    assert not np.array_equal(a.cum_weights, cone_minimizer(ds, [0]).cum_weights)


def test_cutting_planes_reach_the_full_linear_program_optimum():
    """The LP solved on a few rows at a time reaches the optimum of the LP over all rows."""
    rng = np.random.default_rng(31)
    M, K = 5, 4000
    u_true = rng.standard_normal(M)
    rows = rng.standard_normal((K, M))
    rows[rows @ u_true < 0] *= -1                 # every row on the positive side of u_true
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    u, margin = _separating_direction(rows)
    u_full, _ = _solve_margin_lp(rows)
    full_margin = np.min(rows @ u_full) / np.linalg.norm(u_full)
    assert margin > 0 and abs(np.linalg.norm(u) - 1) < 1e-15
    assert margin == pytest.approx(np.min(rows @ u), abs=1e-15)
    # same LP optimum (the normalized margins can differ: box-constrained u)
    assert np.min(rows @ u) / np.abs(u).max() == pytest.approx(np.min(rows @ u_full) / np.abs(u_full).max(),
                                                               rel=1e-6)
    assert full_margin > 0


# ------------------------------------------------------------------ errors
def test_target_inside_own_cluster_is_refused():
    Q, M = 3, 2
    d = directions(Q, M)
    points, labels = tf.gaussian_clusters(90, R * d, SPREAD, seed=37)
    with pytest.raises(ValueError, match=r"cluster 0 cannot be collapsed by layer 1.*convex hull of cluster 0"):
        cone_minimizer(tf.Dataset(points, labels, R * d))
    # collapsing only the clusters whose targets are fine works
    targets = (R - R_GAP) * d
    targets[1] = R * d[1]
    ds = tf.Dataset(points, labels, targets)
    with pytest.raises(ValueError, match=r"cluster 1 cannot be collapsed by layer 2.*convex hull of cluster 1"):
        cone_minimizer(ds)
    params = cone_minimizer(ds, [0, 2])
    assert tf.cost(params, ds) == pytest.approx(predicted_cost(ds, [0, 2]), rel=1e-12)


def test_target_inside_another_cluster_names_the_blocking_cluster():
    d = directions(3, 2)
    points, labels = tf.gaussian_clusters(90, R * d, SPREAD, seed=41)
    targets = (R - R_GAP) * d
    targets[0] = R * d[2]                      # in the middle of cluster 2
    with pytest.raises(ValueError, match=r"cluster 0 cannot be collapsed by layer 1.*blocked by cluster 2$"):
        cone_minimizer(tf.Dataset(points, labels, targets))


def test_interleaved_clusters_are_refused():
    d = directions(2, 2)
    points, labels = tf.gaussian_clusters(100, R * d, SPREAD, seed=43)
    labels = labels.copy()
    labels[::2] = 1 - labels[::2]              # both blobs hold points of both clusters
    with pytest.raises(ValueError, match=r"cluster 0 cannot be collapsed.*blocked by cluster 1"):
        cone_minimizer(tf.Dataset(points, labels, (R - R_GAP) * d))


def test_point_at_the_target_of_another_cluster_is_refused():
    ds = radial_dataset(2, 2, seed=47)
    points = np.array(ds.points)
    points[-1] = ds.targets[0]                 # one point of cluster 1
    with pytest.raises(ValueError, match=r"cluster 0 cannot.*cluster 1 \(1 point\(s\) lie exactly at the target\)"):
        cone_minimizer(tf.Dataset(points, ds.labels, ds.targets))


def test_earlier_collapsed_target_can_block():
    """Layer 1 cuts cluster 0 (y ~ 10) off at y = 7 from cluster 1 (y ~ 4); but seen from
    cluster 1's target y = 1, the collapsed cluster 0 (at y = 7) lies on cluster 1's side."""
    points, labels = tf.gaussian_clusters(80, [[0.0, 10.0], [0.0, 4.0]], 0.3, seed=53)
    targets = np.array([[0.0, 7.0], [0.0, 1.0]])
    ds = tf.Dataset(points, labels, targets)
    with pytest.raises(ValueError, match=r"cluster 1 cannot be collapsed by layer 2.*"
                                         r"blocked by the target of collapsed cluster 0"):
        cone_minimizer(ds)
    # without collapsing cluster 0, layer 2 sees its points instead, also on cluster 1's side
    with pytest.raises(ValueError, match=r"cluster 1 cannot.*blocked by cluster 0$"):
        cone_minimizer(ds, [1])
    assert tf.cost(cone_minimizer(ds, [0]), ds) == pytest.approx(predicted_cost(ds, [0]), rel=1e-12)


def test_clusters_that_block_only_together_are_reported():
    """From the target (1, 0) cluster 0 lies toward -x; clusters 1 and 2 lie at (0, +-5):
    each alone can be cut off, the two together cannot."""
    rng = np.random.default_rng(59)
    own = np.array([-1.0, 0.0]) + 0.2 * rng.standard_normal((20, 2))
    points = np.concatenate([own, [[0.0, 5.0], [0.0, -5.0]]])
    labels = np.array([0] * 20 + [1, 2])
    targets = np.array([[1.0, 0.0], [0.0, 9.0], [0.0, -9.0]])
    with pytest.raises(ValueError, match=r"cluster 0 cannot.*no single other cluster blocks it, but together "
                                         r"clusters 1, 2"):
        cone_minimizer(tf.Dataset(points, labels, targets))


@pytest.mark.parametrize("collapse,pattern", [
    ([3], r"collapse\[0\] = 3 is out of range.*3 cluster"),
    ([0, -1], r"collapse\[1\] = -1 is out of range"),
    ([1.0], r"collapse\[0\] = 1.0 is not a cluster index"),
    ([True], r"boolean mask of length 1, but the dataset has 3 cluster"),
    ([0, True], r"collapse\[1\] = True mixes booleans and cluster indices"),
    ([[0, 1]], r"collapse\[0\] = \[0, 1\] is not a cluster index"),
    (np.array([0.0, 1.0]), r"collapse\[0\] = .* is not a cluster index"),
    (np.array([[0, 1]]), r"collapse must be None, a boolean mask of length 3 or an iterable"),
    ("01", r"collapse must be None, a boolean mask"),
    (1, r"collapse must be None, a boolean mask"),
    (np.array([True, False]), r"boolean mask of length 2, but the dataset has 3 cluster"),
    ([True, False, True, False], r"boolean mask of length 4"),
])
def test_bad_collapse_values(collapse, pattern):
    ds = radial_dataset(3, 2)
    with pytest.raises(ValueError, match=pattern):
        cone_minimizer(ds, collapse)
    with pytest.raises(ValueError, match=pattern):
        predicted_cost(ds, collapse)


def test_bad_dataset():
    ds = radial_dataset(2, 3)
    with pytest.raises(ValueError, match=r"dataset must be a truncflow.Dataset"):
        cone_minimizer((ds.points, ds.labels))
    output_targets = ds.with_targets(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"input-space targets of shape \(Q, 3\).*\(2, 2\)"):
        cone_minimizer(output_targets)
    with pytest.raises(ValueError, match=r"input-space targets"):
        predicted_cost(output_targets)
