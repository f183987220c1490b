"""PyTorch references for the cross-checks: import only from test modules that need torch.

Every module importing this one must first call ``pytest.importorskip("torch")`` so that
it is skipped cleanly on a machine without torch.
"""
from __future__ import annotations

import numpy as np
import torch

import truncflow as tf

torch.set_default_dtype(torch.float64)


def torch_cost(params, points, labels, targets, kind, wrt, act=None):
    """Per-cluster costs (Q,) and the leaf tensors (weights, biases, out_weight, out_bias).

    wrt="cumulative": the network as truncation maps tau(z) = W^-1 (act(W z + b) - b) in
    the cumulative parameters (torch.linalg.solve); wrt="layers": the ordinary forward
    pass, and for the input cost the read-out x~^(L) = (W^(L))^-1 (x^(L) - b^(L)) with
    W^(L), b^(L) built from the layer parameters.
    """
    act = torch.relu if act is None else act
    t = lambda a: torch.tensor(np.array(a, dtype=np.float64), dtype=torch.float64)
    x = t(points)
    N = x.shape[0]
    lab = torch.tensor(np.array(labels, dtype=np.int64))
    if wrt == "cumulative":
        W, b = t(params.cum_weights).requires_grad_(), t(params.cum_biases).requires_grad_()
    else:
        W, b = t(params.weights).requires_grad_(), t(params.biases).requires_grad_()
    leaves = [W, b]
    L = W.shape[0]
    if wrt == "cumulative":
        z = x
        for l in range(L):
            s = act(z @ W[l].T + b[l])
            z = torch.linalg.solve(W[l], (s - b[l]).T).T
        xt = z
        xL = xt @ W[L - 1].T + b[L - 1]
    else:
        h = x
        for l in range(L):
            h = act(h @ W[l].T + b[l])
        xL = h
        if kind == "input":
            cw, cb = torch.eye(W.shape[1], dtype=torch.float64), torch.zeros(W.shape[1], dtype=torch.float64)
            for l in range(L):
                cw, cb = W[l] @ cw, W[l] @ cb + b[l]
            xt = torch.linalg.solve(cw, (xL - cb).T).T
    if kind == "input":
        res = xt - t(targets)[lab]
    else:
        ow, ob = t(params.out_weight).requires_grad_(), t(params.out_bias).requires_grad_()
        leaves += [ow, ob]
        res = xL @ ow.T + ob - t(targets)[lab]
    sq = (res * res).sum(dim=1)
    Q = targets.shape[0]
    costs = torch.stack([sq[lab == q].sum() for q in range(Q)]) / (2 * N)
    return costs, leaves


def torch_gradient(params, points, labels, targets, kind, wrt, per_cluster=False, act=None):
    """(cost, [dW, db(, dW_out, db_out)]) as numpy, per cluster (leading Q axis) or totals."""
    costs, leaves = torch_cost(params, points, labels, targets, kind, wrt, act)
    if not per_cluster:
        grads = torch.autograd.grad(costs.sum(), leaves)
        return costs.sum().item(), [g.numpy() for g in grads]
    per = []
    for q in range(costs.shape[0]):
        per.append(torch.autograd.grad(costs[q], leaves, retain_graph=True, allow_unused=True))
    stacked = [np.stack([per[q][k].numpy() if per[q][k] is not None else np.zeros(tuple(leaves[k].shape))
                         for q in range(len(per))]) for k in range(len(leaves))]
    return costs.detach().numpy(), stacked


def torch_aligned_cost(R, lam, b, x, labels, targets):
    """C(lambda, b) through the general truncation map W^-1 (relu(W z + b) - b), W = diag(lambda) R."""
    z = torch.tensor(x)
    L = R.shape[0]
    for l in range(L):
        W = torch.diag(lam[l]) @ torch.tensor(R[l])
        a = z @ W.T + b[l]
        z = torch.linalg.solve(W, (torch.relu(a) - b[l]).T).T
    r = z - torch.tensor(targets)[torch.tensor(labels)]
    return (r * r).sum() / (2 * len(x))


def layer1_kinks(seed=3):
    """Integer W_1, dyadic b_1 and points: half the points lie exactly on a layer-1 hyperplane."""
    rng = np.random.default_rng(seed)
    W1 = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 1.0]])   # det 3
    b1 = np.array([0.25, -0.5, 0.0])
    W2 = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    W3 = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    b23 = 0.3 * rng.standard_normal((2, 3))
    x = rng.integers(-8, 9, size=(30, 3)) / 8.0
    k = np.arange(15) % 3
    # put point i (i < 15) on hyperplane k_i of layer 1 by solving for one coordinate exactly
    for i in range(15):
        if k[i] == 0:
            x[i, 0] = -0.25 - 2 * x[i, 1]
        elif k[i] == 1:
            x[i, 2] = 0.5 - x[i, 1]
        else:
            x[i, 2] = x[i, 0]
    ow = rng.standard_normal((2, 3))
    ob = rng.standard_normal(2)
    params = tf.Params.from_layers(np.stack([W1, W2, W3]), np.vstack([b1, b23]), ow, ob)
    a1 = x @ W1.T + b1
    assert np.all(a1[np.arange(15), k] == 0.0)
    return params, x, np.arange(30) % 2
