"""Bit-packed activation patterns (n, L, W) uint64: one bit per coordinate, set = free."""
from __future__ import annotations

import numpy as np

__all__ = ["set_bit", "bit", "bits", "pack"]


def set_bit(pat_i, l, k, free):
    """A copy of one point's pattern (L, W) with coordinate (l, k) free or truncated."""
    out = pat_i.copy()
    b = np.uint64(1) << np.uint64(k % 64)
    if free:
        out[l, k // 64] |= b
    else:
        out[l, k // 64] &= ~b
    return out


def bit(pat_i, l, k):
    """Whether coordinate (l, k) of one point's pattern (L, W) is free."""
    return bool((int(pat_i[l, k // 64]) >> (k % 64)) & 1)


def bits(pats, M):
    """(n, L, M) bool: the free bits of bit-packed patterns (n, L, W)."""
    k = np.arange(M)
    words = pats[:, :, k // 64]
    return ((words >> (k % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def pack(free, n_words):
    """Bit-packed patterns (n, L, W) uint64 of free bits (n, L, M) bool (the inverse of :func:`bits`)."""
    n, L, M = free.shape
    out = np.zeros((n, L, n_words), np.uint64)
    for k in range(M):
        out[:, :, k // 64] |= free[:, :, k].astype(np.uint64) << np.uint64(k % 64)
    return out
