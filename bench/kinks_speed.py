"""Wall time per gradient evaluation of method="kinks" against method="rk45" (issue 24 item 1).

    python bench/kinks_speed.py [--sizes 2e4 2e5 1e6] [--t-end 1.0] [--rtol 1e-6] [--profile]

For each size N: the default job's data (``truncflow/defaults/default.toml``, its clusters and
cones at N points) and the three-cluster problem of ``bench/work_precision.py`` (``clusters``),
each flowed from t = 0 to t_end by both methods at the same rtol (atol = 1e-2 rtol), one after
the other in this process, after a warm-up run that compiles every kernel. Prints, per run, the
evaluations, the wall time and the wall time per evaluation, and the ratio kinks / rk45 of the
last. ``--profile`` adds the top of a cProfile of the kinks run (where the rest goes).
Ratios from one run are the result; absolute times depend on the machine's load.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import truncflow as tf  # noqa: E402
from work_precision import clusters_problem  # noqa: E402


def default_job(N):
    """The built-in default job's params and data, at N points."""
    from truncflow.config import default_config_text, parse_config
    text = default_config_text().replace("n_points = 150000", f"n_points = {int(N)}")
    cfg = parse_config(text, source="default job")
    return cfg.params, cfg.dataset


def one(params, ds, t_end, method, rtol, profile=False):
    pr = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if pr:
        pr.enable()
    r = tf.simulate(params, ds, t_end, method=method, rtol=rtol, atol=rtol * 1e-2, record_times=[t_end])
    if pr:
        pr.disable()
    wall = time.perf_counter() - t0
    top = None
    if pr:
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(14)
        top = s.getvalue()
    return r, wall, top


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[2e4, 2e5, 1e6])
    ap.add_argument("--t-end", type=float, default=1.0)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--problems", nargs="+", default=["default", "clusters"])
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    print(f"threads {tf.get_threads()}, load average {os.getloadavg()[0]:.2f}, rtol {a.rtol:g}, t_end {a.t_end:g}")
    warm = default_job(2000)
    for m in ("kinks", "rk45"):
        one(*warm, 0.05, m, a.rtol)
    for name in a.problems:
        for N in a.sizes:
            params, ds = default_job(N) if name == "default" else clusters_problem(int(N))
            per = {}
            for m in ("rk45", "kinks"):
                r, wall, top = one(params, ds, a.t_end, m, a.rtol, a.profile and m == "kinks")
                ev = int(r.evaluations[-1])
                per[m] = wall / max(ev, 1)
                print(f"{name:8s} N={int(N):>9,d} {m:5s} {r.status:6s} t={r.t[-1]:.3g} evals={ev:6d} "
                      f"wall={wall:8.2f}s per eval={1e3 * per[m]:8.3f} ms", flush=True)
                if top:
                    print("\n".join(top.splitlines()[:32]))
            print(f"{name:8s} N={int(N):>9,d} kinks/rk45 per evaluation: {per['kinks'] / per['rk45']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
