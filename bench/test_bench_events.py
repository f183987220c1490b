"""pytest-benchmark suite for the exact event-driven solver (not part of the test run).

`python -m pytest bench/test_bench_events.py --benchmark-only`: one aligned layer,
M = 8, one Gaussian cluster with its target beyond the data (every point is
truncated along the way: about N events per coordinate), biases only, two records.
The solver sorts once (O(N log N)) and then handles each event in O(1); the time
per point should stay nearly flat from N = 1e4 to 1e6.
"""
import numpy as np
import pytest

import truncflow as tf


def aligned_problem(n_points, M=8, seed=0):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((M, M)))
    frames = (q * np.sign(np.diag(r)))[None]
    points = rng.standard_normal((n_points, M))
    data = tf.Dataset(points, np.zeros(n_points, dtype=np.int64), np.full((1, M), 4.0) @ frames[0])
    t0 = np.quantile(points @ frames[0].T, 0.05, axis=0)[None]
    return tf.Params.aligned(frames, np.ones((1, M)), -t0), data


@pytest.mark.parametrize("n_points", [10**4, 10**5, 10**6], ids=lambda n: f"N{n:.0e}")
def test_events_solver(benchmark, n_points):
    params, data = aligned_problem(n_points)
    run = lambda: tf.simulate(params, data, 200.0, wrt="aligned", method="events", train="biases",
                              record_times=[0.0, 200.0])
    result = run()
    assert result.steps_accepted[-1] > 0.9 * n_points * 8     # nearly every point crosses
    benchmark.group = "events"
    benchmark(run)
