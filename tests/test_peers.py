"""The benchmark's peers (bench/peers.py) compute the same gradient as truncflow.

A ratio against a peer means something only if the peer does the same work and gets
the same answer: NumPy to round-off, PyTorch float64 to round-off, float32 to its
precision.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf

# bench/peers.py loaded from its file: bench/ is not put on sys.path, where its
# distributed.py would hide the Dask package from everything imported later
# (Dask's worker processes too)
_spec = importlib.util.spec_from_file_location("peers", Path(__file__).resolve().parents[1] / "bench" / "peers.py")
_peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_peers)
numpy_gradient_fn, torch, torch_gradient_fn = _peers.numpy_gradient_fn, _peers.torch, _peers.torch_gradient_fn


def problem():
    rng = np.random.default_rng(5)
    params = tf.Params.random(3, 5, scale=0.5, bias_scale=0.3, seed=5)
    data = tf.Dataset(rng.standard_normal((700, 5)), rng.integers(0, 3, 700), rng.standard_normal((3, 5)))
    return params, data


def check(peer, params, data, rtol):
    cost, grad = tf.gradient(params, data)
    c, gw, gb = peer()
    gw, gb = (np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64) for a in (gw, gb))
    scale = max(np.abs(grad.weights).max(), np.abs(grad.biases).max())
    assert abs(c - cost) <= rtol * cost
    assert np.abs(gw - grad.weights).max() <= rtol * scale
    assert np.abs(gb - grad.biases).max() <= rtol * scale


def test_numpy_peer_matches_truncflow():
    params, data = problem()
    check(numpy_gradient_fn(params, data.points, data.labels, data.targets), params, data, 1e-12)


@pytest.mark.torch
@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-3)])
def test_torch_peer_matches_truncflow(dtype, rtol):
    params, data = problem()
    check(torch_gradient_fn(params, data.points, data.labels, data.targets, dtype), params, data, rtol)
