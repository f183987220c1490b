"""Collapse: a cluster driven to the apex of its cone, and its cost to zero.

One Gaussian cluster of N points in R^3 (centre 0, std 1) and one layer that starts
as the identity cone with its apex at (-1.5, -1.5, -1.5), so that about 18% of the
points start with at least one truncated coordinate (the seed). The input-space
target (5, 5, 5) lies beyond the cluster in every coordinate, so by MODEL.md section 9
the flow should carry the whole cluster onto the apex and the apex onto the target:
cost -> 0, spread tr Cov of the cluster's images -> 0, mean number of free
coordinates 3 -> 0, collapsed fraction -> 1.

The same start is flowed three ways:

- "cumulative, biases": rk45 on the cumulative parameters with the weights frozen
  (``train="biases"``): the cone keeps its shape and only its apex moves;
- "cumulative, all": rk45 on all cumulative parameters (the full flow: the cone's
  edges move too);
- "aligned, exact": the aligned model with weights and biases flowing, solved exactly
  from event to event (``method="events"``, ``train="all"``).

What it measured (N = 20000, seed 0): the first and third flows collapse the cluster
completely (collapsed fraction 1, free coordinates 0); with the cone's shape fixed
the cost then falls like exp(-2 s), as kappa = 1 and n = N predict, and the exact
aligned flow, whose rate kappa = (1 + t^2)^2 / r^2 is large near t = 5, reaches
round-off (cost ~1e-31) by s = 3. The full cumulative flow deforms the cone at once
(the singular values of W^(1) go from (1, 1, 1) to about (2.2, 2.1, 0.2) by s = 1),
brings the apex near the target while a third of the points are still not
collapsed, and then draws the rest in only slowly: its cost decays
sub-exponentially (local d ln C / d ln s from -3.7 to -2.2), 2.8e-3 at s = 10 with
98.3% of the points collapsed. Collapse is reached, but not at the rate of the
fixed-shape or aligned flows.

Run:
    python examples/collapse.py [--out FOLDER] [--n-points N] [--seed S]
Writes FOLDER/collapse.png and FOLDER/collapse.json
(default FOLDER: examples-out/collapse, relative to the current directory).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import truncflow as tf

NAME = "collapse"
TABLE_TIMES = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"examples-out/{NAME}", help="output folder")
    parser.add_argument("--n-points", type=int, default=20_000, help="cluster size N")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    M, N = 3, args.n_points
    points, labels = tf.gaussian_clusters(N, centers=[np.zeros(M)], std=1.0, seed=args.seed)
    target = np.full(M, 5.0)
    assert np.all(points.max(axis=0) < target), "the target must lie beyond the cluster in every coordinate"
    data = tf.Dataset(points, labels, targets=[target])
    apex0 = np.full(M, -1.5)
    start = tf.Params.aligned(frames=np.eye(M)[None], scales=np.ones((1, M)), biases=-apex0[None])

    t_end = 10.0
    record_times = np.union1d(np.linspace(0.0, t_end, 101), TABLE_TIMES)
    runs = {
        "cumulative, biases": dict(wrt="cumulative", method="rk45", train="biases"),
        "cumulative, all": dict(wrt="cumulative", method="rk45", train="all"),
        "aligned, exact": dict(wrt="aligned", method="events", train="all"),
    }
    results, seconds = {}, {}
    for name, how in runs.items():
        t0 = time.perf_counter()
        rk = dict(rtol=1e-6, atol=1e-9, max_evals=30_000) if how["method"] == "rk45" else {}
        results[name] = tf.simulate(start, data, t_end, record_times=record_times, **how, **rk)
        seconds[name] = time.perf_counter() - t0
    elapsed = time.perf_counter() - started

    # --- table
    print(f"collapse: one Gaussian cluster, N = {N}, M = {M}, target {target.tolist()} beyond the cluster, "
          f"apex starts at {apex0.tolist()}")
    numbers = dict(n_points=N, width=M, target=target.tolist(), apex0=apex0.tolist(), t_end=t_end,
                   seed=args.seed, runs={})
    for name, r in results.items():
        print(f"\n{name}: status {r.status}, {int(r.evaluations[-1])} gradient evaluations, "
              f"{seconds[name]:.1f} s")
        print(f"{'s':>6}{'cost':>12}{'spread':>12}{'free coords':>13}{'truncated':>11}{'collapsed':>11}")
        rows = []
        for s in TABLE_TIMES:
            i = int(np.flatnonzero(np.isclose(r.t, s))[0]) if np.any(np.isclose(r.t, s)) else None
            if i is None:
                continue
            row = dict(t=float(r.t[i]), cost=float(r.cost[i]), spread=float(r.spread[i, 0, 0]),
                       free_coordinates=float(r.free_coordinates[i, 0, 0]),
                       truncated_fraction=float(r.truncated_fraction[i, 0, 0]),
                       collapsed_fraction=float(r.collapsed_fraction[i, 0, 0]))
            rows.append(row)
            print(f"{row['t']:6.1f}{row['cost']:12.3e}{row['spread']:12.3e}{row['free_coordinates']:13.5f}"
                  f"{row['truncated_fraction']:11.5f}{row['collapsed_fraction']:11.5f}")
        apex = r.final.cones()[0][0]
        print(f"final apex {np.array2string(apex, precision=6)} (target {target.tolist()})")
        numbers["runs"][name] = dict(status=r.status, evaluations=int(r.evaluations[-1]),
                                     seconds=seconds[name], table=rows, final_apex=apex.tolist(),
                                     final_t=float(r.t[-1]), final_cost=float(r.cost[-1]))
    # late-time decay of the cost: local slopes d ln C / d ln s and d ln C / ds. Once the whole
    # cluster sits at the apex, the biases-only flow moves the apex as t - t* ~ exp(-s)
    # (kappa = 1, n = N), so its cost should fall like exp(-2 s).
    print("\nlate-time decay of the cost (theory for 'cumulative, biases' once collapsed: d ln C / ds = -2)")
    print(f"{'run':<20}{'interval':>10}{'d ln C / d ln s':>17}{'d ln C / ds':>14}")
    numbers["late_decay"] = []
    for name in ("cumulative, biases", "cumulative, all"):
        r = results[name]
        for a, b in ((2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0)):
            ia, ib = int(np.argmin(np.abs(r.t - a))), int(np.argmin(np.abs(r.t - b)))
            d_log_c = float(np.log(r.cost[ib] / r.cost[ia]))
            row = dict(run=name, interval=[a, b], loglog_slope=d_log_c / np.log(b / a),
                       log_rate=d_log_c / (b - a))
            numbers["late_decay"].append(row)
            print(f"{name:<20}{f'[{a:g}, {b:g}]':>10}{row['loglog_slope']:17.2f}{row['log_rate']:14.3f}")
    numbers["run_time_s"] = elapsed
    print(f"run time {elapsed:.1f} s")

    # --- plot
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    styles = {"cumulative, biases": "-", "cumulative, all": "--", "aligned, exact": ":"}
    tiny = 1e-14    # floor of the log scales: below it is round-off (the exact run reaches cost 3e-31)
    for name, r in results.items():
        axes[0].semilogy(r.t, np.maximum(r.cost, tiny), styles[name], label=name)
        axes[1].semilogy(r.t, np.maximum(r.spread[:, 0, 0], tiny), styles[name], label=name)
        axes[2].plot(r.t, r.free_coordinates[:, 0, 0], styles[name], label=name)
    axes[0].set_title("cost (floor 1e-14: round-off)")
    axes[1].set_title(r"spread tr Cov($\tilde x$) of the images (floor 1e-14)")
    axes[2].set_title("mean number of free coordinates")
    for ax in axes:
        ax.set_xlabel("flow time s")
        ax.legend(fontsize=8)
    fig.savefig(out / f"{NAME}.png", dpi=110)
    (out / f"{NAME}.json").write_text(json.dumps(numbers, indent=2))
    print(f"wrote {out / (NAME + '.png')} and {out / (NAME + '.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
