"""The peers truncflow is measured against, on the same network and data.

- PyTorch autograd, float64 and float32, written as a user would: the ordinary
  layer-form network ``x -> relu(W_l x + b_l)``, the input-cost read-out
  ``x~ = (W^(L))^-1 (x^(L) - b^(L))``, and ``torch.autograd.grad`` for the
  gradient in the cumulative parameters (the cumulative weights are the leaves;
  layer weights are computed from them inside the graph, O(L M^3)).
- The plain NumPy reference of the tests (tests/reference.py), per point.
"""
from __future__ import annotations

import numpy as np

try:
    import torch
except ImportError:  # the benchmark reports torch as absent
    torch = None


def torch_gradient_fn(params, points, labels, targets, dtype):
    """A closure computing (cost, dC/dW^(l), dC/db^(l)) with torch autograd in ``dtype``."""
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    cw = torch.tensor(np.array(params.cum_weights), dtype=tdt, requires_grad=True)
    cb = torch.tensor(np.array(params.cum_biases), dtype=tdt, requires_grad=True)
    x = torch.tensor(np.asarray(points), dtype=tdt)
    y = torch.tensor(np.asarray(targets), dtype=tdt)[torch.as_tensor(labels)]
    L, M = params.n_layers, params.width
    n = x.shape[0]

    def run():
        # layer parameters from cumulative ones: W_l = W^(l) (W^(l-1))^-1, b_l = b^(l) - W_l b^(l-1)
        z = x
        prev_w = torch.eye(M, dtype=tdt)
        prev_b = torch.zeros(M, dtype=tdt)
        for l in range(L):
            w = torch.linalg.solve(prev_w.T, cw[l].T).T
            b = cb[l] - w @ prev_b
            z = torch.relu(z @ w.T + b)
            prev_w, prev_b = cw[l], cb[l]
        xt = torch.linalg.solve(cw[L - 1], (z - cb[L - 1]).T).T
        cost = ((xt - y) ** 2).sum() / (2 * n)
        gw, gb = torch.autograd.grad(cost, [cw, cb])
        return cost.item(), gw, gb

    return run
