"""The cluster statistics' moment sums on the GPU (``kernels.statistics``): their entries.

The statistics pass is the gradient kernel of :mod:`.gradient` with ``moments`` set:
per layer l its owner threads also sum, per cluster, over the layer's input images
z = x~^(l) split by the cone coordinates a = W^(l+1) z + b^(l+1) (a_k <= 0: truncated),
the entries m of
    truncated (M)      number of points with a_k <= 0
    free1, con1 (M, M) [k, j] sum of z_j over the points with a_k > 0, resp. a_k <= 0
    free2, con2 (M, M, M) [k, i, j] sum of z_i z_j likewise, j >= i only (second moments)
laid out in a row by ``gradient.layout``. This module maps an entry to its offset and
gives a point's term; counts are exact float64 sums.
"""
import numpy as np

from .launch import device_function


@device_function
def moment_dest(m, l, M, o_tr, o_f1, o_c1, o_f2, o_c2):
    """Moment entry m of layer l -> its offset in a row (-1: the lower triangle of a second moment)."""
    if m < M:
        return o_tr + l * M + m
    m -= M
    if m < M * M:
        return o_f1 + l * M * M + m
    m -= M * M
    if m < M * M:
        return o_c1 + l * M * M + m
    m -= M * M
    base = o_f2
    if m >= M * M * M:
        m -= M * M * M
        base = o_c2
    i = (m // M) % M
    j = m % M
    if j < i:
        return -1
    return base + l * M * M * M + m


@device_function
def moment_term(m, l, M, zg, ag, tt, zero):
    """Point tt's term of moment entry m of layer l (counts, then free1, con1, free2, con2)."""
    if m < M:
        return 1.0 if ag[l, m, tt] <= zero else 0.0
    m -= M
    if m < 2 * M * M:
        k = (m // M) % M
        j = m % M
        free = ag[l, k, tt] > zero
        if (m < M * M) == free:
            return np.float64(zg[l, j, tt])
        return 0.0
    m -= 2 * M * M
    k = (m // (M * M)) % M
    i = (m // M) % M
    j = m % M
    free = ag[l, k, tt] > zero
    if (m < M * M * M) == free:
        return np.float64(zg[l, i, tt] * zg[l, j, tt])
    return 0.0
