"""pytest-benchmark suite (not part of the test run): `python -m pytest bench/ --benchmark-only`.

Groups compare truncflow with PyTorch autograd (float64, float32) on the same
network, data and number of threads. `python bench/report.py` writes the report.
"""
import numba
import pytest

import truncflow as tf
from peers import torch, torch_gradient_fn
from report import problem

SHAPES = [(10**4, 8, 3), (10**5, 8, 3), (10**6, 8, 3), (10**5, 2, 1), (10**5, 32, 8)]


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
