"""truncflow.cluster_statistics against a direct NumPy computation.

The expected values take the images x~^(l) from tests/reference.py (one point at a time,
no code shared with the kernels), the cone coordinates a = W^(l+1) x~^(l) + b^(l+1) with
NumPy, and form every count and moment with plain masks and einsum; the cost and the
per-cluster gradient come from reference.grad_cumulative, and are also held against
truncflow.gradient(per_cluster=True).
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

import truncflow as tf
from truncflow.kernels import config
from truncflow.statistics import ClusterStatistics, _partial_bytes, cluster_statistics

import reference as ref
from conftest import assert_close, make_problem

KINDS = ("input", "output")


# ------------------------------------------------------------------ helpers
def direct(params, points, labels, Q):
    """Counts and moments of every layer's input images, with NumPy from the reference images.

    Returns a dict: counts (Q,), truncated (L, Q, M), free1/con1 (L, Q, M, M),
    free2/con2 (L, Q, M, M, M), cluster_sums (L, Q, M), cluster_second (L, Q, M, M), and the scales abs1 (L, Q, M)
    = sum |z| and abs2 (L, Q, M, M) = sum |z z^T| of the summed terms.
    """
    x = np.asarray(points, dtype=np.float64)
    cw, cb = np.asarray(params.cum_weights), np.asarray(params.cum_biases)
    L, M = cw.shape[0], x.shape[1]
    img = ref.images(cw, cb, x)                                    # (L+1, N, M)
    a = np.stack([img[l] @ cw[l].T + cb[l] for l in range(L)])     # (L, N, M)
    out = {k: np.zeros(s) for k, s in [("truncated", (L, Q, M)), ("free1", (L, Q, M, M)),
                                       ("con1", (L, Q, M, M)), ("free2", (L, Q, M, M, M)),
                                       ("con2", (L, Q, M, M, M)), ("cluster_sums", (L, Q, M)),
                                       ("cluster_second", (L, Q, M, M)), ("abs1", (L, Q, M)), ("abs2", (L, Q, M, M))]}
    out["counts"] = np.array([np.count_nonzero(labels == q) for q in range(Q)])
    for l in range(L):
        for q in range(Q):
            sel = labels == q
            z = img[l, sel]                                        # (n, M) input images
            free = (a[l, sel] > 0).astype(np.float64)              # (n, M): 1 where a_k > 0
            trunc = 1.0 - free
            out["truncated"][l, q] = trunc.sum(axis=0)
            out["free1"][l, q] = np.einsum("ik,ij->kj", free, z)
            out["con1"][l, q] = np.einsum("ik,ij->kj", trunc, z)
            out["free2"][l, q] = np.einsum("ik,ij,im->kjm", free, z, z)
            out["con2"][l, q] = np.einsum("ik,ij,im->kjm", trunc, z, z)
            out["cluster_sums"][l, q] = z.sum(axis=0)
            out["cluster_second"][l, q] = z.T @ z
            out["abs1"][l, q] = np.abs(z).sum(axis=0)
            out["abs2"][l, q] = np.abs(z).T @ np.abs(z)
    return out


def reference_gradient(params, ds, kind):
    ow, ob = (params.out_weight, params.out_bias) if kind == "output" else (None, None)
    return ref.grad_cumulative(params.cum_weights, params.cum_biases, np.array(ds.points, dtype=np.float64),
                               ds.labels, ds.targets, kind, ow, ob)


def check_moments(st, d, second, rtol=1e-12):
    """Counts exactly; sums to rtol against the scale of the summed terms."""
    L, Q, M = d["truncated"].shape
    assert st.counts.dtype == np.int64 and st.counts.shape == (Q,)
    assert np.array_equal(st.counts, d["counts"])
    assert st.truncated_counts.dtype == np.int64 and st.truncated_counts.shape == (L, Q, M)
    assert np.array_equal(st.truncated_counts, d["truncated"])
    assert np.array_equal(st.free_counts, d["counts"][None, :, None] - d["truncated"])
    floor1 = d["abs1"].max()
    for name, key in (("free_sums", "free1"), ("constrained_sums", "con1")):
        got = getattr(st, name)
        assert got.dtype == np.float64 and got.shape == (L, Q, M, M), name
        assert_close(got, d[key], rtol, name, floor1)
    # free + constrained is the whole cluster, for every coordinate k
    whole = np.broadcast_to(d["cluster_sums"][:, :, None, :], (L, Q, M, M))
    assert_close(st.free_sums + st.constrained_sums, whole, rtol, "free + constrained sums", floor1)
    assert_close(st.cluster_sums, d["cluster_sums"], rtol, "cluster_sums", floor1)
    if not second:
        assert st.free_second is None and st.constrained_second is None
        return
    floor2 = d["abs2"].max()
    for name, key in (("free_second", "free2"), ("constrained_second", "con2")):
        got = getattr(st, name)
        assert got.dtype == np.float64 and got.shape == (L, Q, M, M, M), name
        assert np.array_equal(got, np.swapaxes(got, -1, -2)), f"{name} is not symmetric"
        assert_close(got, d[key], rtol, name, floor2)
    whole2 = np.broadcast_to(d["cluster_second"][:, :, None], (L, Q, M, M, M))
    assert_close(st.free_second + st.constrained_second, whole2, rtol, "free + constrained second", floor2)


def check_cost_and_gradient(st, params, ds, kind, r=None):
    """Cost and per-cluster gradient against the reference and against tf.gradient(per_cluster=True)."""
    Q = ds.n_clusters
    if r is None:
        r = reference_gradient(params, ds, kind)
    floor = np.sqrt(2 * r["cost"].sum()) * max(1.0, np.max(np.abs(ds.points)))
    g = st.gradient
    assert g.wrt == "cumulative"
    assert isinstance(st.cost, float) and st.cost_per_cluster.shape == (Q,)
    assert_close(st.cost_per_cluster, r["cost"], 1e-12, "cost per cluster")
    assert st.cost == pytest.approx(r["cost"].sum(), rel=1e-12)
    names = ("weights", "biases") + (("out_weight", "out_bias") if kind == "output" else ())
    for name in names:
        assert_close(getattr(g, name), r[name], 1e-12, f"{name} vs reference", floor)
    if kind == "input":
        assert g.out_weight is None and g.out_bias is None
    c, gg = tf.gradient(params, ds, kind, per_cluster=True)
    assert_close(st.cost_per_cluster, c, 1e-13, "cost per cluster vs tf.gradient")
    for name in names:
        assert getattr(g, name).shape == getattr(gg, name).shape
        assert_close(getattr(g, name), getattr(gg, name), 1e-13, f"{name} vs tf.gradient", floor)


def unpacked_free(params, points):
    """(N, L, M) bool from tf.activation_patterns: True where coordinate k is free."""
    pat = tf.activation_patterns(params, points)
    N, L, _ = pat.shape
    M = params.width
    bits = np.unpackbits(pat.view(np.uint8), axis=-1, bitorder="little").reshape(N, L, -1)
    return bits[..., :M].astype(bool)


# ------------------------------------------------------------ against NumPy
CASES = [  # L, M, N, Q, kind, second_moments
    (1, 1, 40, 1, "input", True),
    (1, 1, 40, 3, "output", False),
    (3, 3, 60, 3, "input", True),
    (3, 3, 60, 3, "output", True),
    (2, 4, 50, 1, "output", True),
    (3, 3, 45, 1, "input", False),
    (1, 65, 24, 3, "input", True),
    (2, 65, 12, 3, "output", False),
]


@pytest.mark.parametrize("L,M,N,Q,kind,second", CASES)
def test_against_numpy(L, M, N, Q, kind, second):
    prob = make_problem(500 + 31 * L + 7 * M + Q, L=L, M=M, N=N, Q=Q, P=2)
    ds = prob.dataset(kind)
    st = cluster_statistics(prob.params, ds, kind, second_moments=second)
    assert isinstance(st, ClusterStatistics) and st.kind == kind
    d = direct(prob.params, prob.points, prob.labels, Q)
    # the case is not vacuous: both free and truncated coordinates occur
    assert 0 < d["truncated"].sum() < L * N * M
    check_moments(st, d, second)
    check_cost_and_gradient(st, prob.params, ds, kind)
    # counts agree with activation_patterns
    free = unpacked_free(prob.params, prob.points)
    for q in range(Q):
        assert np.array_equal(st.truncated_counts[:, q], (~free[prob.labels == q]).sum(axis=0))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_cluster(kind):
    """Q = 3 targets, no point labelled 1: zero counts, sums and gradient, NaN fractions."""
    prob = make_problem(77, L=2, M=3, N=40, Q=3, P=2)
    labels = np.where(prob.labels == 1, 2, prob.labels)
    t = prob.targets_in if kind == "input" else prob.targets_out
    with pytest.warns(tf.EmptyClusterWarning):
        ds = tf.Dataset(prob.points, labels, t)
    st = cluster_statistics(prob.params, ds, kind, second_moments=True)
    d = direct(prob.params, prob.points, labels, 3)
    check_moments(st, d, second=True)
    check_cost_and_gradient(st, prob.params, ds, kind)
    assert st.counts[1] == 0 and st.cost_per_cluster[1] == 0.0
    for a in (st.truncated_counts[:, 1], st.free_sums[:, 1], st.constrained_sums[:, 1],
              st.free_second[:, 1], st.constrained_second[:, 1], st.gradient.weights[1], st.gradient.biases[1]):
        assert not a.any()
    assert np.isnan(st.truncated_fraction[:, 1]).all() and not np.isnan(st.truncated_fraction[:, [0, 2]]).any()
    assert np.isnan(st.free_means[:, 1]).all()


def test_derived_properties():
    prob = make_problem(91, L=2, M=4, N=80, Q=2)
    st = cluster_statistics(prob.params, prob.dataset())
    n = st.counts[None, :, None]
    assert np.array_equal(st.free_counts + st.truncated_counts, np.broadcast_to(n, st.truncated_counts.shape))
    assert_close(st.truncated_fraction, st.truncated_counts / n, 1e-15, "truncated_fraction")
    with np.errstate(invalid="ignore", divide="ignore"):
        assert_close(np.nan_to_num(st.free_means), np.nan_to_num(st.free_sums / st.free_counts[..., None]),
                     1e-15, "free_means")
        assert_close(np.nan_to_num(st.constrained_means),
                     np.nan_to_num(st.constrained_sums / st.truncated_counts[..., None]), 1e-15, "constrained_means")


@pytest.mark.parametrize("kind", KINDS)
def test_several_chunks(kind):
    """N = 2100 > 2 * MIN_CHUNK: chunks of 1024, 1024 and 52 points, merged in order."""
    N, L, M, Q, P = 2100, 2, 3, 3, 2
    assert config.chunk_size(N, _partial_bytes(L, M, 4, Q, P, True)) == config.MIN_CHUNK == 1024
    prob = make_problem(72, L=L, M=M, N=N, Q=Q, P=P)
    ds = prob.dataset(kind)
    st = cluster_statistics(prob.params, ds, kind, second_moments=True)
    check_moments(st, direct(prob.params, prob.points, prob.labels, Q), second=True)
    check_cost_and_gradient(st, prob.params, ds, kind)


def test_chunks_fit_the_partials_budget():
    """Second moments make the per-chunk buffers large: the chunking counts them."""
    N, L, M, Q, P = 10 ** 7, 3, 65, 3, 0
    for second in (False, True):
        per_chunk = _partial_bytes(L, M, 68, Q, P, second)
        assert per_chunk >= 8 * (2 * L * Q * M * M + (2 * L * Q * M ** 3 if second else 0))
        n_chunks = -(-N // config.chunk_size(N, per_chunk))
        assert n_chunks == 1 or n_chunks * per_chunk <= config.PARTIALS_BUDGET


# ------------------------------------------------------------------- kinks
def kink_problem():
    """Unit upper triangular integer cumulative weights, dyadic biases and points on a 1/4
    grid: every a = W^(l) x~^(l-1) + b^(l) and every image is exact in float64 (the
    inverses are integer), and many points lie exactly on hyperplanes of both layers."""
    cw = np.array([[[1.0, 1.0, 0.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]],
                   [[1.0, -1.0, 2.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]])
    cb = np.array([[0.25, -0.5, 0.0], [1.0, -1.5, -0.75]])
    params = tf.Params.from_cumulative(cw, cb, np.array([[1.0, -0.5, 0.25], [0.5, 0.25, -1.0]]),
                                       np.array([0.25, -0.5]))
    rng = np.random.default_rng(17)
    x = rng.integers(-6, 7, size=(300, 3)) / 4.0
    labels = rng.integers(0, 2, size=300)
    return params, x, labels


def test_kink_problem_is_exact():
    params, x, _ = kink_problem()
    assert np.array_equal(params.inverses, np.round(params.inverses))
    img = ref.images(params.cum_weights, params.cum_biases, x)
    assert np.array_equal(img * 4, np.round(img * 4)), "images leave the 1/4 grid"
    for l in range(2):
        a = img[l] @ params.cum_weights[l].T + params.cum_biases[l]
        assert np.count_nonzero(a == 0) >= 20, f"too few points on layer {l + 1} hyperplanes"
        assert np.array_equal(tf.truncate(params, x, l + 1), img[l + 1])


@pytest.mark.parametrize("kind", KINDS)
def test_points_on_kinks_count_as_truncated(kind):
    params, x, labels = kink_problem()
    rng = np.random.default_rng(3)
    ds = tf.Dataset(x, labels, rng.standard_normal((2, 3 if kind == "input" else 2)))
    st = cluster_statistics(params, ds, kind, second_moments=True)
    d = direct(params, x, labels, 2)
    # exact arithmetic: counts and sums agree exactly
    assert np.array_equal(st.truncated_counts, d["truncated"])
    for got, key in ((st.free_sums, "free1"), (st.constrained_sums, "con1"),
                     (st.free_second, "free2"), (st.constrained_second, "con2")):
        assert np.array_equal(got, d[key]), key
    # a == 0 counted as truncated: the same counts as activation_patterns, not those of a < 0
    img = ref.images(params.cum_weights, params.cum_biases, x)
    free = unpacked_free(params, x)
    for l in range(2):
        a = img[l] @ params.cum_weights[l].T + params.cum_biases[l]
        for q in range(2):
            sel = labels == q
            from_patterns = (~free[sel, l]).sum(axis=0)
            assert np.array_equal(st.truncated_counts[l, q], from_patterns)
            assert np.array_equal(st.truncated_counts[l, q], (a[sel] <= 0).sum(axis=0))
        assert not np.array_equal(st.truncated_counts[l], np.stack([(a[labels == q] < 0).sum(axis=0)
                                                                   for q in range(2)]))
    check_cost_and_gradient(st, params, ds, kind)


# ------------------------------------------------------------- dtypes, threads
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.long  # compiles the kernels for float32 points
def test_float32_points(kind):
    prob = make_problem(43, L=2, M=5, N=40, Q=3, P=2)
    x32 = prob.points.astype(np.float32)
    ds32 = prob.dataset(kind, points=x32)
    assert ds32.points.dtype == np.float32
    st32 = cluster_statistics(prob.params, ds32, kind, second_moments=True)
    x64 = x32.astype(np.float64)
    check_moments(st32, direct(prob.params, x64, prob.labels, 3), second=True)
    check_cost_and_gradient(st32, prob.params, ds32, kind)
    # the same numbers as the float64 upcast
    st64 = cluster_statistics(prob.params, prob.dataset(kind, points=x64), kind, second_moments=True)
    for name in ("truncated_counts", "free_sums", "constrained_sums", "free_second", "constrained_second",
                 "cost_per_cluster"):
        assert np.array_equal(getattr(st32, name), getattr(st64, name)), name
    assert np.array_equal(st32.gradient.weights, st64.gradient.weights)


def _all_arrays(st):
    g = st.gradient
    return [st.counts, st.truncated_counts, st.free_sums, st.constrained_sums, st.free_second,
            st.constrained_second, np.array(st.cost), st.cost_per_cluster, g.weights, g.biases] + \
        [a for a in (g.out_weight, g.out_bias) if a is not None]


def test_bit_identical_on_1_and_2_threads():
    N = 6000
    prob = make_problem(62, L=2, M=4, N=N, Q=3, P=2)
    assert -(-N // config.chunk_size(N, _partial_bytes(2, 4, 4, 3, 2, True))) >= 5      # several chunks
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread")
    before = numba.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            results[n] = [a for kind in KINDS for a in
                          _all_arrays(cluster_statistics(prob.params, prob.dataset(kind), kind,
                                                         second_moments=True))]
    finally:
        numba.set_num_threads(before)
    assert numba.get_num_threads() == before
    for a, b in zip(results[1], results[2]):
        assert np.array_equal(a, b)


# ------------------------------------------------------------------ bad input
def test_bad_input():
    prob = make_problem(5, L=2, M=3, N=10, Q=2, P=2)
    p, ds = prob.params, prob.dataset()
    with pytest.raises(ValueError, match=r"width 4 but the network has width M=3"):
        cluster_statistics(p, tf.Dataset(np.zeros((10, 4)), prob.labels, np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"params must be a truncflow.Params, got dict"):
        cluster_statistics({"weights": p.weights}, ds)
    with pytest.raises(ValueError, match=r"dataset must be a truncflow.Dataset, got ndarray"):
        cluster_statistics(p, prob.points)
    with pytest.raises(ValueError, match=r"unknown kind 'hidden'"):
        cluster_statistics(p, ds, "hidden")
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match=r"second_moments must be True or False"):
            cluster_statistics(p, ds, second_moments=bad)
    no_output = tf.Params.from_layers(p.weights, p.biases)
    with pytest.raises(ValueError, match=r"output cost needs an output layer"):
        cluster_statistics(no_output, prob.dataset("output"), "output")
    with pytest.raises(TypeError):
        cluster_statistics(p, ds, "input", True)          # second_moments is keyword-only
