"""Problem builders shared by several test modules (NumPy only, no torch)."""
from __future__ import annotations

import numpy as np

import truncflow as tf


def rotation(M, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((M, M)))
    return q * np.sign(np.diag(r))


def one_layer_problem(M=3, N=60, Q=3, seed=0):
    """One aligned layer, Q clusters sharing every coordinate, thresholds inside the data."""
    rng = np.random.default_rng(seed)
    R = rotation(M, seed)[None]
    x = rng.standard_normal((N, M))
    labels = np.arange(N) % Q
    targets = 2 * rng.standard_normal((Q, M))
    lam = rng.uniform(0.5, 2.0, (1, M))
    t = np.quantile(x @ R[0].T, 0.3, axis=0)[None]
    return tf.Params.aligned(R, lam, -lam * t), tf.Dataset(x, labels, targets)


def separated_problem(seed=1, n=80):
    """Two aligned layers, two clusters: layer 1 truncates only cluster 0, layer 2 only
    cluster 1 (its frame is a reflection turned by 0.2 rad, so cluster 1 lies below)."""
    rng = np.random.default_rng(seed)
    c, s = np.cos(0.2), np.sin(0.2)
    R = np.stack([np.eye(2), -np.array([[c, -s], [s, c]])])
    x = np.concatenate([0.5 * rng.standard_normal((n, 2)), 5 + 0.5 * rng.standard_normal((n, 2))])
    labels = np.repeat([0, 1], n)
    targets = np.array([[1.0, 1.0], [3.0, 3.0]])
    t = np.stack([np.full(2, -0.5), (x[labels == 1] @ R[1].T).min(axis=0) + 0.3])
    lam = np.array([[1.0, 1.5], [3.0, 2.5]])
    return tf.Params.aligned(R, lam, -lam * t), tf.Dataset(x, labels, targets)
