"""Forward kernels: truncation maps and activation patterns (MODEL.md section 3).

Notation for every kernel in this package (all float64 unless said):
    points   (N, M)     float32 or float64, any layout
    cw       (L, M, M)  cumulative weights W^(l)
    cb       (L, M)     cumulative biases  b^(l)
    edges_t  (L, M, M)  edges_t[l, k, :] = v_k^(l), the k-th column of (W^(l))^-1
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def forward_point(x, cw, cb, edges_t, n_layers, images, acts):
    """Images and cumulative pre-activations of one point through ``n_layers`` layers.

    Writes ``images[0] = x``, ``images[l + 1] = tau^(l+1)(images[l])`` and
    ``acts[l] = W^(l+1) images[l] + b^(l+1)``. A coordinate with ``a_k <= 0`` is
    truncated: ``tau(z) = z - sum_{k: a_k <= 0} a_k v_k``, which equals
    ``W^-1 (sigma(W z + b) - b)`` and leaves a free point exactly where it is.
    """
    M = x.shape[0]
    for j in range(M):
        images[0, j] = x[j]
    for l in range(n_layers):
        for k in range(M):
            s = cb[l, k]
            for j in range(M):
                s += cw[l, k, j] * images[l, j]
            acts[l, k] = s
        for j in range(M):
            images[l + 1, j] = images[l, j]
        for k in range(M):
            a = acts[l, k]
            if a <= 0.0:
                for j in range(M):
                    images[l + 1, j] -= a * edges_t[l, k, j]


@njit(parallel=True, **JIT_OPTIONS)
def truncate_kernel(points, cw, cb, edges_t, n_layers, chunk):
    """Images ``x~^(n_layers)`` of all points: (N, M) float64."""
    N, M = points.shape
    out = np.empty((N, M))
    n_chunks = (N + chunk - 1) // chunk
    for c in prange(n_chunks):
        images = np.empty((n_layers + 1, M))
        acts = np.empty((max(n_layers, 1), M))
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            forward_point(points[i], cw, cb, edges_t, n_layers, images, acts)
            for j in range(M):
                out[i, j] = images[n_layers, j]
    return out


@njit(parallel=True, **JIT_OPTIONS)
def patterns_kernel(points, cw, cb, edges_t, chunk):
    """Bit-packed activation patterns: (N, L, ceil(M/64)) uint64.

    Bit ``k % 64`` of word ``k // 64`` is set when coordinate k is free (``a_k > 0``).
    """
    N, M = points.shape
    L = cw.shape[0]
    out = np.zeros((N, L, (M + 63) // 64), dtype=np.uint64)
    n_chunks = (N + chunk - 1) // chunk
    for c in prange(n_chunks):
        images = np.empty((L + 1, M))
        acts = np.empty((L, M))
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            _pattern_point(points[i], cw, cb, edges_t, images, acts, out[i])
    return out


@njit(**JIT_OPTIONS)
def patterns_serial(points, cw, cb, edges_t):
    """``patterns_kernel`` in the calling thread (per point, the same bits): a Dask partition's pass."""
    N, M = points.shape
    L = cw.shape[0]
    out = np.zeros((N, L, (M + 63) // 64), dtype=np.uint64)
    images = np.empty((L + 1, M))
    acts = np.empty((L, M))
    for i in range(N):
        _pattern_point(points[i], cw, cb, edges_t, images, acts, out[i])
    return out


@njit(**JIT_OPTIONS)
def _pattern_point(x, cw, cb, edges_t, images, acts, out):
    """One point's bit-packed pattern into out (L, W) (zeroed), images and acts work buffers."""
    L, M, _ = cw.shape
    forward_point(x, cw, cb, edges_t, L, images, acts)
    for l in range(L):
        for k in range(M):
            if acts[l, k] > 0.0:
                out[l, k // 64] |= np.uint64(1) << np.uint64(k % 64)
