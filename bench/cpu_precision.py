"""precision="float32" on the CPU: time of a gradient pass against float64, and its error.

    python bench/cpu_precision.py [--out bench/cpu_precision.json]

N = 10^6 points (float32 and float64 data), M = 8 and 32, L = 3, on this machine's
cores; median of 5 passes after a warm-up. The error is the largest relative
difference of cost and dC/dW to the float64 result on the same data.
"""
import argparse
import json
import statistics
import time

import numpy as np

import truncflow as tf


def timed(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10**6)
    ap.add_argument("--out")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for M in (8, 32):
        L = 3
        params = tf.Params.from_layers(np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M),
                                       0.3 * rng.standard_normal((L, M)))
        for dtype in (np.float64, np.float32):
            ds = tf.Dataset(rng.standard_normal((args.n, M)).astype(dtype), np.arange(args.n) % 4,
                            rng.standard_normal((4, M)))
            t64 = timed(lambda: tf.gradient(params, ds))
            t32 = timed(lambda: tf.gradient(params, ds, precision="float32"))
            c64, g64 = tf.gradient(params, ds)
            c32, g32 = tf.gradient(params, ds, precision="float32")
            err = max(abs(c32 - c64) / c64, float(np.abs(g32.weights - g64.weights).max() / np.abs(g64.weights).max()))
            row = dict(N=args.n, M=M, L=L, points=np.dtype(dtype).name, float64_ms=t64 * 1e3, float32_ms=t32 * 1e3,
                       speedup=t64 / t32, rel_error=err, threads=tf.get_threads())
            rows.append(row)
            print(f"M={M:2d} {row['points']} points: float64 {row['float64_ms']:.1f} ms, float32 {row['float32_ms']:.1f} "
                  f"ms, speed-up {row['speedup']:.2f}x, relative error {err:.1e}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
