"""truncflow.jax (issue 25 item 3): the cost as a JAX function with a custom VJP.

Held to a model written in jax.numpy (MODEL.md sections 1-4, mirroring tests/reference.py
and tests/torch_reference.py) differentiated by ``jax.grad``: values and gradients to
1e-12 relative, eagerly, under ``jax.jit`` and ``jax.vmap``, in both forms and for both
costs, points exactly on hyperplanes included. ``jax.nn.relu``'s derivative at 0 is 0,
the convention of MODEL.md section 5 (checked below); ``jnp.maximum``'s is 1/2, which
gives another gradient on the kink problem (checked too, so that the kink test tests
something). Skipped without JAX; run with ``-m jax``.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import truncflow as tf
from conftest import assert_close, make_problem

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)
import truncflow.jax as tfj  # noqa: E402

pytestmark = pytest.mark.jax

RTOL = 1e-12


# ------------------------------------------------------------------ the model in jax.numpy
def reference_cost(weights, biases, points, labels, targets, kind="input", form="cumulative",
                   out_weight=None, out_bias=None, act=jax.nn.relu):
    """C = 1/(2N) sum_i |residual_i|^2 (MODEL.md section 4), differentiable by jax.grad.

    form="cumulative": truncation maps tau(z) = W^-1 (act(W z + b) - b) in W^(l), b^(l)
    (section 3), then x^(L) = W^(L) x~^(L) + b^(L); form="layers": the ordinary forward pass
    (section 1) and, for the input cost, the read-out x~^(L) = (W^(L))^-1 (x^(L) - b^(L))
    with W^(L), b^(L) built from the layers (section 2).
    """
    x = jnp.asarray(points, dtype=jnp.float64)
    N, M = x.shape
    L = weights.shape[0]
    if form == "cumulative":
        z = x
        for l in range(L):
            s = act(z @ weights[l].T + biases[l])
            z = jnp.linalg.solve(weights[l], (s - biases[l]).T).T
        xt = z
        xL = xt @ weights[L - 1].T + biases[L - 1]
    else:
        h = x
        for l in range(L):
            h = act(h @ weights[l].T + biases[l])
        xL = h
        cw, cb = jnp.eye(M), jnp.zeros(M)
        for l in range(L):
            cw, cb = weights[l] @ cw, weights[l] @ cb + biases[l]
        xt = jnp.linalg.solve(cw, (xL - cb).T).T
    t = jnp.asarray(targets)[jnp.asarray(labels)]
    res = xt - t if kind == "input" else xL @ out_weight.T + out_bias - t
    return jnp.sum(res * res) / (2 * N)


def leaves_of(params, kind, form):
    w, b = (params.cum_weights, params.cum_biases) if form == "cumulative" else (params.weights, params.biases)
    out = (jnp.asarray(params.out_weight), jnp.asarray(params.out_bias)) if kind == "output" else ()
    return (jnp.asarray(w), jnp.asarray(b)) + out


def bridge(dataset, kind, form):
    """leaves -> tfj.cost, with the output layer as keywords."""
    def f(w, b, *out):
        extra = dict(out_weight=out[0], out_bias=out[1]) if out else {}
        return tfj.cost(w, b, dataset, kind, form=form, **extra)
    return f


def model(points, labels, targets, kind, form, act=jax.nn.relu):
    def f(w, b, *out):
        extra = dict(out_weight=out[0], out_bias=out[1]) if out else {}
        return reference_cost(w, b, points, labels, targets, kind, form, act=act, **extra)
    return f


def assert_same(c, g, c0, g0, rtol=RTOL):
    assert_close(c, c0, rtol, "cost")
    assert len(g) == len(g0)
    for a, b, name in zip(g, g0, ("weights", "biases", "out_weight", "out_bias")):
        assert a.shape == b.shape and a.dtype == jnp.float64, name
        assert_close(np.asarray(a), np.asarray(b), rtol, name)


def kink_problem(seed=3):
    """Dyadic W_1, b_1 and points: half the points lie exactly on a layer-1 hyperplane
    (a_k == 0 in exact arithmetic and in floating point), as tests/torch_reference.py."""
    rng = np.random.default_rng(seed)
    W1 = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 1.0]])
    b1 = np.array([0.25, -0.5, 0.0])
    W23 = np.eye(3) + 0.3 * rng.standard_normal((2, 3, 3))
    b23 = 0.3 * rng.standard_normal((2, 3))
    x = rng.integers(-8, 9, size=(30, 3)) / 8.0
    k = np.arange(15) % 3
    for i in range(15):
        if k[i] == 0:
            x[i, 0] = -0.25 - 2 * x[i, 1]
        elif k[i] == 1:
            x[i, 2] = 0.5 - x[i, 1]
        else:
            x[i, 2] = x[i, 0]
    params = tf.Params.from_layers(np.concatenate([W1[None], W23]), np.vstack([b1, b23]),
                                   rng.standard_normal((2, 3)), rng.standard_normal(2))
    assert np.all((x @ W1.T + b1)[np.arange(15), k] == 0.0)
    assert np.all((x @ params.cum_weights[0].T + params.cum_biases[0])[np.arange(15), k] == 0.0)
    labels = np.arange(30) % 2
    return params, x, labels, rng.standard_normal((2, 3)), rng.standard_normal((2, 2))


# ---------------------------------------------------------------------------------- tests
def test_jax_relu_derivative_at_zero_is_zero():
    """MODEL.md section 5's convention: jax.nn.relu has it, jnp.maximum does not."""
    d = jax.grad(jax.nn.relu)
    assert float(d(0.0)) == 0.0 and float(d(1.0)) == 1.0 and float(d(-1.0)) == 0.0
    assert float(jax.grad(lambda a: jnp.maximum(a, 0.0))(0.0)) == 0.5


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("form", ["cumulative", "layers"])
@pytest.mark.parametrize("seed,L,M,N,Q", [(0, 2, 3, 40, 2), (1, 3, 4, 60, 3), (2, 1, 1, 20, 2), (3, 2, 5, 1, 2)])
def test_value_and_grad_match_jax_grad_of_the_model(kind, form, seed, L, M, N, Q):
    pr = make_problem(seed, L=L, M=M, N=N, Q=Q, P=2)
    targets = pr.targets_in if kind == "input" else pr.targets_out
    ds = pr.dataset(kind)
    leaves = leaves_of(pr.params, kind, form)
    argnums = tuple(range(len(leaves)))
    c, g = jax.value_and_grad(bridge(ds, kind, form), argnums)(*leaves)
    c0, g0 = jax.value_and_grad(model(pr.points, pr.labels, targets, kind, form), argnums)(*leaves)
    assert_same(c, g, c0, g0)
    # and truncflow's own numbers
    c1, g1 = tf.gradient(pr.params, ds, kind, form)
    assert_close(c, c1, 1e-14, "cost vs tf.gradient")
    assert_close(np.asarray(g[0]), g1.weights, 1e-13, "weights vs tf.gradient")


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("form", ["cumulative", "layers"])
def test_points_on_hyperplanes(kind, form):
    params, x, labels, t_in, t_out = kink_problem()
    targets = t_in if kind == "input" else t_out
    ds = tf.Dataset(x, labels, targets)
    leaves = leaves_of(params, kind, form)
    argnums = tuple(range(len(leaves)))
    c, g = jax.value_and_grad(bridge(ds, kind, form), argnums)(*leaves)
    c0, g0 = jax.value_and_grad(model(x, labels, targets, kind, form), argnums)(*leaves)
    assert_same(c, g, c0, g0)
    # with jnp.maximum (derivative 1/2 at a tie) the model's gradient is another one
    _, g_half = jax.value_and_grad(model(x, labels, targets, kind, form,
                                         act=lambda a: jnp.maximum(a, 0.0)), argnums)(*leaves)
    differs = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_half, g0))
    assert differs > 1e-6


def test_under_jit_and_vmap():
    pr = make_problem(5, L=2, M=3, N=50, Q=2, P=2)
    ds = pr.dataset("output")
    leaves = leaves_of(pr.params, "output", "layers")
    f = bridge(ds, "output", "layers")
    ref = model(pr.points, pr.labels, pr.targets_out, "output", "layers")
    step = jax.jit(jax.value_and_grad(f, (0, 1, 2, 3)))
    c0, g0 = jax.value_and_grad(ref, (0, 1, 2, 3))(*leaves)
    for _ in range(2):                                       # traced once, called twice
        c, g = step(*leaves)
        assert_same(c, g, c0, g0)
    assert_close(jax.jit(f)(*leaves), c0, RTOL, "jit cost")
    # vmap over a batch of weights, and its gradient
    w, b, ow, ob = leaves
    batch = jnp.stack([w, 1.01 * w, 0.99 * w])
    costs = jax.vmap(lambda ww: f(ww, b, ow, ob))(batch)
    costs0 = jax.vmap(lambda ww: ref(ww, b, ow, ob))(batch)
    assert costs.shape == (3,)
    assert_close(costs, costs0, RTOL, "vmap costs")
    gb = jax.grad(lambda ww: jax.vmap(lambda v: f(v, b, ow, ob))(ww).sum())(batch)
    gb0 = jax.grad(lambda ww: jax.vmap(lambda v: ref(v, b, ow, ob))(ww).sum())(batch)
    assert_close(gb, gb0, RTOL, "vmap gradient")
    # a cotangent other than 1 scales the gradient
    g2 = jax.grad(lambda ww: 3.0 * f(ww, b, ow, ob))(w)
    assert_close(g2, 3.0 * g0[0], 1e-15, "scaled cotangent")


def test_float32_points():
    """A dataset of float32 points: truncflow reads them as they are, the model gets the
    same values in float64."""
    pr = make_problem(6, L=2, M=3, N=40, Q=2)
    pts = pr.points.astype(np.float32)
    ds = pr.dataset("input", pts)
    leaves = leaves_of(pr.params, "input", "cumulative")
    c, g = jax.value_and_grad(bridge(ds, "input", "cumulative"), (0, 1))(*leaves)
    c0, g0 = jax.value_and_grad(model(pts.astype(np.float64), pr.labels, pr.targets_in, "input", "cumulative"),
                                (0, 1))(*leaves)
    assert_same(c, g, c0, g0)


def test_dtypes():
    """Each cotangent has its leaf's dtype, the cost the common one; without jax_enable_x64
    (a fresh process) everything is float32, rounded from truncflow's float64 numbers."""
    pr = make_problem(8, L=2, M=3, N=30, Q=2)
    ds = pr.dataset("input")
    w32 = np.asarray(pr.params.cum_weights, dtype=np.float32)
    b64 = jnp.asarray(pr.params.cum_biases)
    c, (gw, gb) = jax.value_and_grad(lambda w, b: tfj.cost(w, b, ds), (0, 1))(w32, b64)
    assert c.dtype == jnp.float64 and gw.dtype == jnp.float32 and gb.dtype == jnp.float64
    code = """if True:
        import warnings; warnings.simplefilter("error")
        import numpy as np, jax, truncflow as tf, truncflow.jax as tfj
        rng = np.random.default_rng(0)
        ds = tf.Dataset(rng.standard_normal((20, 2)), np.arange(20) % 2, rng.standard_normal((2, 2)))
        p = tf.Params.from_cumulative(np.stack([np.eye(2), 2 * np.eye(2)]), 0.3 * rng.standard_normal((2, 2)))
        c, g = jax.value_and_grad(tfj.cost)(p.cum_weights, p.cum_biases, ds)
        c0, g0 = tf.gradient(p, ds)
        assert c.dtype == g.dtype == np.float32, (c.dtype, g.dtype)
        assert abs(float(c) - c0) <= 1e-6 * c0 and np.allclose(g, g0.weights, rtol=1e-6, atol=1e-7)
    """
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_bad_arguments():
    pr = make_problem(7, L=2, M=3, N=10, Q=2, P=2)
    w, b, ow, ob = leaves_of(pr.params, "output", "cumulative")
    ds_in, ds_out = pr.dataset("input"), pr.dataset("output")
    with pytest.raises(ValueError, match="needs the output layer"):
        tfj.cost(w, b, ds_out, "output")
    with pytest.raises(ValueError, match="for kind='output'"):
        tfj.cost(w, b, ds_in, out_weight=ow, out_bias=ob)
    with pytest.raises(ValueError, match="form"):
        tfj.cost(w, b, ds_in, form="layer")
    with pytest.raises(ValueError, match="kind"):
        tfj.cost(w, b, ds_in, "inputs")
    with pytest.raises(ValueError, match=r"weights must have shape \(L, M, M\)"):
        tfj.cost(w[:, :2], b, ds_in)
    with pytest.raises(ValueError, match="biases must have shape"):
        tfj.cost(w, b[:1], ds_in)
    with pytest.raises(ValueError, match="out_weight must have shape"):
        tfj.cost(w, b, ds_out, "output", out_weight=ow[:, :2], out_bias=ob)
    with pytest.raises(ValueError, match="out_bias must have shape"):
        tfj.cost(w, b, ds_out, "output", out_weight=ow, out_bias=ob[:1])
    with pytest.raises(ValueError, match="width"):
        tfj.cost(w[:, :2, :2], b[:, :2], ds_in)
    with pytest.raises(ValueError, match="floating"):
        tfj.cost(jnp.ones((2, 3, 3), dtype=jnp.int32), b, ds_in)
    with pytest.raises(ValueError, match="truncflow.Dataset"):
        tfj.cost(w, b, pr.points)
    # a singular cumulative weight: truncflow's message comes through the callback
    with pytest.raises(Exception, match="singular|condition"):
        jax.block_until_ready(tfj.cost(w.at[0].set(0.0), b, ds_in))


def test_import_truncflow_does_not_import_jax():
    code = ("import sys, truncflow, truncflow.objective; "
            "assert 'jax' not in sys.modules and 'jaxlib' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
