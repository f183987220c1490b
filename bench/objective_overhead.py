"""The per-call cost of truncflow.Objective against truncflow.gradient (issue 25 item 1).

    python bench/objective_overhead.py [--n 16] [--m 2] [--layers 2] [--calls 20000] [--rounds 5]

At N = 16 points a call is almost all overhead (the pass over the points is a few
microseconds), so the time per call *is* the overhead. Timed, one kernel thread, the best
of ``--rounds`` interleaved rounds of ``--calls`` calls each:

  - ``tf.gradient(params, dataset, wrt=...)``: the public function on a Params;
  - ``objective.value_and_grad(x, out=buf)``: the flat-vector objective;
  - ``objective.value_and_grad(x)``: the same, the gradient a new array;
  - ``objective.unpack(x)`` then ``tf.gradient``: what a caller without Objective would do
    with a vector (for scale).

Prints the times in microseconds and the ratio Objective / gradient (issue 25 asks for it
to be at most 2). No assertion: timings are a measurement, not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import truncflow as tf
from truncflow.objective import Objective


def per_call(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="points (default 16)")
    ap.add_argument("--m", type=int, default=2, help="width M (default 2)")
    ap.add_argument("--layers", type=int, default=2, help="layers L (default 2)")
    ap.add_argument("--calls", type=int, default=20000, help="calls per round (default 20000)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds, best kept (default 5)")
    ap.add_argument("--wrt", default="layers", choices=("cumulative", "layers"))
    args = ap.parse_args(argv)

    tf.set_threads(1)
    rng = np.random.default_rng(0)
    M, L, N = args.m, args.layers, args.n
    points = rng.standard_normal((N, M))
    labels = np.arange(N) % 2
    data = tf.Dataset(points, labels, rng.standard_normal((2, M)))
    params = tf.Params.from_layers(np.eye(M) + 0.2 * rng.standard_normal((L, M, M)), 0.3 * rng.standard_normal((L, M)))
    obj = Objective(params, data, wrt=args.wrt)
    x, buf = obj.pack(params), np.empty(obj.size)

    cases = {
        "tf.gradient(params, data)": lambda: tf.gradient(params, data, wrt=args.wrt),
        "Objective.value_and_grad(x, out=buf)": lambda: obj.value_and_grad(x, out=buf),
        "Objective.value_and_grad(x)": lambda: obj.value_and_grad(x),
        "tf.gradient(objective.unpack(x), data)": lambda: tf.gradient(obj.unpack(x), data, wrt=args.wrt),
    }
    for fn in cases.values():             # compile, warm up
        fn()
    best = {name: np.inf for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], per_call(fn, args.calls))

    print(f"N = {N}, M = {M}, L = {L}, wrt = {args.wrt}, 1 thread, best of {args.rounds} rounds of "
          f"{args.calls} calls")
    for name, t in best.items():
        print(f"  {name:42s} {t * 1e6:8.2f} us/call")
    ratio = best["Objective.value_and_grad(x, out=buf)"] / best["tf.gradient(params, data)"]
    ratio_new = best["Objective.value_and_grad(x)"] / best["tf.gradient(params, data)"]
    print(f"ratio Objective.value_and_grad(x, out=buf) / tf.gradient = {ratio:.3f}  (issue 25: <= 2)")
    print(f"ratio Objective.value_and_grad(x) / tf.gradient          = {ratio_new:.3f}")
    return ratio


if __name__ == "__main__":
    main()
