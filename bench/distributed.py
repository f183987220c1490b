"""The Dask backend (issue 14): per-evaluation overhead, time per point with the data on disk,
memory of an out-of-core run, and a model for 10^9 points.

    python bench/distributed.py [--max-disk-n 100000000] [--out bench/distributed.json]

Needs ``pip install ".[distributed]"``. On this machine (2 cores):

1. Per evaluation of a flow's gradient (``FlowProblem.evaluate``: state -> gradient
   vector) at N = 10^5, 10^6, 10^7 (M = 8, L = 3, float32 points): one process with
   2 kernel threads against a ``LocalCluster`` of 2 worker processes x 1 thread (the
   same machine). Overhead = distributed time minus the one-process time.
2. The points in a ``.npy`` file on disk (float32, M = 8), N up to ``--max-disk-n``:
   the time per point of a gradient on the cluster, the workers reading their rows
   from the file (memory-mapped) and persisting them.
3. Out of core on one process: ``truncflow run`` on an ``.npy`` table (memory-mapped);
   the anonymous memory of the process (RssAnon: what it allocated, not the file's
   pages the kernel maps in and drops at will) sampled every 20 ms, against the file.
4. A model, not a measurement: time per evaluation at N = 10^9 on W workers =
   (per-point time of one worker thread) * N / W + (measured per-evaluation overhead).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this file is bench/distributed.py: keep "import distributed" from importing it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import truncflow as tf  # noqa: E402
from truncflow.engine.rhs import FlowProblem  # noqa: E402

M, L = 8, 3


def problem(N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, M), dtype=np.float32)
    lab = rng.integers(0, 4, N)
    return x, lab, rng.standard_normal((4, M)), tf.Params.random(L, M, seed=1)


def per_evaluation(dataset, params, min_seconds=2.0, min_calls=3):
    pr = FlowProblem(params, dataset)
    y = pr.pack(params)
    pr.evaluate(y)                                   # warm (compiles on the workers too)
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        pr.evaluate(y)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def overhead(client, sizes):
    rows = []
    for N in sizes:
        x, lab, tgt, p = problem(N)
        local = per_evaluation(tf.Dataset(x, lab, tgt), p)
        dist = tf.distribute(x, lab, tgt, client)
        d = per_evaluation(dist, p)
        rows.append(dict(N=N, one_process_s=local, cluster_s=d, overhead_s=d - local,
                         partitions=dist.n_partitions))
        print(json.dumps(rows[-1]), flush=True)
        del dist
    return rows


def on_disk(client, sizes, folder: Path):
    rows = []
    for N in sizes:
        path = folder / f"x{N}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N, M))
        rng = np.random.default_rng(N)
        for a in range(0, N, 10**7):                 # written in blocks: never all in memory here
            b = min(N, a + 10**7)
            out[a:b] = rng.standard_normal((b - a, M), dtype=np.float32)
        out.flush()
        del out
        lab = np.random.default_rng(1).integers(0, 4, N)
        _, _, tgt, p = problem(10)
        started = time.perf_counter()
        dist = tf.distribute(np.load(path, mmap_mode="r"), lab, tgt, client)
        load = time.perf_counter() - started
        t = per_evaluation(dist, p, min_seconds=5.0)
        rows.append(dict(N=N, file_bytes=path.stat().st_size, distribute_s=load, evaluation_s=t,
                         ns_per_point=t / N * 1e9))
        print(json.dumps(rows[-1]), flush=True)
        del dist
        client.run(lambda: __import__("gc").collect())
        path.unlink()
    return rows


_JOB = """
seed = 0
[data]
source = "file"
path = "{path}"
targets = "means"
[network]
init = "random"
layers = 2
[flow]
method = "gd"
lr = 0.05
t_end = 0.15
[record]
n_records = 2
"""


def _anon_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def out_of_core(N, folder: Path):
    """``truncflow run`` on an (N, 3) float64 table: RssAnon sampled, against the file size."""
    path = folder / "table.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(N, 3))
    rng = np.random.default_rng(0)
    for a in range(0, N, 10**7):
        b = min(N, a + 10**7)
        lab = rng.integers(0, 2, b - a)
        out[a:b, :2] = rng.standard_normal((b - a, 2)) + 3.0 * lab[:, None]
        out[a:b, 2] = lab
    out.flush()
    del out
    job = folder / "job.toml"
    job.write_text(_JOB.format(path=path))
    proc = subprocess.Popen([sys.executable, "-m", "truncflow", "run", str(job), "--out", str(folder / "out"),
                             "--overwrite", "-q"])
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, _anon_kb(proc.pid))
        except OSError:
            break
        time.sleep(0.02)
    row = dict(N=N, file_bytes=path.stat().st_size, peak_rss_anon_bytes=peak * 1024,
               labels_int64_bytes=8 * N, exit_code=proc.returncode)
    print(json.dumps(row), flush=True)
    path.unlink()
    return row


def model(over, disk):
    """Time per evaluation at N = 10^9 on W workers, from the per-point time of one worker
    thread (the disk runs: 2 worker threads) and the largest measured overhead."""
    per_point_thread = 2 * disk[-1]["evaluation_s"] / disk[-1]["N"]
    o = max(r["overhead_s"] for r in over)
    return [dict(workers=W, seconds_per_evaluation=per_point_thread * 1e9 / W + o,
                 per_point_thread_ns=per_point_thread * 1e9, overhead_s=o) for W in (32, 256)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-disk-n", type=int, default=10**8)
    parser.add_argument("--out-of-core-n", type=int, default=10**8)
    parser.add_argument("--out", default=str(Path(__file__).with_name("distributed.json")))
    args = parser.parse_args(argv)
    import distributed
    result = {"machine": f"{os.cpu_count()} CPUs", "M": M, "L": L}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        result["out_of_core"] = out_of_core(args.out_of_core_n, Path(tmp))
        tf.set_threads(2)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=50) as cluster, distributed.Client(cluster) as client:
            result["overhead"] = overhead(client, [10**5, 10**6, 10**7])
            sizes = [n for n in (10**6, 10**7, 10**8) if n <= args.max_disk_n]
            result["on_disk"] = on_disk(client, sizes, Path(tmp))
    result["model_1e9"] = model(result["overhead"], result["on_disk"])
    print(json.dumps(result["model_1e9"]))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
