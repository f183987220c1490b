"""Work-precision of the flow integrators: global error at t_end vs gradient evaluations and wall time.

    python bench/work_precision.py small            # (a) N = 16..64 with sliding modes
    python bench/work_precision.py clusters         # (b) N = 2e4, three clusters, M = 4, L = 2, layer flow, t = 5
    python bench/work_precision.py default          # (c) the README's default job (150,000 points, t = 60)
    python bench/work_precision.py replot --out DIR # the PNGs again from DIR's JSONs (with gradientflow's, if there)
    python bench/work_precision.py merge A.json B.json ... --ref kinks:1e-10 --name NAME --out DIR
                                                    # one table from runs made side by side with --no-ref
    options: --rtols 1e-4,1e-6,...  --rk-rtols ...  --lrs ...  (none: "none")  --max-time S  --max-evals N (per run)
             --seeds seed:kind:N,...  (small)   --n N  --ref-rtol R  --ref-bulk  (clusters, default)  --out DIR
             --no-ref (no reference run; rows keep their final states)  --name SUFFIX (of the JSON's case name)
             --stepper auto|RK45|DOP853 (kinks' stepper; auto: RK45 down to rtol 1e-9)

    e.g. the runs behind bench/WORK_PRECISION.md:
    NUMBA_NUM_THREADS=1 python bench/work_precision.py small --seeds 0:input:32,1:output:32,2:input:16,3:output:64 \
        --lrs 4e-3,2e-3,1e-3,5e-4,2.5e-4 --max-time 60 --max-evals 300000 --out bench/work_precision
    python bench/work_precision.py clusters --n 20000 --rtols 1e-4,1e-5,1e-6,1e-7 --rk-rtols 1e-4,1e-5,1e-6,1e-7 \
        --lrs 2e-2,1e-2,5e-3 --ref-rtol 1e-8 --ref-bulk --max-time 150 --out bench/work_precision

Methods: method="kinks" at several tolerances, method="rk45" at several tolerances,
gradient descent at several step sizes. Reference: method="kinks" locating every
crossing (``KinkOptions(bulk=False)``) at the tightest tolerance (with ``--ref-bulk``: bulk
correction allowed, for large N where locating ~1e5 crossings one by one is unaffordable), cross-checked by gradient
descent converging to it at first order as the step halves (the GD errors and their
observed order are printed). Error: max-abs over the final parameters (layer form).
Writes DIR/work_precision_<case>.json and .png.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import truncflow as tf
import truncflow.engine.kinks as kinks


def small_problem(seed, N=32, M=2, L=2, kind="input"):
    rng = np.random.default_rng(seed)
    p = tf.Params.random(L, M, scale=0.5, bias_scale=0.5, out_dim=2 if kind == "output" else None, seed=seed)
    x = rng.standard_normal((N, M))
    return p, tf.Dataset(x, np.arange(N) % 2, rng.standard_normal((2, M if kind == "input" else 2)))


def clusters_problem(N=20000, seed=0):
    """Three Gaussian clusters in R^4, two random layers, input cost: hyperplanes sweep through the clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 4)) * 1.5
    x, lab = tf.gaussian_clusters(N, centers, std=0.6, seed=seed)
    p = tf.Params.random(2, 4, scale=0.3, bias_scale=0.5, seed=seed)
    return p, tf.Dataset(x, lab, centers + rng.standard_normal((3, 4)))


def final(r):
    return np.concatenate([r.weights[-1].ravel(), r.biases[-1].ravel(), r.out_weight[-1].ravel(),
                           r.out_bias[-1].ravel()])


MAX_EVALS = None


def run(params, ds, t_end, max_time, **kw):
    t0 = time.perf_counter()
    r = tf.simulate(params, ds, t_end, record_times=[t_end], max_time=max_time, max_evals=MAX_EVALS, **kw)
    wall = time.perf_counter() - t0
    return r, wall


def case(name, params, ds, t_end, rtols, rk_rtols, lrs, ref_rtol, max_time, sim_kw, out, ref_bulk=False):
    """Runs the reference (unless ref_rtol is None), then every method; errors against the reference
    (NaN without one: combine runs made separately with ``merge``). Every row keeps its final state."""
    rows = []
    load0 = os.getloadavg()
    print(f"== {name}: N = {ds.n_points}, t_end = {t_end}, load average {load0[0]:.2f}", flush=True)
    ref_row, yref = None, None
    if ref_rtol is not None:
        with kinks.using(dataclasses.replace(kinks.current(), bulk=ref_bulk)):
            ref, wall = run(params, ds, t_end, None, method="kinks", rtol=ref_rtol, atol=ref_rtol * 1e-2, **sim_kw)
        ref_row = dict(method="kinks", knob=ref_rtol, status=ref.status, evaluations=int(ref.evaluations[-1]),
                       wall=wall, bulk=ref_bulk, kinks=ref.config.get("kinks"))
        print(f"reference: kinks, {'bulk correction' if ref_bulk else 'every crossing located'}, rtol {ref_rtol}: "
              f"{ref.status} evals {ref.evaluations[-1]} {wall:.1f}s {ref.config['kinks']}", flush=True)
        yref = final(ref)

    def add(label, method, knob, r, wall):
        reached = r.status == "t_end"
        err = float(np.max(np.abs(final(r) - yref))) if reached and yref is not None else float("nan")
        row = dict(method=method, knob=knob, status=r.status, t=float(r.t[-1]), evaluations=int(r.evaluations[-1]),
                   wall=wall, error=err, kinks=r.config.get("kinks"), final=final(r).tolist() if reached else None)
        rows.append(row)
        print(f"{label:>26}: {r.status:8s} t={r.t[-1]:.4g} evals={row['evaluations']:>8d} wall={wall:7.1f}s "
              f"error={err:.3e}" + (f" ({err / knob:.3g} x rtol)" if method != "gd" and np.isfinite(err) else "")
              + (f" {r.config['kinks']}" if method == "kinks" else ""), flush=True)
    for rtol in rtols:
        r, wall = run(params, ds, t_end, max_time, method="kinks", rtol=rtol, atol=rtol * 1e-2, **sim_kw)
        add(f"kinks rtol {rtol:g}", "kinks", rtol, r, wall)
    for rtol in rk_rtols:
        r, wall = run(params, ds, t_end, max_time, method="rk45", rtol=rtol, atol=rtol * 1e-2, **sim_kw)
        add(f"rk45 rtol {rtol:g}", "rk45", rtol, r, wall)
    gd = []
    for lr in lrs:
        r, wall = run(params, ds, t_end, max_time, method="gd", lr=lr, **sim_kw)
        add(f"gd lr {lr:g}", "gd", lr, r, wall)
        gd.append(rows[-1]["error"])
    gd_order = None
    if len(gd) >= 2 and all(np.isfinite(gd)) and min(gd) > 0:
        gd_order = order = float(np.polyfit(np.log(lrs), np.log(gd), 1)[0])
        print(f"gradient descent -> reference: observed order {order:.2f} (errors {', '.join(f'{e:.2e}' for e in gd)})")
    out.mkdir(parents=True, exist_ok=True)
    load1 = os.getloadavg()
    (out / f"work_precision_{name}.json").write_text(json.dumps(dict(
        case=name, n_points=int(ds.n_points), t_end=t_end, reference_rtol=ref_rtol, reference=ref_row,
        reference_final=None if yref is None else yref.tolist(),
        gd_order=gd_order, load_average_before=load0, load_average_after=load1, cpus=os.cpu_count(),
        rows=rows), indent=1, default=float))
    if yref is not None:
        plot(name, rows, out)
    return rows


def merge(name, files, ref, out):
    """One case's table from runs made separately (``--no-ref``, one tolerance per process, so that
    they can run side by side): errors against the row ``ref`` = (method, knob) among them, which
    leaves the table; GD's observed order is refitted. Writes out/work_precision_<name>.json and .png."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    rows = [r_ for d in runs for r_ in d["rows"]]
    def matches(r_):
        stepper = (r_.get("kinks") or {}).get("stepper")
        return (r_["method"], float(r_["knob"])) == ref[:2] and (len(ref) < 3 or stepper == ref[2])
    picked = [r_ for r_ in rows if matches(r_) and r_["final"] is not None]
    if len(picked) != 1:
        raise SystemExit(f"merge: {len(picked)} finished rows match reference {ref}")
    ref_row = picked[0]
    yref = np.asarray(ref_row["final"])
    rows = [r_ for r_ in rows if r_ is not ref_row]
    for r_ in rows:
        r_["error"] = float(np.max(np.abs(np.asarray(r_["final"]) - yref))) if r_["final"] is not None else float("nan")
    rows.sort(key=lambda r_: ({"kinks": 0, "rk45": 1, "gd": 2}[r_["method"]], -float(r_["knob"])))
    gd = sorted((r_["knob"], r_["error"]) for r_ in rows if r_["method"] == "gd" and np.isfinite(r_["error"]))[:3]
    # observed order over the three smallest steps (the largest may be outside the asymptotic range)
    gd_order = float(np.polyfit(*np.log(np.array(gd)).T, 1)[0]) if len(gd) >= 2 else None
    for r_ in rows:
        print(f"{r_['method']:>6} {r_['knob']:<8g} {r_['status']:8s} evals={r_['evaluations']:>8d} "
              f"wall={r_['wall']:7.1f}s error={r_['error']:.3e}")
    print(f"reference {ref}: {ref_row['evaluations']} evals; gradient descent order {gd_order}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"work_precision_{name}.json").write_text(json.dumps(dict(
        case=name, n_points=runs[0]["n_points"], t_end=runs[0]["t_end"], reference_rtol=ref[1],
        reference={k: v for k, v in ref_row.items() if k != "final"}, reference_final=yref.tolist(),
        gd_order=gd_order, merged_from=[str(f) for f in files],
        load_average=[d["load_average_before"] for d in runs], cpus=runs[0]["cpus"], rows=rows),
        indent=1, default=float))
    plot(name, rows, out)


def plot(name, rows, out):
    """Error against evaluations and wall time, PNG next to the JSON; adds gradientflow's runs
    (bench/peer_gradientflow.py) when out/gradientflow_<name>.json exists."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    series = [(m, st, [r_ for r_ in rows if r_["method"] == m]) for m, st in
              (("kinks", "o-"), ("rk45", "s--"), ("gd", "^:"))]
    peer = out / f"gradientflow_{name}.json"
    if peer.is_file():
        prow = json.loads(peer.read_text())["rows"]
        for mode, st in (("ode", "v-."), ("backprop", "<-."), ("dout", "d-.")):
            series.append((f"gradientflow {mode}", st, [r_ for r_ in prow if r_.get("method") == mode]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, style, pts in series:
        pts = [p_ for p_ in pts if np.isfinite(p_["error"])]
        if not pts:
            continue
        for ax, key in zip(axes, ("evaluations", "wall")):
            ax.loglog([p_[key] for p_ in pts], [max(p_["error"], 1e-16) for p_ in pts], style, label=label)
    for ax, key in zip(axes, ("gradient evaluations", "wall time (s)")):
        ax.set_xlabel(key)
        ax.set_ylabel("global error at t_end")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"work-precision: {name}")
    fig.tight_layout()
    fig.savefig(out / f"work_precision_{name}.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["small", "clusters", "default", "replot", "merge"])
    ap.add_argument("files", nargs="*", help="merge: the JSONs of separate runs")
    ap.add_argument("--no-ref", action="store_true", help="no reference run: rows keep their final states for merge")
    ap.add_argument("--ref", default=None, help="merge: the reference row, method:knob[:stepper] (e.g. kinks:1e-10:DOP853)")
    ap.add_argument("--stepper", choices=["auto", "RK45", "DOP853"], default="auto",
                    help="kinks' Runge-Kutta stepper (auto: RK45 down to rtol 1e-9, DOP853 below)")
    ap.add_argument("--name", default=None, help="merge: the case name of the merged table; others: a suffix")
    ap.add_argument("--rtols", default=None)
    ap.add_argument("--max-time", type=float, default=600.0)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--max-evals", type=int, default=None, help="per run (a stalled run stops there)")
    ap.add_argument("--seeds", default="0:input:32,1:output:32",
                    help="small case: seed:kind:N,... (N = 16..64)")
    ap.add_argument("--n", type=int, default=None, help="number of points (clusters: 20,000; default: the job's 150,000)")
    ap.add_argument("--t-end", type=float, default=None, help="default case: t_end (the job's 60)")
    ap.add_argument("--ref-rtol", type=float, default=None)
    ap.add_argument("--ref-bulk", action="store_true", help="reference with bulk correction (large N)")
    ap.add_argument("--rk-rtols", default=None)
    ap.add_argument("--lrs", default=None)
    a = ap.parse_args(argv)
    global MAX_EVALS
    MAX_EVALS = a.max_evals
    # kinks picks DOP853 for rtol <= KinkOptions.dop853_below
    below = {"auto": kinks.KinkOptions().dop853_below, "DOP853": 1.0, "RK45": 0.0}[a.stepper]
    with kinks.using(kinks.KinkOptions(dop853_below=below)):
        run_cases(a)


def run_cases(a):
    """The case ``a.case`` with the parsed options ``a``."""
    out = Path(a.out)
    parse = lambda s, d: d if s is None else [float(v) for v in s.split(",") if v not in ("", "none")]
    suffix = f"_{a.name}" if a.name and a.case != "merge" else ""
    ref_rtol = lambda d: None if a.no_ref else (a.ref_rtol or d)
    if a.case == "merge":
        method, knob, *stepper = a.ref.split(":")
        merge(a.name, a.files, (method, float(knob), *stepper), out)
    elif a.case == "replot":                  # the PNGs again from the JSONs in --out
        for f in sorted(out.glob("work_precision_*.json")):
            d = json.loads(f.read_text())
            plot(d["case"], d["rows"], out)
    elif a.case == "small":
        for spec in a.seeds.split(","):
            seed, kind, n = spec.split(":")
            p, ds = small_problem(int(seed), N=int(n), kind=kind)
            case(f"small_{kind}_{seed}_N{n}{suffix}", p, ds, 3.0, parse(a.rtols, [1e-4, 1e-6, 1e-8, 1e-10]),
                 parse(a.rk_rtols, [1e-4, 1e-6, 1e-8]), parse(a.lrs, [4e-3, 2e-3, 1e-3, 5e-4]),
                 ref_rtol(1e-12), a.max_time, dict(kind=kind, wrt="layers"), out)
    elif a.case == "clusters":
        n = a.n or 20000
        p, ds = clusters_problem(N=n)
        case(f"clusters_N{n}{suffix}", p, ds, 5.0, parse(a.rtols, [1e-4, 1e-5, 1e-6]), parse(a.rk_rtols, [1e-4, 1e-6]),
             parse(a.lrs, [2e-2, 1e-2]), ref_rtol(1e-7), a.max_time, dict(wrt="layers"), out,
             ref_bulk=a.ref_bulk)
    else:
        from truncflow.config import default_config_text, parse_config
        text = default_config_text()
        if a.n:                             # the same job with more points (same clusters, same network)
            text = text.replace("n_points = 150000", f"n_points = {a.n}")
        cfg = parse_config(text, name="default")
        kw = {k: v for k, v in cfg.simulate_kwargs.items()
              if k in ("kind", "wrt", "train", "frozen_layers")}
        t_end = a.t_end or cfg.simulate_kwargs["t_end"]
        case(f"default{'' if not a.n else f'_N{a.n}'}{'' if not a.t_end else f'_t{a.t_end:g}'}{suffix}",
             cfg.params, cfg.dataset, t_end, parse(a.rtols, [1e-4, 1e-5, 1e-6]),
             parse(a.rk_rtols, [1e-5]), parse(a.lrs, [0.5, 0.25]), ref_rtol(1e-7), a.max_time, kw, out,
             ref_bulk=a.ref_bulk)


if __name__ == "__main__":
    sys.exit(main())
