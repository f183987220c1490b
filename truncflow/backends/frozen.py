"""The per-point side of the kink integrator: the frozen patterns and the passes over all points.

The kink-exact integrator (``engine.kinks``) holds one activation pattern per point, frozen
over a step, and asks four questions of all the points at once; everything else it does
concerns a few flagged points, whose rows it brings to where it runs. A backend gives it
the per-point side through ``dataset.frozen_points(kern, chunk)``: an object with

  pattern(idx) -> (n, L, W) uint64          a copy of the listed points' patterns
  set_pattern(idx, pats)                     change them (idx distinct)
  whole_pattern() / restore_pattern(pat)     all N patterns (checkpoints)
  data(idx) -> (points, labels, rows)        arrays that hold the listed points, and their rows
                                             in them: the subset kernels' first arguments
  frozen_gradient(tiles, output, chunk)      per-chunk sums of the frozen-pattern gradient and
                                             the points whose signs differ from their patterns
  ends(kern, tangent) -> handle              pre-activations and their rates at all points
  dips(ends0, ends1, h, margin) -> idx       points whose Hermite path dips to a hyperplane
  flips(kern, tangent) -> idx                points whose first-order signs differ from their pattern
  near_planes(kern, tangent, planes, extra, rel) -> (zero, near, rows)
                                             points on the listed hyperplanes to round-off

Every index list that comes back is sorted int64; every pass gives the same bits on every
backend (one process: the parallel kernels; a Dask cluster: their serial twins, partition by
partition, ``backends.dask_frozen``). :class:`LocalFrozenPoints` is the one for points in
this process.
"""
from __future__ import annotations

import numpy as np

from ..kernels import config
from ..kernels.forward import patterns_kernel

__all__ = ["LocalFrozenPoints", "KeptRows", "flipped", "near_plane_rows"]


def flipped(a, da, pat):
    """Rows of a, da (n, L, M) whose first-order signs (a + da > 0) differ from the patterns pat (n, L, W)."""
    from ..engine.kinks.bits import bits       # noqa: PLC0415 (the engine imports the backends)
    return np.flatnonzero(np.any(((a + da) > 0) != bits(pat, a.shape[2]), axis=(1, 2)))


def near_plane_rows(a, planes, zero):
    """Per hyperplane (l, k) of ``planes``: the rows of a (n, L, M) with |a[:, l, k]| <= zero."""
    return {(l, k): np.flatnonzero(np.abs(a[:, l, k]) <= zero) for (l, k) in planes}


class LocalFrozenPoints:
    """The frozen patterns of points in this process, and the passes over them (parallel kernels).

    dataset: a :class:`truncflow.Dataset`; kern: the kernels' (cw, cb, edges_t) at the start;
    chunk: the chunking of the per-point passes (``kernels.config.chunk_size``)."""

    def __init__(self, dataset, kern, chunk):
        self.points, self.labels = dataset.points, dataset.labels
        self.n_points = dataset.n_points
        self.chunk = chunk
        self._pat = patterns_kernel(self.points, *kern, chunk)

    # ------------------------------------------------------------ patterns
    def pattern(self, idx):
        return self._pat[np.asarray(idx, np.int64)]

    def set_pattern(self, idx, pats):
        self._pat[np.asarray(idx, np.int64)] = pats

    def whole_pattern(self):
        return self._pat.copy()

    def restore_pattern(self, pat):
        self._pat[...] = pat

    def data(self, idx):
        return self.points, self.labels, np.asarray(idx, np.int64)

    # ------------------------------------------------- passes over all points
    def frozen_gradient(self, tiles, output, chunk):
        from ..kernels.crossing import frozen_gradient_kernel
        *sums, mismatch = frozen_gradient_kernel(self.points, self.labels, self._pat, *tiles, output, 1, chunk)
        return tuple(sums), np.flatnonzero(mismatch)

    def _preacts_jvp(self, kern, tangent):
        from ..kernels.crossing import preacts_jvp_kernel
        return preacts_jvp_kernel(self.points, self._pat, *kern, *tangent, self.chunk)

    def ends(self, kern, tangent):
        return self._preacts_jvp(kern, tangent)

    def dips(self, ends0, ends1, h, margin):
        from ..kernels.crossing import hermite_dips_kernel
        return np.flatnonzero(hermite_dips_kernel(self._pat, *ends0, *ends1, h, margin, self.chunk))

    def flips(self, kern, tangent):
        return flipped(*self._preacts_jvp(kern, tangent), self._pat)

    def near_planes(self, kern, tangent, planes, extra, rel):
        a, _ = self._preacts_jvp(kern, tangent)
        zero = rel * max(1.0, float(np.max(np.abs(a))))
        near = near_plane_rows(a, planes, zero)
        want = np.union1d(np.asarray(extra, np.int64), np.concatenate([np.zeros(0, np.int64), *near.values()]))
        return zero, near, dict(zip(want.tolist(), a[want]))


class KeptRows:
    """The rows a remote per-point side (Dask, GPU) keeps in this process: the patterns and the
    data rows of the points the integrator has read or written. This process is the only one
    that writes a pattern, so its copies stay true; changed patterns are sent in one batch
    before the next pass over all points (:meth:`_take_changes`). A subclass sets ``L``, ``W``,
    ``M`` and ``row_dtype`` and fetches what is missing: ``_fetch_patterns(idx)`` -> (n, L, W)
    and ``_fetch_rows(idx)`` -> (points (n, M), labels (n,)), idx sorted."""

    #: Rows kept at most: more, and the kept ones are forgotten (after the changes are sent).
    KEPT = 1 << 16

    def _keep_rows(self):
        self._known = {}        # point -> its pattern (L, W)
        self._dirty = set()     # points whose pattern changed here, not yet sent
        self._rows = {}         # point -> (point row, label)

    @staticmethod
    def _missing(idx, kept):
        return np.array(sorted({int(i) for i in idx if int(i) not in kept}), np.int64)

    def pattern(self, idx):
        idx = np.asarray(idx, np.int64)
        missing = self._missing(idx, self._known)
        if missing.size:
            self._known.update(zip(missing.tolist(), self._fetch_patterns(missing)))
        if idx.size == 0:
            return np.zeros((0, self.L, self.W), np.uint64)
        return np.stack([self._known[int(i)] for i in idx])

    def set_pattern(self, idx, pats):
        for i, row in zip(np.asarray(idx, np.int64).tolist(), pats):
            self._known[i] = np.array(row, np.uint64)
            self._dirty.add(i)

    def data(self, idx):
        idx = np.asarray(idx, np.int64)
        missing = self._missing(idx, self._rows)
        if missing.size:
            pts, lab = self._fetch_rows(missing)
            self._rows.update(zip(missing.tolist(), zip(pts, lab)))
        if idx.size == 0:
            return np.zeros((0, self.M), self.row_dtype), np.zeros(0, np.int64), idx
        rows = [self._rows[int(i)] for i in idx]
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], np.int64), np.arange(idx.size)

    def _take_changes(self):
        """(idx sorted, patterns (n, L, W)) changed here since the last call, or None; forgets the
        kept rows when there are more than :attr:`KEPT`."""
        out = None
        if self._dirty:
            idx = np.array(sorted(self._dirty), np.int64)
            out = idx, np.stack([self._known[int(i)] for i in idx])
            self._dirty.clear()
        if len(self._known) > self.KEPT:
            self._known.clear()
        if len(self._rows) > self.KEPT:
            self._rows.clear()
        return out

    def _forget(self):
        """Drop the kept patterns (all of them were replaced)."""
        self._known.clear()
        self._dirty.clear()
