"""One torch.optim.Adam step with truncflow.torch.TruncflowCost against the same model in plain PyTorch.

A step is what a training loop does: ``opt.zero_grad(); loss = model(); loss.backward();
opt.step()``. The truncflow side is :class:`truncflow.torch.TruncflowCost` (its forward runs
truncflow's kernels once, cost and gradient in one sweep; its backward hands the exact
gradient to autograd). The peer is the network of ``tests/torch_reference.py``'s
``torch_cost`` written as an ``nn.Module`` with the same ``nn.Parameter``s, float64, and
autograd for the gradient:

  input  layers      the ordinary forward pass relu(W_l x + b_l) and the read-out
                     x~^(L) = (W^(L))^-1 (x^(L) - b^(L)) with W^(L), b^(L) built from W_l, b_l
  input  cumulative  the truncation maps tau(z) = (W^(l))^-1 (relu(W^(l) z + b^(l)) - b^(l))
                     (torch.linalg.solve per layer)
  output layers      the ordinary forward pass and the affine output layer

The cost is the total 1/(2N) sum |residual|^2 (torch_cost's per-cluster masks left out: the
peer is written the fast way), the points and the targets gathered per point are built once.
Both sides run on the same number of threads: ``torch.set_num_threads(truncflow.get_threads())``.
Before timing, the two models' costs and gradients at the initial parameters are compared.

Timing: after one warm-up step each, ``--rounds`` rounds in which the two models step in turn,
each after a ``--settle`` pause (torch's idle workers spin for milliseconds after a call); the
best step time of each and their ratio are printed. Each side keeps its own Adam state; the
trajectories stay the same to rounding for a few steps, so both step through the same
activation patterns.

    python bench/torch_adam.py                     # N = 1e6, M = 8, L = 3, all three rows
    python bench/torch_adam.py --rows input-layers --rounds 10
    python bench/torch_adam.py --peer-solve inverse    # the peer's (W^(l))^-1 by one inverse and a matmul
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import truncflow as tf  # noqa: E402
from truncflow.torch import TruncflowCost  # noqa: E402

ROWS = ("input-layers", "input-cumulative", "output-layers")


class TorchModel(torch.nn.Module):
    """tests/torch_reference.py's network (torch_cost) as a Module with nn.Parameters."""

    def __init__(self, params, points, labels, targets, kind, wrt, solve="solve"):
        super().__init__()
        t = lambda a: torch.tensor(np.array(a, dtype=np.float64))
        self.kind, self.wrt = kind, wrt
        #: "solve": torch.linalg.solve(W, B.T).T with the N points as right-hand sides, as
        #: torch_cost writes it; "inverse": B @ inv(W).T (one M x M inverse, then a matmul)
        self.solve = self._solve if solve == "solve" else self._inverse
        w, b = (params.cum_weights, params.cum_biases) if wrt == "cumulative" else (params.weights, params.biases)
        self.weights, self.biases = torch.nn.Parameter(t(w)), torch.nn.Parameter(t(b))
        if kind == "output":
            self.out_weight = torch.nn.Parameter(t(params.out_weight))
            self.out_bias = torch.nn.Parameter(t(params.out_bias))
        self.x = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64))
        self.y = t(targets)[torch.from_numpy(np.array(labels, dtype=np.int64))]

    @staticmethod
    def _solve(W, B):
        return torch.linalg.solve(W, B.T).T

    @staticmethod
    def _inverse(W, B):
        return B @ torch.linalg.inv(W).T

    def forward(self):
        W, b, x = self.weights, self.biases, self.x
        L, M = W.shape[0], W.shape[1]
        if self.wrt == "cumulative":
            z = x
            for l in range(L):
                s = torch.relu(z @ W[l].T + b[l])
                z = self.solve(W[l], s - b[l])
            xt = z
            xL = xt @ W[L - 1].T + b[L - 1]
        else:
            h = x
            for l in range(L):
                h = torch.relu(h @ W[l].T + b[l])
            xL = h
            if self.kind == "input":
                cw, cb = torch.eye(M, dtype=W.dtype), torch.zeros(M, dtype=W.dtype)
                for l in range(L):
                    cw, cb = W[l] @ cw, W[l] @ cb + b[l]
                xt = self.solve(cw, xL - cb)
        pred = xt if self.kind == "input" else xL @ self.out_weight.T + self.out_bias
        res = pred - self.y
        return (res * res).sum() / (2 * x.shape[0])


def problem(n, m, layers, kind, q=4, p=2, seed=0):
    """bench/report.py's problem (Params.random(scale=0.5, bias_scale=0.3), Gaussian points, q
    clusters), with an output layer and output targets for the output cost."""
    rng = np.random.default_rng(seed)
    params = tf.Params.random(layers, m, scale=0.5, bias_scale=0.3, seed=seed)
    points = rng.standard_normal((n, m))
    labels = rng.integers(0, q, n)
    targets = rng.standard_normal((q, m))
    if kind == "output":
        params = params.with_output(rng.standard_normal((p, m)) / np.sqrt(m), 0.1 * rng.standard_normal(p))
        targets = rng.standard_normal((q, p))
    return params, tf.Dataset(points, labels, targets)


def step_fn(model, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        opt.zero_grad()
        loss = model()
        loss.backward()
        opt.step()
        return loss

    return step


def agreement(a, b):
    """Largest relative difference of cost and gradients of two models at their current parameters."""
    worst = 0.0
    for m in (a, b):
        m.zero_grad()
    ca, cb = a(), b()
    ca.backward()
    cb.backward()
    worst = abs(ca.item() - cb.item()) / abs(cb.item())
    for pa, pb in zip(a.parameters(), b.parameters()):
        worst = max(worst, float((pa.grad - pb.grad).abs().max() / pb.grad.abs().max()))
    return worst


def best_times(fns, rounds, settle):
    for fn in fns.values():
        fn()
    best = {name: np.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(settle)
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=float, default=1e6, help="points (default 1e6)")
    ap.add_argument("--m", type=int, default=8, help="width M (default 8)")
    ap.add_argument("--layers", type=int, default=3, help="layers L (default 3)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--settle", type=float, default=0.05, help="pause before each timed step, s (default 0.05)")
    ap.add_argument("--peer-solve", choices=("solve", "inverse"), default="solve",
                    help="how the peer applies (W^(l))^-1 to the points: torch.linalg.solve with the points as "
                         "right-hand sides, as tests/torch_reference.py (default), or a matmul with torch.linalg.inv")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    n = int(args.n)
    threads = tf.get_threads()
    torch.set_num_threads(threads)
    load = os.getloadavg()
    print(f"N = {n:.0e}, M = {args.m}, L = {args.layers}; peer inverse by {args.peer_solve}; {threads} threads for truncflow and torch "
          f"(torch {torch.__version__}); {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}", flush=True)
    results = []
    for row in args.rows:
        kind, wrt = row.split("-")
        params, data = problem(n, args.m, args.layers, kind)
        ours = TruncflowCost(params, data, kind, wrt)
        peer = TorchModel(params, data.points, data.labels, data.targets, kind, wrt, args.peer_solve)
        diff = agreement(ours, peer)
        best = best_times({"truncflow": step_fn(ours, args.lr), "torch": step_fn(peer, args.lr)},
                          args.rounds, args.settle)
        ratio = best["torch"] / best["truncflow"]
        results.append(dict(row=row, kind=kind, wrt=wrt, peer_solve=args.peer_solve, truncflow_s=best["truncflow"], torch_s=best["torch"],
                            ratio=ratio, max_rel_diff_at_start=diff))
        print(f"{row:17s} Adam step, plain PyTorch / TruncflowCost: {ratio:5.1f}x   (best of {args.rounds}: "
              f"truncflow {1e3 * best['truncflow']:.0f} ms, torch {1e3 * best['torch']:.0f} ms; "
              f"cost and gradients agree to {diff:.1e} relative)", flush=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(
            n=n, m=args.m, layers=args.layers, threads=threads, rounds=args.rounds, settle=args.settle,
            torch=torch.__version__, numpy=np.__version__, python=platform.python_version(),
            machine=platform.machine(), cpus=os.cpu_count(), load_before=load, load_after=load_after,
            rows=results), indent=2) + "\n")


if __name__ == "__main__":
    main()
