"""Shared helpers: a seeded random problem generator and a relative comparison; and the
line that says how many tests marked `long` the default run left out (docs/TESTING.md)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

import truncflow as tf

_long_left_out = []


def pytest_deselected(items):
    _long_left_out.extend(item for item in items if item.get_closest_marker("long"))


def pytest_terminal_summary(terminalreporter, config):
    """pyproject.toml's addopts deselect the `long` tests; say so, and how to run them."""
    if _long_left_out and config.getoption("markexpr") == "not long":
        terminalreporter.write_line(
            f"{len(_long_left_out)} deselected tests are marked long (long end-to-end and statistical "
            f"runs, left out by -m \"not long\" in pyproject.toml): python -m pytest -q -m long runs them")


@dataclass
class Problem:
    params: tf.Params
    points: np.ndarray
    labels: np.ndarray
    targets_in: np.ndarray      # (Q, M) input-space targets
    targets_out: np.ndarray | None  # (Q, P) output targets, when the params have an output layer

    def dataset(self, kind="input", points=None):
        """The Dataset; with fewer points than clusters some clusters are empty on purpose
        (the kernels must handle them), so their EmptyClusterWarning is not shown."""
        pts = self.points if points is None else points
        with warnings.catch_warnings():
            if len(self.labels) < len(self.targets_in):
                warnings.simplefilter("ignore", tf.EmptyClusterWarning)
            return tf.Dataset(pts, self.labels, self.targets_in if kind == "input" else self.targets_out)


def make_problem(seed, L=2, M=3, N=20, Q=2, P=None, scale=0.3, bias_scale=0.5, point_scale=1.0):
    """Random well-conditioned layer parameters W_l = I + scale G / sqrt(M) (G clipped to
    [-2.5, 2.5]), biases N(0, bias_scale^2), Gaussian points; every label in [0, Q)
    appears whenever N >= Q."""
    rng = np.random.default_rng(seed)
    G = np.clip(rng.standard_normal((L, M, M)), -2.5, 2.5)
    W = np.eye(M) + scale * G / np.sqrt(M)
    b = bias_scale * rng.standard_normal((L, M))
    ow = ob = t_out = None
    if P is not None:
        ow = rng.standard_normal((P, M)) / np.sqrt(M)
        ob = 0.5 * rng.standard_normal(P)
        t_out = rng.standard_normal((Q, P))
    params = tf.Params.from_layers(W, b, ow, ob)
    points = point_scale * rng.standard_normal((N, M))
    labels = rng.permutation(np.arange(N) % Q)
    t_in = rng.standard_normal((Q, M))
    return Problem(params, points, labels, t_in, t_out)


def assert_close(actual, expected, rtol=1e-12, what="", floor=0.0):
    """max|actual - expected| <= rtol * max(max|expected|, max|actual|, floor).

    ``floor`` is the scale of the terms that cancel, for arrays that may be exactly 0.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.size == 0:
        return
    err = np.max(np.abs(actual - expected))
    scale = max(np.max(np.abs(expected)), np.max(np.abs(actual)), floor)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:g} * {scale:.3e}"
