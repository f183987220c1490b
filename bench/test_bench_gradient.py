"""pytest-benchmark suite (not part of the test run): `python -m pytest bench/ --benchmark-only`.

Groups compare truncflow with PyTorch autograd (float64, float32) and vectorized
NumPy on the same network, data and number of threads: N from 1e3 to 1e7 at
M = 8, L = 3, and the grid M in {2, 8, 32} x L in {1, 3, 8} at N = 1e5.
`python bench/report.py` writes the report.
"""
import numba
import pytest

import truncflow as tf
from peers import numpy_gradient_fn, torch, torch_gradient_fn
from report import problem

SHAPES = ([(n, 8, 3) for n in (10**3, 10**4, 10**6, 10**7)]
          + [(10**5, m, l) for m in (2, 8, 32) for l in (1, 3, 8)])


@pytest.fixture(params=[1, 2], ids=lambda t: f"{t}threads")
def threads(request):
    old = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(old)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]:.0e}-M{s[1]}-L{s[2]}")
def test_truncflow_gradient(benchmark, shape, threads):
    params, data = problem(*shape)
    tf.gradient(params, data)
    benchmark.group = f"{shape}-{threads}"
    benchmark(tf.gradient, params, data)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]:.0e}-M{s[1]}-L{s[2]}")
def test_torch_gradient(benchmark, shape, dtype, threads):
    params, data = problem(*shape)
    benchmark.group = f"{shape}-{threads}"
    benchmark(torch_gradient_fn(params, data.points, data.labels, data.targets, dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"N{s[0]:.0e}-M{s[1]}-L{s[2]}")
def test_numpy_gradient(benchmark, shape, threads):
    params, data = problem(*shape)
    benchmark.group = f"{shape}-{threads}"
    benchmark(numpy_gradient_fn(params, data.points, data.labels, data.targets))
