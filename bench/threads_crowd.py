"""Per-process throughput when processes share the cores (issue 12, item 2).

    python bench/threads_crowd.py [--n 100000] [--seconds 10]

Gradients of N points (M = 4, L = 2, input cost) in a loop for a fixed wall time, in:
  alone      one process, truncflow's default threads;
  crowd      as many processes as the process may use CPUs, all at once, default threads each
             (each sees the whole affinity mask: the oversubscribed case);
  crowd, 1   the same processes with ``truncflow.set_threads(1)`` each.
Prints gradients per second per process and the ratios to ``alone`` (one run; ratios, not times).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time, numpy as np, truncflow as tf
n, seconds, threads = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if threads != "default":
    tf.set_threads(int(threads))
rng = np.random.default_rng(0)
p = tf.Params.random(2, 4, seed=0)
ds = tf.Dataset(rng.standard_normal((n, 4)), np.arange(n) % 3, rng.standard_normal((3, 4)))
tf.gradient(p, ds)                         # compile / load the cache
start = float(sys.argv[4])
while time.time() < start:                 # all workers start together
    time.sleep(0.001)
count, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    tf.gradient(p, ds)
    count += 1
print(json.dumps(dict(rate=count / (time.perf_counter() - t0), threads=tf.get_threads())))
"""


def run(n_proc, n, seconds, threads):
    start = time.time() + 8.0
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n), str(seconds), threads, str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(n_proc)]
    return [json.loads(p.communicate()[0]) for p in procs]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    alone = run(1, a.n, a.seconds, "default")[0]
    print(f"N = {a.n}, {cpus} CPUs; load average {os.getloadavg()[0]:.2f}")
    print(f"alone ({alone['threads']} threads): {alone['rate']:.1f} gradients/s")
    for label, threads in (("crowd, default threads", "default"), ("crowd, 1 thread each", "1")):
        rows = run(cpus, a.n, a.seconds, threads)
        rates = [r["rate"] for r in rows]
        print(f"{label} ({cpus} processes, {rows[0]['threads']} threads each): per process "
              f"{', '.join(f'{r:.1f}' for r in rates)} gradients/s = {min(rates) / alone['rate']:.2f}-"
              f"{max(rates) / alone['rate']:.2f} x alone; all together {sum(rates) / alone['rate']:.2f} x alone")


if __name__ == "__main__":
    sys.exit(main())
