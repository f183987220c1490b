"""The kernels (through the public API) against the NumPy reference of tests/reference.py."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import truncflow as tf
from truncflow.kernels import config

import reference as ref
from conftest import assert_close, make_problem

KINDS = ("input", "output")
WRTS = ("cumulative", "layers")


# ------------------------------------------------------------------ helpers
def reference_gradient(params, points, labels, targets, kind, wrt):
    pts = np.array(points, dtype=np.float64)
    ow, ob = (params.out_weight, params.out_bias) if kind == "output" else (None, None)
    if wrt == "cumulative":
        return ref.grad_cumulative(params.cum_weights, params.cum_biases, pts, labels, targets, kind, ow, ob)
    return ref.grad_layers(params.weights, params.biases, pts, labels, targets, kind, ow, ob)


def check_gradient(params, ds, kind, wrt, per_cluster, rtol=1e-12, r=None):
    """tf.gradient against the reference (``r``, computed when not given);
    returns the package's cost and gradient."""
    c, g = tf.gradient(params, ds, kind, wrt, per_cluster=per_cluster)
    if r is None:
        r = reference_gradient(params, ds.points, ds.labels, ds.targets, kind, wrt)
    red = (lambda a: a) if per_cluster else (lambda a: a.sum(axis=0))
    # Gradients that vanish exactly (collapsed or free points) are compared against the
    # scale of the terms that cancel in them: |residual| |x|.
    floor = np.sqrt(2 * r["cost"].sum()) * max(1.0, np.max(np.abs(ds.points)))
    assert g.wrt == wrt
    assert_close(c, red(r["cost"]), rtol, "cost")
    assert_close(g.weights, red(r["weights"]), rtol, f"{wrt} weights", floor)
    assert_close(g.biases, red(r["biases"]), rtol, f"{wrt} biases", floor)
    if kind == "output":
        assert_close(g.out_weight, red(r["out_weight"]), rtol, "out_weight", floor)
        assert_close(g.out_bias, red(r["out_bias"]), rtol, "out_bias", floor)
    else:
        assert g.out_weight is None and g.out_bias is None
    if per_cluster:
        assert isinstance(c, np.ndarray) and c.shape == (ds.n_clusters,)
    else:
        assert isinstance(c, float)
    return c, g


# ------------------------------------------------------------ Params (section 2-3)
@pytest.mark.parametrize("L,M", [(1, 1), (4, 3), (2, 65)])
def test_params_round_trip(L, M):
    p = make_problem(L * 100 + M, L=L, M=M, N=1, P=2).params
    cw, cb = ref.cumulative_from_layers(p.weights, p.biases)
    assert_close(p.cum_weights, cw, what="cum_weights")
    assert_close(p.cum_biases, cb, what="cum_biases")
    back = tf.Params.from_cumulative(p.cum_weights, p.cum_biases, p.out_weight, p.out_bias)
    assert_close(back.weights, p.weights, what="weights after round trip")
    assert_close(back.biases, p.biases, what="biases after round trip")
    W, b = ref.layers_from_cumulative(p.cum_weights, p.cum_biases)
    assert_close(back.weights, W, what="weights vs reference")
    assert_close(back.biases, b, what="biases vs reference")
    assert np.array_equal(back.out_weight, p.out_weight) and np.array_equal(back.out_bias, p.out_bias)
    assert_close(p.inverses, np.linalg.inv(cw), 1e-11, "inverses")
    for a in (p.weights, p.biases, p.cum_weights, p.cum_biases, p.inverses):
        assert a.dtype == np.float64 and not a.flags.writeable


@pytest.mark.parametrize("form", ["layers", "cumulative"])
def test_params_leave_caller_arrays_alone(form):
    """A Params is documented immutable: it must neither freeze nor alias the caller's arrays."""
    W = np.stack([np.eye(2), 2 * np.eye(2)])
    base = np.zeros((2, 2))
    b = base[:]                      # a view the caller keeps
    p = (tf.Params.from_layers if form == "layers" else tf.Params.from_cumulative)(W, base)
    assert W.flags.writeable and base.flags.writeable, "caller's arrays were made read-only"
    b[0, 0] = 5.0
    assert p.biases[0, 0] == 0.0 and p.cum_biases[0, 0] == 0.0, "Params changed through the caller's view"


def test_cones_apex_and_edges():
    prob = make_problem(1, L=3, M=4, N=25)
    p = prob.params
    apexes, edges = p.cones()
    assert apexes.shape == (3, 4) and edges.shape == (3, 4, 4)
    z_prev = prob.points
    for l in range(3):
        W, b = p.cum_weights[l], p.cum_biases[l]
        assert_close(apexes[l], -np.linalg.solve(W, b), 1e-12, "apex")
        assert_close(W @ edges[l], np.eye(4), 1e-12, "W edges = I")
        # z = p + sum_k a_k v_k and tau(z) = p + sum_k sigma(a_k) v_k (section 3)
        a = z_prev @ W.T + b
        assert_close(apexes[l] + a @ edges[l].T, z_prev, 1e-12, "cone coordinates")
        z_next = tf.truncate(p, prob.points, l + 1)
        assert_close(z_next, apexes[l] + np.maximum(a, 0) @ edges[l].T, 1e-12, "tau in cone form")
        z_prev = z_next


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("how", ["singular", "ill-conditioned"])
@pytest.mark.parametrize("form", ["layers", "cumulative"])
def test_singular_weights_refused(layer, how, form):
    M = 3
    W = np.stack([np.eye(M) + 0.1 * np.arange(M * M).reshape(M, M) / M ** 2 for _ in range(3)])
    b = np.zeros((3, M))
    bad = np.diag([1.0, 1.0, 0.0 if how == "singular" else 1e-13])
    if form == "layers":
        W[layer - 1] = bad @ W[layer - 1]
        make = tf.Params.from_layers
    else:
        W, b = ref.cumulative_from_layers(W, b)
        W[layer - 1] = bad @ W[layer - 1]
        make = tf.Params.from_cumulative
    with pytest.raises(ValueError, match=rf"layer {layer}\b.*condition number") as info:
        make(W, b)
    assert f"W^({layer})" in str(info.value)


# -------------------------------------------------- truncation maps and patterns
@pytest.mark.parametrize("L,M", [(1, 2), (4, 3), (2, 65), (1, 130), (3, 1)])
def test_truncate_each_layer(L, M):
    prob = make_problem(7 * L + M, L=L, M=M, N=12 if M < 100 else 4)
    p = prob.params
    img = ref.images(p.cum_weights, p.cum_biases, prob.points)
    for layers in range(L + 1):
        out = tf.truncate(p, prob.points, layers)
        assert out.shape == prob.points.shape and out.dtype == np.float64
        assert_close(out, img[layers], 1e-12, f"x~^({layers})")
    assert np.array_equal(tf.truncate(p, prob.points), tf.truncate(p, prob.points, L))
    assert np.array_equal(tf.truncate(p, prob.points, 0), prob.points)
    # the test is not vacuous: some coordinates are truncated, some free
    a = ref.cumulative_preacts(p.cum_weights, p.cum_biases, prob.points)
    assert (a > 0).any() and (a <= 0).any()


@pytest.mark.parametrize("L,M", [(1, 1), (4, 3), (2, 65), (2, 130)])
def test_activation_patterns(L, M):
    N = 15 if M < 100 else 5
    prob = make_problem(11 * L + M, L=L, M=M, N=N)
    p = prob.params
    pat = tf.activation_patterns(p, prob.points)
    assert pat.dtype == np.uint64 and pat.shape == (N, L, -(-M // 64))
    expected = ref.patterns(p.cum_weights, p.cum_biases, prob.points)
    assert np.array_equal(pat, expected)
    # bits beyond M are never set; both values of the bits occur
    unpacked = np.unpackbits(pat.view(np.uint8), axis=-1, bitorder="little").reshape(N, L, -1)
    assert not unpacked[..., M:].any()
    assert unpacked[..., :M].any() and not unpacked[..., :M].all()
    # the pattern is the sign pattern of the ordinary pre-activations (section 3)
    _, pre = ref.layer_forward(p.weights, p.biases, prob.points)
    assert np.array_equal(unpacked[..., :M].astype(bool), np.transpose(pre > 0, (1, 0, 2)))


def test_identities_section3():
    prob = make_problem(3, L=4, M=5, N=20, P=3)
    p = prob.params
    xs, _ = ref.layer_forward(p.weights, p.biases, prob.points)
    for l in range(1, 5):
        xt = tf.truncate(p, prob.points, l)
        assert_close(xt @ p.cum_weights[l - 1].T + p.cum_biases[l - 1], xs[l], 1e-12, f"x^({l})")
    F = xs[4] @ p.out_weight.T + p.out_bias
    W_out_cum = p.out_weight @ p.cum_weights[3]
    b_out_cum = p.out_weight @ p.cum_biases[3] + p.out_bias
    assert_close(tf.truncate(p, prob.points) @ W_out_cum.T + b_out_cum, F, 1e-12, "F(x)")


# --------------------------------------------------------------------- gradients
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), L=st.integers(1, 4), M=st.integers(1, 6), N=st.integers(1, 25),
       Q=st.integers(1, 3), kind=st.sampled_from(KINDS), wrt=st.sampled_from(WRTS),
       per_cluster=st.booleans())
def test_gradient_random(seed, L, M, N, Q, kind, wrt, per_cluster):
    prob = make_problem(seed, L=L, M=M, N=N, Q=Q, P=2)
    check_gradient(prob.params, prob.dataset(kind), kind, wrt, per_cluster)


@pytest.mark.parametrize("L,M,N", [(1, 1, 30), (4, 4, 20), (2, 65, 8), (1, 130, 3)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_gradient_fixed(L, M, N, kind, wrt):
    prob = make_problem(1000 + 13 * L + M, L=L, M=M, N=N, Q=3, P=4)
    ds = prob.dataset(kind)
    r = reference_gradient(prob.params, ds.points, ds.labels, ds.targets, kind, wrt)
    c, g = check_gradient(prob.params, ds, kind, wrt, per_cluster=False, r=r)
    cq, gq = check_gradient(prob.params, ds, kind, wrt, per_cluster=True, r=r)
    # per-cluster parts sum to the totals
    assert_close(cq.sum(), c, 1e-13, "sum of cluster costs")
    assert tf.cost(prob.params, ds, kind) == c
    assert np.array_equal(tf.cost(prob.params, ds, kind, per_cluster=True), cq)
    for name in ("weights", "biases", "out_weight", "out_bias"):
        a, aq = getattr(g, name), getattr(gq, name)
        if a is None:
            assert aq is None
            continue
        assert aq.shape == (3,) + a.shape
        assert_close(aq.sum(axis=0), a, 1e-13, f"sum of cluster {name}")
        assert np.array_equal(getattr(gq.cluster(1), name), aq[1])
    parts = [a for a in (g.weights, g.biases, g.out_weight, g.out_bias) if a is not None]
    assert g.norm() > 0 and np.isclose(g.norm(), np.sqrt(sum(np.sum(a * a) for a in parts)), rtol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_several_chunks(kind):
    """N = 2100: chunks of 1024, 1024 and 52 points, none a multiple of a small tile."""
    N = 2100
    assert config.chunk_size(N) == 1024
    prob = make_problem(71, L=2, M=3, N=N, Q=3, P=2)
    ds = prob.dataset(kind)
    r = reference_gradient(prob.params, ds.points, ds.labels, ds.targets, kind, "cumulative")
    check_gradient(prob.params, ds, kind, "cumulative", per_cluster=True, r=r)
    check_gradient(prob.params, ds, kind, "cumulative", per_cluster=False, r=r)
    if kind == "input":
        p = prob.params
        assert_close(tf.truncate(p, prob.points), ref.images(p.cum_weights, p.cum_biases, prob.points)[-1])
        assert np.array_equal(tf.activation_patterns(p, prob.points),
                              ref.patterns(p.cum_weights, p.cum_biases, prob.points))


def kink_problem():
    """Integer layer-1 weights and dyadic biases/points: W^(1) x + b^(1) is exact, and
    several points lie exactly on one or two layer-1 hyperplanes (a_k == 0)."""
    W1 = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 1.0]])  # det 1
    b1 = np.array([0.5, -0.25, 0.0])
    rng = np.random.default_rng(5)
    W2 = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    b2 = 0.3 * rng.standard_normal(3)
    x = rng.integers(-8, 9, size=(24, 3)) / 4.0
    # rows 0..7 on hyperplane 0: 2 x0 + x1 + 0.5 = 0
    x[0:8, 1] = -0.5 - 2 * x[0:8, 0]
    # rows 8..15 on hyperplane 2: x0 + x2 = 0
    x[8:16, 2] = -x[8:16, 0]
    # rows 16..19 on hyperplanes 1 and 2: x1 - x2 - 0.25 = 0 and x2 = -x0
    x[16:20, 2] = -x[16:20, 0]
    x[16:20, 1] = x[16:20, 2] + 0.25
    labels = np.arange(24) % 2
    ow = np.array([[1.0, -0.5, 0.25], [0.3, 0.7, -1.1]])
    ob = np.array([0.1, -0.2])
    params = tf.Params.from_layers(np.stack([W1, W2]), np.stack([b1, b2]), ow, ob)
    return params, x, labels


def test_kink_problem_is_exact():
    params, x, _ = kink_problem()
    a1 = x @ params.cum_weights[0].T + params.cum_biases[0]
    assert np.count_nonzero(a1 == 0) >= 8 + 8 + 8
    assert np.all(a1[0:8, 0] == 0) and np.all(a1[8:20, 2] == 0) and np.all(a1[16:20, 1] == 0)


def test_kink_pattern_bit_is_zero():
    params, x, _ = kink_problem()
    pat = tf.activation_patterns(params, x)
    a1 = x @ params.cum_weights[0].T + params.cum_biases[0]
    bits = (pat[:, 0, 0, None] >> np.arange(3, dtype=np.uint64)) & np.uint64(1)
    assert np.array_equal(bits.astype(bool), a1 > 0)
    assert not bits[a1 == 0].any()
    assert np.array_equal(pat, ref.patterns(params.cum_weights, params.cum_biases, x))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_kink_gradient(kind, wrt, monkeypatch):
    params, x, labels = kink_problem()
    rng = np.random.default_rng(9)
    targets = rng.standard_normal((2, 3 if kind == "input" else 2))
    ds = tf.Dataset(x, labels, targets)
    _, g = check_gradient(params, ds, kind, wrt, per_cluster=False)
    check_gradient(params, ds, kind, wrt, per_cluster=True)
    # the convention matters here: counting a_k == 0 as free gives another gradient
    monkeypatch.setattr(ref, "free_mask", lambda a: (a >= 0).astype(np.float64))
    other = reference_gradient(params, x, labels, targets, kind, wrt)
    diff = np.max(np.abs(g.weights - other["weights"].sum(axis=0)))
    assert diff > 1e-3 * np.max(np.abs(g.weights))


def test_gradient_truncates_what_patterns_report():
    """The gradient's kink decision is the one activation_patterns reports, bit for bit, even
    for points within round-off of a hyperplane (where kernels that compute
    a = W^(l) x~ + b^(l) with different rounding would disagree). Points free in layer 1 (so
    x~^(1) = x exactly) are projected onto layer-2 hyperplanes; each point is its own cluster,
    and its layer-2 bias gradient -P u is non-zero exactly on its truncated coordinates."""
    M = 4
    prob = make_problem(81, L=2, M=M, N=1, bias_scale=0.1)
    p = prob.params
    rng = np.random.default_rng(82)
    W, b = p.cum_weights[1], p.cum_biases[1]
    pts = []
    while len(pts) < 200:
        x = rng.standard_normal(M)
        k = len(pts) % M
        x = x - (W[k] @ x + b[k]) / (W[k] @ W[k]) * W[k]
        if np.all(p.cum_weights[0] @ x + p.cum_biases[0] > 0.1):
            pts.append(x)
    pts = np.array(pts)
    n = len(pts)
    free = tf.activation_patterns(p, pts)[:, 1, 0, None] >> np.arange(M, dtype=np.uint64) & np.uint64(1)
    free = free.astype(bool)
    assert np.all(tf.activation_patterns(p, pts)[:, 0, 0] == 2 ** M - 1)
    ds = tf.Dataset(pts, np.arange(n), rng.standard_normal((n, M)))
    _, g = tf.gradient(p, ds, "input", per_cluster=True)
    truncated_by_gradient = g.biases[:, 1, :] != 0
    assert np.array_equal(truncated_by_gradient, ~free), (
        f"{np.count_nonzero(truncated_by_gradient & free)} coordinates truncated by the gradient are "
        f"free in activation_patterns, {np.count_nonzero(~truncated_by_gradient & ~free)} the other way")


@pytest.mark.parametrize("kind", KINDS)
def test_free_points_give_no_gradient(kind):
    """Section 6: with the input cost, points free in every coordinate of layer l do not
    move layer l's cumulative parameters; with the output cost the last layer sees them."""
    prob = make_problem(21, L=3, M=4, N=40, P=2)
    cw, cb = np.array(prob.params.cum_weights), np.array(prob.params.cum_biases)
    free_layers = (1, 2)      # 0-based: layers 2 and 3 truncate nothing
    for l in free_layers:
        # shift b^(l) so that a = W^(l) x~^(l-1) + b^(l) >= 1 for every point
        p0 = tf.Params.from_cumulative(cw.copy(), cb.copy())  # copies: Params freezes its inputs
        a = tf.truncate(p0, prob.points, l) @ cw[l].T + cb[l]
        cb[l] += 1.0 - a.min(axis=0)
    params = tf.Params.from_cumulative(cw.copy(), cb.copy(), prob.params.out_weight, prob.params.out_bias)
    pat = tf.activation_patterns(params, prob.points)
    for l in free_layers:
        assert np.all(pat[:, l, 0] == 2 ** 4 - 1)
    assert not np.all(pat[:, 0, 0] == 2 ** 4 - 1)      # layer 1 truncates
    ds = prob.dataset(kind)
    _, g = check_gradient(params, ds, kind, "cumulative", per_cluster=False)
    scale = np.max(np.abs(g.weights))
    assert np.max(np.abs(g.weights[0])) > 1e-3 * scale    # the truncating layer moves
    if kind == "input":
        for l in free_layers:
            assert np.max(np.abs(g.weights[l])) <= 1e-14 * scale
            assert np.max(np.abs(g.biases[l])) <= 1e-14 * scale
    else:
        assert np.max(np.abs(g.weights[1])) <= 1e-14 * scale
        assert np.max(np.abs(g.biases[1])) <= 1e-14 * scale
        assert np.max(np.abs(g.weights[2])) > 1e-3 * scale   # direct terms of the output layer


def test_cumulative_to_layer_gradient_matches_backprop():
    """Section 7 conversion applied to the reference cumulative gradient equals the
    reference layer backprop (input cost including the read-out, and output cost)."""
    for kind in KINDS:
        prob = make_problem(33, L=4, M=3, N=25, P=2)
        p = prob.params
        t = prob.targets_in if kind == "input" else prob.targets_out
        rc = reference_gradient(p, prob.points, prob.labels, t, kind, "cumulative")
        rl = reference_gradient(p, prob.points, prob.labels, t, kind, "layers")
        assert_close(rc["cost"], rl["cost"], 1e-12, "costs of the two references")
        extra = {} if kind == "input" else dict(out_weight=rc["out_weight"].sum(0), out_bias=rc["out_bias"].sum(0))
        gc = tf.Gradient(rc["weights"].sum(0), rc["biases"].sum(0), wrt="cumulative", **extra)
        gl = tf.cumulative_to_layer_gradient(p, gc)
        assert gl.wrt == "layers"
        assert_close(gl.weights, rl["weights"].sum(0), 1e-12, "dC/dW_l")
        assert_close(gl.biases, rl["biases"].sum(0), 1e-12, "dC/db_l")
        if kind == "output":
            assert_close(gl.out_weight, rl["out_weight"].sum(0), 1e-12, "dC/dW_out")


def test_model_section7_layer_to_cumulative_formula():
    """MODEL.md section 7, the other direction, on the two references: layer gradients
    (G_k, beta_k) pushed to cumulative ones with A_k = (W^(k))^-1."""
    for kind in KINDS:
        prob = make_problem(34, L=3, M=3, N=25, P=2)
        p = prob.params
        t = prob.targets_in if kind == "input" else prob.targets_out
        rc = reference_gradient(p, prob.points, prob.labels, t, kind, "cumulative")
        rl = reference_gradient(p, prob.points, prob.labels, t, kind, "layers")
        G, beta = rl["weights"].sum(0), rl["biases"].sum(0)
        L, M = G.shape[0], G.shape[1]
        A = [np.eye(M)] + [np.linalg.inv(p.cum_weights[k]) for k in range(L)]
        cb = [np.zeros(M)] + [p.cum_biases[k] for k in range(L)]
        for k in range(1, L + 1):
            dW = G[k - 1] @ A[k - 1].T - np.outer(beta[k - 1], A[k - 1] @ cb[k - 1])
            db = beta[k - 1].copy()
            if k < L:
                Wn = p.weights[k]
                dW += -Wn.T @ G[k] @ A[k].T + np.outer(Wn.T @ beta[k], A[k] @ cb[k])
                db -= Wn.T @ beta[k]
            assert_close(dW, rc["weights"].sum(0)[k - 1], 1e-11, f"{kind} dC/dW^({k})")
            assert_close(db, rc["biases"].sum(0)[k - 1], 1e-11, f"{kind} dC/db^({k})")


# ------------------------------------------------------- dtypes and memory layouts
@pytest.mark.long  # compiles the kernels for float32 points
def test_float32_points():
    prob = make_problem(41, L=2, M=5, N=20, P=2)
    x32 = prob.points.astype(np.float32)
    x64 = x32.astype(np.float64)
    p = prob.params
    img = ref.images(p.cum_weights, p.cum_biases, x64)
    for layers in (1, 2):
        out = tf.truncate(p, x32, layers)
        assert out.dtype == np.float64
        assert_close(out, img[layers], 1e-12, "float32 truncate")
    assert np.array_equal(tf.activation_patterns(p, x32), ref.patterns(p.cum_weights, p.cum_biases, x64))
    for kind in KINDS:
        ds = prob.dataset(kind, points=x32)
        assert ds.points.dtype == np.float32
        for wrt in WRTS:
            check_gradient(p, ds, kind, wrt, per_cluster=(wrt == "layers"))
        # same numbers as the float64 upcast through the kernel
        c32, g32 = tf.gradient(p, ds, kind)
        c64, g64 = tf.gradient(p, prob.dataset(kind, points=x64), kind)
        assert c32 == c64 and np.array_equal(g32.weights, g64.weights)


@pytest.mark.parametrize("view", ["fortran", "rows", "cols", "both"])
@pytest.mark.long  # compiles the kernels for Fortran-ordered and strided points
def test_layouts(view):
    prob = make_problem(51, L=3, M=4, N=40, P=2)
    base = prob.points
    pts = {"fortran": np.asfortranarray(base), "rows": base[::2], "cols": base[:, ::-1],
           "both": np.asfortranarray(base)[1::3, ::-1]}[view]
    dense = np.ascontiguousarray(pts)
    p = prob.params
    assert_close(tf.truncate(p, pts), ref.images(p.cum_weights, p.cum_biases, dense)[-1], 1e-12, view)
    assert np.array_equal(tf.truncate(p, pts, 2), tf.truncate(p, dense, 2))
    assert np.array_equal(tf.activation_patterns(p, pts), tf.activation_patterns(p, dense))
    labels = prob.labels[: len(pts)]
    for kind in KINDS:
        t = prob.targets_in if kind == "input" else prob.targets_out
        ds = tf.Dataset(pts, labels, t)
        check_gradient(p, ds, kind, "cumulative", per_cluster=True)
        c1, g1 = tf.gradient(p, ds, kind)
        c2, g2 = tf.gradient(p, tf.Dataset(dense, labels, t), kind)
        assert c1 == c2 and np.array_equal(g1.weights, g2.weights) and np.array_equal(g1.biases, g2.biases)


# -------------------------------------------------------------------- threads
def test_bit_identical_on_1_and_2_threads():
    N = 6000
    assert -(-N // config.chunk_size(N)) >= 5      # several chunks
    prob = make_problem(61, L=2, M=4, N=N, Q=3, P=2)
    before = numba.get_num_threads()
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread")
    results = {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            res = []
            for kind in KINDS:
                c, g = tf.gradient(prob.params, prob.dataset(kind), kind, per_cluster=True)
                res += [c, g.weights, g.biases]
            res.append(tf.truncate(prob.params, prob.points))
            results[n] = res
    finally:
        numba.set_num_threads(before)
    assert numba.get_num_threads() == before
    for a, b in zip(results[1], results[2]):
        assert np.array_equal(a, b)
