"""The local backend: every pass on this process's threads (:class:`truncflow.Dataset` is this backend).

Each pass runs the parallel kernel over the chunks of ``kernels.config`` and returns the
per-chunk partial results, or the serial kernel (the same results without a parallel region)
when the points fit one chunk. The kernels are looked up in this module at each call.
"""
from __future__ import annotations

import numpy as np

from .. import threads
from .._scratch import per_point_array
from ..kernels.forward import patterns_kernel
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

    # ------------------------------------- the kink integrator's frozen-pattern passes
    # (``kernels.crossing`` is imported at the first of them: only method="kinks" compiles it)
    def patterns(self, cw, cb, edges_t, chunk: int):
        return patterns_kernel(self.points, cw, cb, edges_t, chunk)

    def subset_patterns(self, idx, cw, cb, edges_t, chunk: int):
        return patterns_kernel(np.ascontiguousarray(self.points[idx]), cw, cb, edges_t, chunk)

    def frozen_gradient(self, patterns, *args):
        from ..kernels.crossing import frozen_gradient_kernel
        return frozen_gradient_kernel(self.points, self.labels, patterns, *args)

    def subset_contributions(self, idx, *args):
        from ..kernels.crossing import subset_contributions_kernel
        return subset_contributions_kernel(self.points, self.labels, np.asarray(idx, np.int64), *args)

    def preacts_jvp(self, patterns, *args):
        from ..kernels.crossing import preacts_jvp_kernel
        return preacts_jvp_kernel(self.points, patterns, *args)

    def subset_preacts(self, idx, *args):
        from ..kernels.crossing import subset_preacts_kernel
        return subset_preacts_kernel(self.points, np.asarray(idx, np.int64), *args)

    def subset_jvp(self, idx, *args):
        from ..kernels.crossing import subset_jvp_kernel
        return subset_jvp_kernel(self.points, np.asarray(idx, np.int64), *args)
