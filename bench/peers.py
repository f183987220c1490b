"""The peers truncflow is measured against, on the same network and data.

- PyTorch autograd, float64 and float32, written as a user would: the ordinary
  layer-form network ``x -> relu(W_l x + b_l)``, the input-cost read-out
  ``x~ = (W^(L))^-1 (x^(L) - b^(L))``, and ``torch.autograd.grad`` for the
  gradient in the cumulative parameters (the cumulative weights are the leaves;
  layer weights are computed from them inside the graph, O(L M^3)).
- NumPy, vectorized over the points as a user would write it without a JIT: the
  same sweep as truncflow (MODEL.md section 6) with (N, M) arrays and BLAS matrix
  products, float64. (The tests' reference, tests/reference.py, loops over points in
  Python and is far too slow to be a peer.)

Both return (cost, dC/dW^(l), dC/db^(l)) for the input cost; tests/test_peers.py
checks them against truncflow.
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
    y = torch.tensor(np.array(targets), dtype=tdt)[torch.as_tensor(np.array(labels))]
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


def numpy_gradient_fn(params, points, labels, targets):
    """A closure computing (cost, dC/dW^(l), dC/db^(l)) with vectorized NumPy (float64)."""
    cw, cb, inv = np.array(params.cum_weights), np.array(params.cum_biases), np.array(params.inverses)
    x = np.asarray(points, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)[np.asarray(labels)]
    L, n = cw.shape[0], x.shape[0]

    def run():
        zs, acts = [x], []
        for l in range(L):                      # x~ = z - A (a * [a <= 0]), rows are points
            a = zs[-1] @ cw[l].T + cb[l]
            acts.append(a)
            zs.append(zs[-1] - np.where(a <= 0.0, a, 0.0) @ inv[l].T)
        r = zs[L] - y
        cost = float(np.einsum("ij,ij->", r, r)) / (2 * n)
        gw, gb = np.empty_like(cw), np.empty_like(cb)
        g = r / n
        for l in range(L - 1, -1, -1):          # u = A^T g; free rows u (z - x~)^T, truncated -u x~^T
            u = g @ inv[l]
            uf = np.where(acts[l] > 0.0, u, 0.0)
            ut = u - uf
            gw[l] = uf.T @ (zs[l] - zs[l + 1]) - ut.T @ zs[l + 1]
            gb[l] = -ut.sum(axis=0)
            g = uf @ cw[l]
        return cost, gw, gb

    return run
