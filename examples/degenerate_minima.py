"""The 2^Q - 1 degenerate minima: hand-built cones, perturbed, then flowed.

MODEL.md section 10 (after arXiv:2309.10639): for Q clusters that cones can separate,
``cone_minimizer`` builds L = Q layers, layer c + 1 belonging to cluster c. Collapsing
a subset S of the clusters (each onto its target) and leaving the others free in
every layer gives a stationary point of cost

    C(S) = sum_{c not in S} 1/(2N) sum_{i in c} |x_i - y_c|^2      (predicted_cost),

0 for S = all clusters (the global minimum) and > 0 for the 2^Q - 1 other subsets:
free points contribute nothing to the gradient, so the cost is flat in the directions
that keep them free.

Here Q = 3 Gaussian clusters (std 0.5) in the plane, centred at distance ~4 from the
origin at 120 degrees from one another, each target 3 units from its cluster's centre
towards the origin (just outside the cluster, on the side facing the others). For
every subset S:

1. build the minimizer, check its cost against ``predicted_cost`` and its gradient
   norm (should be ~0);
2. perturb every cumulative weight matrix and bias vector by a random amount of
   relative size eps (Frobenius norm), for eps = 1e-4 and eps = 0.2;
3. flow the full cumulative gradient flow (rk45, t_end = 20, max_evals guard) and
   compare the final cost with C(S).

A row "returned" when ``|C_final - C(S)| <= 1e-3 C_ref``, with C_ref the cost of the
untouched data (all clusters free); "escaped lower" when the final cost is below
that band; "higher" otherwise. The column "collapsed fractions" gives, per cluster,
the fraction of its points that some layer maps to an apex at the end.

What it measured (N = 9000, seed 0): every minimizer has its predicted cost (to
1e-15) and gradient norm <= 3e-15. After the 1e-4 perturbation all 8 flows return
to their minimum's cost (within 2e-12 C_ref; the global minimum to cost 1e-12).
After the 0.2 perturbation 6 of 8 return (the global one to cost 3e-9; for S = {}
the perturbed identity layers still truncate nothing, so the cost never moves),
and S = {0} and S = {2} escape lower, to about 0.53 C(S): the perturbed collapsing
cone truncates a few points (0.1-0.3%) of a free cluster; that seed spreads through
the whole cluster, which is pulled onto a face of the cone towards its target,
while the collapsed cluster loses about 10% of its collapse. So, for one random
direction each, the degenerate minima came back from small perturbations, and a
larger one that truncates a seed of a free cluster let two of them escape.

Run:
    python examples/degenerate_minima.py [--out FOLDER] [--n-points N] [--seed S]
Writes FOLDER/degenerate_minima.png and FOLDER/degenerate_minima.json
(default FOLDER: examples-out/degenerate_minima, relative to the current directory).
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import truncflow as tf

NAME = "degenerate_minima"
EPSILONS = (1e-4, 0.2)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"examples-out/{NAME}", help="output folder")
    parser.add_argument("--n-points", type=int, default=9_000, help="total number of points N")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def perturb(params, eps, rng):
    """Cumulative parameters with each W^(l) and b^(l) moved by eps times its Frobenius norm."""
    W, b = np.array(params.cum_weights), np.array(params.cum_biases)
    for l in range(W.shape[0]):
        for array in (W[l], b[l]):
            direction = rng.standard_normal(array.shape)
            array += eps * np.linalg.norm(array) * direction / np.linalg.norm(direction)
    return tf.Params.from_cumulative(W, b)


def label(subset):
    return "{" + ",".join(str(c) for c in subset) + "}"


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    Q = 3
    angles = np.pi / 2 + 2 * np.pi * np.arange(Q) / Q
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    targets = centers * (1 - 3.0 / np.linalg.norm(centers, axis=1, keepdims=True))
    points, labels = tf.gaussian_clusters(args.n_points, centers=centers, std=0.5, seed=args.seed)
    data = tf.Dataset(points, labels, targets=targets)
    c_ref = tf.predicted_cost(data, collapse=[])          # every cluster free: the untouched data
    band = 1e-3 * c_ref

    subsets = [s for k in range(Q, -1, -1) for s in itertools.combinations(range(Q), k)]
    rows = []
    for i, subset in enumerate(subsets):
        minimum = tf.cone_minimizer(data, collapse=subset)
        c_min, grad = tf.gradient(minimum, data)
        c_pred = tf.predicted_cost(data, collapse=subset)
        for j, eps in enumerate(EPSILONS):
            rng = np.random.default_rng([args.seed, i, j])
            start = perturb(minimum, eps, rng)
            t0 = time.perf_counter()
            result = tf.simulate(start, data, 20.0, wrt="cumulative", method="rk45", rtol=1e-6, atol=1e-9,
                                 max_evals=4000, n_records=20)
            c_final = float(result.cost[-1])
            if abs(c_final - c_min) <= band:
                verdict = "returned"
            else:
                verdict = "escaped lower" if c_final < c_min else "higher"
            # per cluster: the largest fraction of its points mapped to an apex by some layer
            collapsed = result.collapsed_fraction[-1].max(axis=0).round(3).tolist()
            rows.append(dict(collapse=list(subset), eps=eps, cost_min=float(c_min), cost_predicted=c_pred,
                             grad_norm=grad.norm(), cost_start=float(result.cost[0]), cost_final=c_final,
                             relative_change=(c_final - c_min) / c_ref, verdict=verdict,
                             collapsed_at_end=collapsed, status=result.status,
                             evaluations=int(result.evaluations[-1]), seconds=time.perf_counter() - t0))
    elapsed = time.perf_counter() - started

    # --- table
    print(f"degenerate minima: Q = {Q} Gaussian clusters, N = {args.n_points}, M = 2; "
          f"C_ref (all free) = {c_ref:.6g}; 'returned' means |C_final - C(S)| <= {band:.3g}")
    print(f"{'S':>8}{'C(S)':>11}{'|C-pred|':>10}{'|grad|':>10}{'eps':>8}{'C start':>11}{'C final':>11}"
          f"{'(Cf-C(S))/Cref':>16}  {'verdict':<14}{'collapsed fractions':>20}  status")
    for r in rows:
        print(f"{label(r['collapse']):>8}{r['cost_min']:11.4e}{abs(r['cost_min'] - r['cost_predicted']):10.1e}"
              f"{r['grad_norm']:10.1e}{r['eps']:8.0e}{r['cost_start']:11.4e}{r['cost_final']:11.4e}"
              f"{r['relative_change']:16.2e}  {r['verdict']:<14}"
              f"{' '.join(f'{v:.2f}' for v in r['collapsed_at_end']):>20}  "
              f"{r['status']} ({r['evaluations']} evals)")
    for eps in EPSILONS:
        n_back = sum(r["verdict"] == "returned" for r in rows if r["eps"] == eps)
        print(f"eps = {eps:g}: {n_back} of {len(subsets)} returned to their minimum's cost")
    print(f"run time {elapsed:.1f} s")

    # --- plot: final cost against the minimum's cost (degenerate minima: C(S) > 0), and
    # final against initial (perturbed) cost (all minima, the global one included)
    fig = Figure(figsize=(13, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    width = 0.38
    degenerate = [s for s in subsets if len(s) < Q]
    x1, x2 = np.arange(len(degenerate)), np.arange(len(subsets))
    for j, eps in enumerate(EPSILONS):
        mine = [r for r in rows if r["eps"] == eps]
        ratio_min = [r["cost_final"] / r["cost_min"] for r in mine if len(r["collapse"]) < Q]
        ratio_start = [r["cost_final"] / r["cost_start"] for r in mine]
        ax1.bar(x1 + (j - 0.5) * width, ratio_min, width, label=f"eps = {eps:g}")
        ax2.bar(x2 + (j - 0.5) * width, ratio_start, width, label=f"eps = {eps:g}")
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_title("final cost / minimum's cost C(S)  (degenerate minima)")
    ax1.set_xticks(x1, [f"S={label(s)}" for s in degenerate], rotation=30)
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_title("final / initial (perturbed) cost")
    ax2.set_xticks(x2, [f"S={label(s)}" for s in subsets], rotation=30)
    ax1.legend(fontsize=8, loc="lower left")
    ax2.legend(fontsize=8, loc="center left")
    fig.savefig(out / f"{NAME}.png", dpi=110)

    numbers = dict(n_points=args.n_points, n_clusters=Q, width=2, centers=centers.tolist(),
                   targets=targets.tolist(), cost_reference=c_ref, band=band, epsilons=list(EPSILONS),
                   t_end=20.0, rows=rows, run_time_s=elapsed, seed=args.seed)
    (out / f"{NAME}.json").write_text(json.dumps(numbers, indent=2))
    print(f"wrote {out / (NAME + '.png')} and {out / (NAME + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
