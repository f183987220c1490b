"""pytest-benchmark suite for the whole-run targets (not part of the test run).

`python -m pytest bench/test_bench_system.py --benchmark-only`: peak memory of one
gradient, a second process's start-up to its first gradient, and time to solution
(rk45 against fixed-step gradient descent). Each reuses the measurement of
`bench/report.py` and stores its figure in the benchmark's extra_info.
"""
from report import peak_memory, startup_time, time_to_solution


def test_peak_memory(benchmark):
    ratio, inputs = benchmark.pedantic(peak_memory, args=(10**6, 8, 3), rounds=1, iterations=1)
    benchmark.extra_info.update(ratio=ratio, input_bytes=inputs)
    assert ratio <= 1.2


def test_startup(benchmark):
    seconds = benchmark.pedantic(startup_time, rounds=3, iterations=1)
    benchmark.extra_info["seconds"] = seconds
    assert seconds < 2.0


def test_time_to_solution(benchmark):
    tts = benchmark.pedantic(time_to_solution, kwargs=dict(n=5000), rounds=1, iterations=1)
    (_, evaluations, _), steps = tts["rk45"], tts["gd"][3]
    benchmark.extra_info.update(rk45_evaluations=evaluations, gd_steps=steps)
    assert steps >= 20 * evaluations
