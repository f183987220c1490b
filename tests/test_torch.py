"""PyTorch autograd (float64) against the package's exact gradients, both parametrizations.

Torch's relu has relu'(0) = 0, the convention of MODEL.md section 5.
"""
from __future__ import annotations

import numpy as np
import pytest

import truncflow as tf

from conftest import assert_close, make_problem

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from problems import one_layer_problem, separated_problem  # noqa: E402
from torch_reference import layer1_kinks, torch_aligned_cost, torch_gradient  # noqa: E402


def compare(params, ds, kind, wrt, per_cluster, rtol=1e-12):
    c, g = tf.gradient(params, ds, kind, wrt, per_cluster=per_cluster)
    tc, tg = torch_gradient(params, ds.points, ds.labels, ds.targets, kind, wrt, per_cluster)
    floor = np.sqrt(2 * np.sum(tc)) * max(1.0, float(np.max(np.abs(ds.points))))
    assert_close(c, tc, rtol, "cost")
    names = ["weights", "biases"] + (["out_weight", "out_bias"] if kind == "output" else [])
    for name, expected in zip(names, tg):
        assert_close(getattr(g, name), expected, rtol, f"{wrt} {name}", floor)
    return g


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("wrt", ["cumulative", "layers"])
@pytest.mark.parametrize("L,M,N", [(3, 4, 30), (1, 1, 20), (2, 70, 6)])
def test_random(L, M, N, kind, wrt):
    prob = make_problem(300 + 7 * L + M, L=L, M=M, N=N, Q=3, P=2)
    ds = prob.dataset(kind)
    compare(prob.params, ds, kind, wrt, per_cluster=False)
    if M < 70:
        compare(prob.params, ds, kind, wrt, per_cluster=True)


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("wrt", ["cumulative", "layers"])
def test_float32_points(kind, wrt):
    prob = make_problem(77, L=2, M=3, N=25, Q=2, P=2)
    x32 = prob.points.astype(np.float32)
    ds = prob.dataset(kind, points=x32)
    compare(prob.params, ds, kind, wrt, per_cluster=False)   # torch runs on the float64 upcast


@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("wrt", ["cumulative", "layers"])
def test_layer1_kinks(kind, wrt):
    params, x, labels = layer1_kinks()
    rng = np.random.default_rng(4)
    targets = rng.standard_normal((2, 3 if kind == "input" else 2))
    ds = tf.Dataset(x, labels, targets)
    g = compare(params, ds, kind, wrt, per_cluster=False)
    compare(params, ds, kind, wrt, per_cluster=True)
    # sanity: torch with relu'(0) = 1 (a_k == 0 counted free) gives a different gradient
    relu_free_at_0 = lambda a: torch.where(a >= 0, a, torch.zeros_like(a))
    _, other = torch_gradient(params, x, labels, targets, kind, wrt, act=relu_free_at_0)
    assert np.max(np.abs(g.weights - other[0])) > 1e-3 * np.max(np.abs(g.weights))


# ------------------------------------------------- aligned model: restricted gradient
@pytest.mark.parametrize("case", ["one_layer", "separated"])
def test_aligned_gradient_matches_torch(case):
    params, ds = one_layer_problem() if case == "one_layer" else separated_problem()
    lam = torch.tensor(params.scales, requires_grad=True)
    b = torch.tensor(np.array(params.cum_biases), requires_grad=True)
    c = torch_aligned_cost(params.frames, lam, b, ds.points, ds.labels, ds.targets)
    c.backward()
    cost, g = tf.gradient(params, ds, wrt="aligned")
    assert g.wrt == "aligned" and g.weights.shape == params.scales.shape
    assert_close(cost, c.item(), 1e-13, "cost")
    assert_close(g.weights, lam.grad.numpy(), 1e-11, "dC/dlambda")
    assert_close(g.biases, b.grad.numpy(), 1e-11, "dC/db")
    # per cluster, the parts add up
    _, gq = tf.gradient(params, ds, wrt="aligned", per_cluster=True)
    assert_close(gq.weights.sum(axis=0), g.weights, 1e-13)
