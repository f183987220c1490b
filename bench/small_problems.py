"""Small problems fast, and many flows at once (issue 12): latency and ensemble throughput.

    python bench/small_problems.py [--baseline DIR] [--max-b 1000] [--out bench/small_problems.json]

Latency (N = 16, M = 2, L = 2, the layer flow, one kernel thread), on an idle machine
and with another process busy on every core:
  - one evaluation of the flow's gradient (``FlowProblem.evaluate``: state -> gradient
    vector) and, for its overhead, the gradient kernel alone on prepared arrays;
  - gradient-descent steps per second (``simulate(method="gd")``, 20,000 steps, 2 records);
  - rk45's per-step overhead: (wall time - evaluations x the time of one made from compiled
    code, as the compiled stepper makes them) / attempted steps.

Ensembles: B flows of N = 64 points (M = 2, L = 2, three clusters), each its own random
initial network, gradient descent in the cumulative parametrization (lr = 0.01, 100
steps; truncflow records the initial and the final state) on two cores:
  - ``truncflow.simulate_ensemble``;
  - a loop of single ``simulate`` calls with this code, and with ``--baseline`` (a checkout
    of truncflow before issue 12, run in a subprocess): "today" in the issue's words;
  - a hand-written NumPy loop, vectorized over the members and the points (the sweep of
    MODEL.md section 6 with batched matrix products, float64);
  - PyTorch: ``torch.func.vmap`` of ``torch.func.grad`` of the cost over the members,
    float64, when torch is importable.
Flows per second, the best of ``ROUNDS`` interleaved rounds (the loop before issue 12:
one round, in a subprocess); ratios from this one run. The final cost of member 0 is
compared across the peers (they compute the same flow).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import truncflow as tf

N_ENSEMBLE, STEPS, LR = 64, 100, 0.01


# ----------------------------------------------------------------- latency
def _spin(stop):
    while not stop.is_set():
        sum(i * i for i in range(1000))


class Busy:
    """One spinning process per core while the block runs."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        if self.on:
            ctx = multiprocessing.get_context("spawn")
            self.stop = ctx.Event()
            self.procs = [ctx.Process(target=_spin, args=(self.stop,)) for _ in range(os.cpu_count())]
            for p in self.procs:
                p.start()
            time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        if self.on:
            self.stop.set()
            for p in self.procs:
                p.join()


def _per_call(fn, seconds=1.0):
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            fn()
        n += 100
    return (time.perf_counter() - start) / n


def _evaluations_in_compiled_code(problem, y, n=20000):
    """Seconds per ``flow.evaluate_serial`` call made from compiled code (as the compiled steppers
    make them): no Python call around it."""
    from numba import njit
    from truncflow.kernels.flow import evaluate_serial

    @njit
    def many(n, y, mode, L, M, P, frames, mc, Mp, points, labels, targets, mask, output_cost, chunk):
        total = 0.0
        for _ in range(n):
            total += evaluate_serial(y, mode, L, M, P, frames, mc, Mp, points, labels, targets, mask,
                                     output_cost, chunk)[1]
        return total

    many(10, y, *problem.serial_args)
    start = time.perf_counter()
    many(n, y, *problem.serial_args)
    return (time.perf_counter() - start) / n


def latency():
    from truncflow.compute import tile_arrays
    from truncflow.engine.rhs import FlowProblem
    from truncflow.kernels.gradient import gradient_kernel_serial

    tf.set_threads(1)
    rng = np.random.default_rng(0)
    ds = tf.Dataset(rng.standard_normal((16, 2)), rng.integers(0, 2, 16), rng.standard_normal((2, 2)))
    p = tf.Params.random(2, 2, seed=1)
    problem = FlowProblem(p, ds, wrt="layers")
    y = problem.pack(p)
    arrays = tile_arrays(p, ds.targets, "input")
    kernel = lambda: gradient_kernel_serial(ds.points, ds.labels, *arrays, False, 1, 1024)
    out = {}
    for busy in (False, True):
        with Busy(busy):
            t_eval = _per_call(lambda: problem.evaluate(y))
            t_kernel = _per_call(kernel)
            t_compiled = _evaluations_in_compiled_code(problem, y)
            tf.simulate(p, ds, 0.01, method="gd", lr=1e-4, wrt="layers", n_records=2)
            start = time.perf_counter()
            tf.simulate(p, ds, 2.0, method="gd", lr=1e-4, wrt="layers", n_records=2)
            gd_rate = 20000 / (time.perf_counter() - start)
            tf.simulate(p, ds, 0.001, wrt="layers", n_records=2)      # loads the compiled stepper
            start = time.perf_counter()
            r = tf.simulate(p, ds, 0.02, wrt="layers", n_records=2)
            wall = time.perf_counter() - start
            attempts = int(r.series["steps_accepted"][-1] + r.series["steps_rejected"][-1])
            evals = int(r.series["evaluations"][-1])
            rk_overhead = (wall - evals * t_compiled) / attempts    # its evaluations run in compiled code
        out["busy" if busy else "idle"] = dict(
            evaluate_us=t_eval * 1e6, kernel_us=t_kernel * 1e6, overhead_us=(t_eval - t_kernel) * 1e6,
            compiled_evaluation_us=t_compiled * 1e6,
            gd_steps_per_s=gd_rate, rk45_overhead_per_attempt_us=rk_overhead * 1e6,
            rk45_attempts=attempts, rk45_evaluations=evals)
    tf.set_threads(None)
    return out


# --------------------------------------------------------------- ensembles
def ensemble_problem(B, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 2)) * 1.5
    x, lab = tf.gaussian_clusters(N_ENSEMBLE, centers, std=0.5, seed=seed)
    ds = tf.Dataset(x, lab, centers + 0.5 * rng.standard_normal((3, 2)))
    return [tf.Params.random(2, 2, scale=0.3, bias_scale=0.3, seed=1000 + b) for b in range(B)], ds


OPTIONS = dict(method="gd", lr=LR, wrt="cumulative", record_times=[STEPS * LR])


def run_ensemble(B):
    params, ds = ensemble_problem(B)
    start = time.perf_counter()
    results = tf.simulate_ensemble(params, ds, STEPS * LR, **OPTIONS)
    return time.perf_counter() - start, float(results[0].series["cost"][-1])


def run_loop(B):
    params, ds = ensemble_problem(B)
    start = time.perf_counter()
    results = [tf.simulate(p, ds, STEPS * LR, **OPTIONS) for p in params]
    return time.perf_counter() - start, float(results[0].series["cost"][-1])


def run_numpy(B):
    params, ds = ensemble_problem(B)
    cw = np.stack([p.cum_weights for p in params])
    cb = np.stack([p.cum_biases for p in params])
    x = np.asarray(ds.points, dtype=np.float64)
    y = ds.targets[ds.labels]
    n, L = x.shape[0], cw.shape[1]
    T = lambda a: np.swapaxes(a, -1, -2)
    start = time.perf_counter()
    for _ in range(STEPS):
        inv = np.linalg.inv(cw)
        zs, acts = [np.broadcast_to(x, (B,) + x.shape)], []
        for l in range(L):                       # x~ = z - A (a [a <= 0]), rows are points
            a = zs[-1] @ T(cw[:, l]) + cb[:, l, None, :]
            acts.append(a)
            zs.append(zs[-1] - np.where(a <= 0.0, a, 0.0) @ T(inv[:, l]))
        r = zs[L] - y
        g = r / n
        gw, gb = np.empty_like(cw), np.empty_like(cb)
        for l in range(L - 1, -1, -1):
            u = g @ inv[:, l]
            uf = np.where(acts[l] > 0.0, u, 0.0)
            ut = u - uf
            gw[:, l] = T(uf) @ (zs[l] - zs[l + 1]) - T(ut) @ zs[l + 1]
            gb[:, l] = -ut.sum(axis=1)
            g = uf @ cw[:, l]
        cw = cw - LR * gw
        cb = cb - LR * gb
    elapsed = time.perf_counter() - start
    inv = np.linalg.inv(cw[0])
    z = x
    for l in range(L):
        a = z @ cw[0, l].T + cb[0, l]
        z = z - np.where(a <= 0.0, a, 0.0) @ inv[l].T
    return elapsed, float(np.sum((z - y) ** 2) / (2 * n))


def run_torch(B):
    import torch
    torch.set_num_threads(2)
    params, ds = ensemble_problem(B)
    cw = torch.tensor(np.stack([p.cum_weights for p in params]))
    cb = torch.tensor(np.stack([p.cum_biases for p in params]))
    x = torch.tensor(np.asarray(ds.points, dtype=np.float64))
    y = torch.tensor(ds.targets[ds.labels])
    n, L, M = x.shape[0], cw.shape[1], cw.shape[2]

    def cost(cw, cb):
        z, prev_w, prev_b = x, torch.eye(M, dtype=x.dtype), torch.zeros(M, dtype=x.dtype)
        for l in range(L):                       # the ordinary network, layer weights from cumulative ones
            w = torch.linalg.solve(prev_w.T, cw[l].T).T
            b = cb[l] - w @ prev_b
            z = torch.relu(z @ w.T + b)
            prev_w, prev_b = cw[l], cb[l]
        xt = torch.linalg.solve(cw[L - 1], (z - cb[L - 1]).T).T
        return ((xt - y) ** 2).sum() / (2 * n)

    step = torch.func.vmap(torch.func.grad(cost, argnums=(0, 1)))
    start = time.perf_counter()
    for _ in range(STEPS):
        gw, gb = step(cw, cb)
        cw, cb = cw - LR * gw, cb - LR * gb
    elapsed = time.perf_counter() - start
    return elapsed, float(cost(cw[0], cb[0]))


def run_baseline(baseline, B):
    """A loop of single simulate calls with the truncflow checkout at ``baseline`` (a subprocess)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import small_problems as s, json; "
            f"import truncflow; assert truncflow.__file__.startswith({str(Path(baseline).resolve())!r}); "
            f"s.run_loop(2); print(json.dumps(s.run_loop({B})))")      # after loading the compiled kernels
    env = dict(os.environ, PYTHONPATH=str(baseline))
    # run from the baseline's folder: with "-c" the working directory comes first on sys.path
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(baseline), capture_output=True, text=True,
                         check=True)
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


#: Interleaved rounds per ensemble size: each peer's best time counts (a slow spell of this
#: shared machine falls on all of them; single timings vary by 10-30%).
ROUNDS = 3


def ensembles(max_b, baseline):
    sizes = [b for b in (1, 10, 100, 1000) if b <= max_b]
    run_ensemble(2), run_loop(2), run_numpy(2)          # compile, warm up
    peers = (("ensemble", run_ensemble), ("loop", run_loop), ("numpy", run_numpy), ("torch_vmap", run_torch))
    rows = []
    for B in sizes:
        row, best = {"B": B}, {}
        for _ in range(ROUNDS):
            for name, fn in peers:
                if name == "loop" and B > 100:
                    continue                            # a loop's rate does not depend on B: measured up to 100
                try:
                    seconds, c0 = fn(B)
                except ImportError:
                    continue
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, c0)
        for name, (seconds, c0) in best.items():
            row[name] = {"flows_per_s": B / seconds, "cost_member0": c0}
        if baseline and B <= 100:
            seconds, c0 = run_baseline(baseline, B)
            row["loop_before_issue12"] = {"flows_per_s": B / seconds, "cost_member0": c0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(result) -> str:
    """The tables of bench/SMALL_PROBLEMS.md from a result of this script."""
    out = [f"Machine: {result['machine']['cpus']} CPUs; truncflow threads {result['machine']['threads']}.", ""]
    lat = result.get("latency")
    if lat:
        out += ["### Latency (N = 16, M = 2, L = 2, layer flow, one kernel thread)", "",
                "| | idle | busy (a spinning process per core) | busy / idle | target |", "|---|---|---|---|---|"]
        rows = [("one gradient evaluation (state -> gradient vector)", "evaluate_us", "{:.1f} µs", ""),
                ("... of which the gradient kernel", "kernel_us", "{:.1f} µs", ""),
                ("... overhead around the kernel", "overhead_us", "{:.1f} µs", "≤ 20 µs"),
                ("gradient-descent steps per second", "gd_steps_per_s", "{:,.0f}", "≥ 20,000"),
                ("one evaluation made from compiled code (the steppers')", "compiled_evaluation_us", "{:.1f} µs", ""),
                ("rk45 overhead per attempted step (excl. evaluations)", "rk45_overhead_per_attempt_us",
                 "{:.1f} µs", "≤ 50 µs")]
        for label, key, fmt, target in rows:
            i, b = lat["idle"][key], lat["busy"][key]
            ratio = (i / b) if key == "gd_steps_per_s" else (b / i)
            out.append(f"| {label} | {fmt.format(i)} | {fmt.format(b)} | {ratio:.2f}× | {target} |")
        out.append("")
    out += ["### Ensembles (N = 64, M = 2, L = 2, gradient descent, 100 steps, cumulative flow)", "",
            f"Flows per second, best of {ROUNDS} interleaved rounds (ratios: truncflow.simulate_ensemble / the "
            "other).", "",
            "| B | simulate_ensemble | loop of simulate | loop of simulate before issue 12 | NumPy batched | "
            "torch.func.vmap |", "|---|---|---|---|---|---|"]
    for row in result["ensembles"]:
        e = row["ensemble"]["flows_per_s"]
        cell = lambda k: (f"{row[k]['flows_per_s']:,.0f} ({e / row[k]['flows_per_s']:.2f}×)" if k in row else "—")
        out.append(f"| {row['B']} | {e:,.0f} | {cell('loop')} | {cell('loop_before_issue12')} | {cell('numpy')} | "
                   f"{cell('torch_vmap')} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="a checkout of truncflow before issue 12 (for 'a loop of simulate today')")
    ap.add_argument("--max-b", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "small_problems.json"))
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args(argv)
    result = {"machine": {"cpus": os.cpu_count(), "threads": tf.get_threads()}}
    if not args.skip_latency:
        result["latency"] = latency()
        print(json.dumps(result["latency"], indent=1), flush=True)
    result["ensembles"] = ensembles(args.max_b, args.baseline)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
