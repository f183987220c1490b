"""The local backend: every pass on this process's threads (:class:`truncflow.Dataset` is this backend).

Each pass runs the parallel kernel over the chunks of ``kernels.config`` and returns the
per-chunk partial results, or the serial kernel (the same results without a parallel region)
when the points fit one chunk. The kernels are looked up in this module at each call.
"""
from __future__ import annotations

import numpy as np

from .. import threads
from .._scratch import per_point_array
from ..kernels.gradient import gradient_kernel, gradient_kernel_serial
from ..kernels.observe import cluster_sums_kernel, observe_kernel, observe_kernel_serial
from ..kernels.statistics import statistics_kernel, statistics_kernel_serial
from .base import FROZEN_PASSES, OPERATIONS, Backend, Capabilities

__all__ = ["LocalBackend", "LOCAL"]

LOCAL = Capabilities(
    name="local", where="here", points_here=True, serial_steps=True, checkpoints=True,
    methods=frozenset({"rk45", "gd", "sgd", "events", "kinks"}), float32=True, ensembles=True,
    operations=frozenset(OPERATIONS + FROZEN_PASSES))


class LocalBackend(Backend):
    """The named operations on ``self.points`` and ``self.labels`` in this process."""

    capabilities = LOCAL

    def gradient_sums(self, arrays: tuple, output_cost: bool, n_slots: int, chunk: int) -> tuple:
        threads.apply()
        kernel = gradient_kernel if self.n_points > chunk else gradient_kernel_serial     # one chunk: no parallel region
        return kernel(self.points, self.labels, *arrays, output_cost, n_slots, chunk)

    def statistics_sums(self, arrays: tuple, output_cost: bool, n_clusters: int, second: bool, chunk: int) -> tuple:
        threads.apply()
        kernel = statistics_kernel if self.n_points > chunk else statistics_kernel_serial
        return kernel(self.points, self.labels, *arrays, output_cost, n_clusters, second, chunk)

    def cluster_sums(self, n_clusters: int, chunk: int):
        threads.apply()
        return cluster_sums_kernel(self.points, self.labels, n_clusters, chunk)

    def observe(self, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost: bool, n_clusters: int, chunk: int):
        N = self.n_points
        hashes = per_point_array(N, np.uint64)
        threads.apply()
        kernel = observe_kernel if N > chunk else observe_kernel_serial     # one chunk: no parallel region
        parts = kernel(self.points, self.labels, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost,
                       n_clusters, chunk, hashes)
        distinct = per_point_array(N, np.uint64)
        distinct[:] = hashes
        distinct.sort()                 # in place: no second copy of N hashes
        return parts, distinct, hashes

    # ------------------------------------- the kink integrator's per-point side
    def frozen_points(self, kern, chunk: int):
        from .frozen import LocalFrozenPoints
        return LocalFrozenPoints(self, kern, chunk)
