"""The kernels' parameter layouts: the arrays a pass over the points takes, built from :class:`Params`.

Shared by the science layer (``compute``, ``statistics``, ``observe``, ``engine``) and the
backends (``truncflow.backends``), which is why it sits below both: it imports nothing of
truncflow but the kernels' tile width. ``truncflow.compute`` re-exports every name.
"""
from __future__ import annotations

import numpy as np

from .kernels.gradient import BLOCK

__all__ = ["kernel_arrays", "padded_width", "pad_to_width", "tile_arrays", "sweep_arrays"]


def kernel_arrays(params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cw, cb, edges_t) as C-contiguous writable float64, the kernels' parameter layout."""
    edges_t = np.array(np.swapaxes(params.inverses, 1, 2), order="C")     # a copy even where M = 1
    return np.array(params.cum_weights), np.array(params.cum_biases), edges_t


def padded_width(width: int) -> int:
    """M rounded up to a multiple of ``kernels.gradient.BLOCK``: the tiled kernels' width."""
    return -(-int(width) // BLOCK) * BLOCK


def pad_to_width(a, width: int, axes: tuple) -> np.ndarray:
    """A new C-contiguous float64 copy of ``a`` whose ``axes`` are zero-padded to ``width``."""
    a = np.asarray(a, dtype=np.float64)
    out = np.zeros([width if ax in axes else n for ax, n in enumerate(a.shape)])
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def tile_arrays(params, targets: np.ndarray, kind: str) -> tuple[np.ndarray, ...]:
    """The tiled kernels' arrays (``kernels.gradient``), zero-padded to width Mp.

    Mp is M rounded up to a multiple of ``kernels.gradient.BLOCK``. Returns float64
    C-contiguous (targets, cw, cb, inv, back, out_w, out_b): targets (Q, Mp) for the
    input cost or (Q, P) unchanged for the output cost; cw, inv (L, Mp, Mp) = W^(l),
    A^(l) = (W^(l))^-1; cb (L, Mp); back (L, Mp, Mp) the reverse sweep's matrices,
    W_(l+1)^T (layer matrices) for l < L - 1 and A^(L)^T last; out_w (P, Mp) and
    out_b (P,) (P = 0 for the input cost). Padded entries are zero, so padded
    coordinates of every image stay zero.
    """
    M = params.width
    Mp = padded_width(M)
    pad = lambda a, axes: pad_to_width(a, Mp, axes)

    cw = pad(params.cum_weights, (1, 2))
    inv = pad(params.inverses, (1, 2))
    if kind == "output":
        out_w, out_b, targets = pad(params.out_weight, (1,)), np.array(params.out_bias), np.array(targets)
    else:
        out_w, out_b, targets = np.zeros((0, Mp)), np.zeros(0), pad(targets, (1,))
    back = np.concatenate([pad(params.weights[1:], (1, 2)), inv[-1:]]).swapaxes(1, 2)
    return (targets, cw, pad(params.cum_biases, (1,)), inv, np.ascontiguousarray(back), out_w, out_b)


def sweep_arrays(arrays: tuple, precision: str) -> tuple:
    """The tiled kernels' float arrays (``tile_arrays``) in the precision of the per-point
    sweep: unchanged for "float64", cast (rounded to nearest) for "float32". The kernels
    compile one version per dtype and run the sweep in the dtype of these arrays."""
    if precision == "float64":
        return arrays
    return tuple(np.ascontiguousarray(a, dtype=np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float64
                 else a for a in arrays)
