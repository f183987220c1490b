"""The kink integrator's per-point side on a Dask cluster (``backends.frozen`` says what it is).

Each partition's frozen patterns stay on the worker that holds its points, as a future made
from that partition's points (the patterns at the start) and the changes the integrator made
since, one task per change: when a worker dies, Dask computes them again from that lineage,
as it does the points. Every pass over all points is one task per partition, running the
serial twin of the local kernel (``kernels.crossing``: the same bits per point and per chunk),
and returns sums per chunk and the partition's flagged points; pre-activations at a step's
ends stay on the workers for the next step. What comes to the client: the sums, the sorted
flagged indices, and the rows (points, labels, patterns) of the few points the integrator
works on, which it keeps (it is the only one that writes a pattern, so its copies stay true).
Changed patterns go to the workers just before the next pass over all points.
"""
from __future__ import annotations

import numpy as np

from ..kernels.crossing import frozen_gradient_kernel_serial, hermite_dips_serial, preacts_jvp_serial
from ..kernels.forward import patterns_serial
from .frozen import KeptRows, flipped, near_plane_rows

__all__ = ["DaskFrozenPoints"]

# ------------------------------------------------------------------ worker side
def _patterns(part, kern):
    return patterns_serial(part[0], *kern)


def _put(pat, rows, pats):
    """A copy of a partition's patterns with rows ``rows`` set to ``pats``."""
    out = pat.copy()
    out[rows] = pats
    return out


def _take(pat, rows):
    return pat[rows]


def _data(part, rows):
    return part[0][rows], part[1][rows]


def _frozen_gradient(part, pat, tiles, output, chunk):
    *sums, mismatch = frozen_gradient_kernel_serial(part[0], part[1], pat, *tiles, output, 1, chunk)
    return sums, np.flatnonzero(mismatch)


def _ends(part, pat, kern, tangent):
    return preacts_jvp_serial(part[0], pat, *kern, *tangent)


def _dips(pat, ends0, ends1, h, margin):
    return np.flatnonzero(hermite_dips_serial(pat, *ends0, *ends1, h, margin))


def _flips(part, pat, kern, tangent):
    return flipped(*preacts_jvp_serial(part[0], pat, *kern, *tangent), pat)


def _absmax(ends):
    return float(np.max(np.abs(ends[0]))) if ends[0].size else 0.0


def _near(ends, planes, zero, extra):
    a = ends[0]
    near = near_plane_rows(a, planes, zero)
    want = np.union1d(extra, np.concatenate([np.zeros(0, np.int64), *near.values()]))
    return near, want, a[want]


# ------------------------------------------------------------------ client side
class DaskFrozenPoints(KeptRows):
    """The frozen patterns of a :class:`~truncflow.backends.dask.DistributedDataset`'s points, on
    its workers, and the passes over them (``backends.frozen``)."""

    def __init__(self, dataset, kern, chunk):
        self.ds = dataset
        self.client = dataset.client
        self.n_points = dataset.n_points
        self.starts = np.array([a for a, _ in dataset.bounds], np.int64)
        self.L, self.M = kern[0].shape[0], dataset.width
        self.W, self.row_dtype = (self.M + 63) // 64, dataset.dtype
        self._pat = [self.client.submit(_patterns, part, kern, pure=False) for part in dataset._parts]
        self._keep_rows()

    # ------------------------------------------------------------ helpers
    def _split(self, idx):
        """Per partition p with listed points: (p, positions in idx, rows within the partition)."""
        idx = np.asarray(idx, np.int64)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        out = []
        for p in np.unique(part):
            pos = np.flatnonzero(part == p)
            out.append((int(p), pos, idx[pos] - self.starts[p]))
        return out

    def _gather(self, futures, what):
        return self.ds._gather(futures, what)

    def _each(self, function, *args, what):
        """``function(part, pattern, *args)`` on every partition, after the changes are sent: results
        in partition order."""
        self._flush()
        futures = [self.client.submit(function, part, pat, *args, pure=False)
                   for part, pat in zip(self.ds._parts, self._pat)]
        return self._gather(futures, what)

    def _indices(self, per_partition):
        """Sorted global indices from per-partition sorted local ones."""
        parts = [np.asarray(r, np.int64) + a for r, a in zip(per_partition, self.starts)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _flush(self):
        changes = self._take_changes()
        if changes is not None:
            idx, pats = changes
            for p, pos, rows in self._split(idx):
                self._pat[p] = self.client.submit(_put, self._pat[p], rows, pats[pos], pure=False)

    # ------------------------------------------------------------ what the kept rows fetch
    def _fetch_patterns(self, idx):
        split = self._split(idx)
        got = self._gather([self.client.submit(_take, self._pat[p], rows, pure=False) for p, _, rows in split],
                           "reading patterns")
        out = np.empty((idx.size, self.L, self.W), np.uint64)
        for (_, pos, _), pats in zip(split, got):
            out[pos] = pats
        return out

    def _fetch_rows(self, idx):
        split = self._split(idx)
        got = self._gather([self.client.submit(_data, self.ds._parts[p], rows, pure=False) for p, _, rows in split],
                           "reading the rows of flagged points")
        pts, lab = np.empty((idx.size, self.M), self.row_dtype), np.empty(idx.size, np.int64)
        for (_, pos, _), (x, y) in zip(split, got):
            pts[pos], lab[pos] = x, y
        return pts, lab

    # ------------------------------------------------------------ patterns
    def whole_pattern(self):
        self._flush()
        return np.concatenate(self._gather(list(self._pat), "reading the patterns"))

    def restore_pattern(self, pat):
        self._forget()
        self._pat = [self.client.submit(np.array, pat[a:b], pure=False) for a, b in self.ds.bounds]

    # ------------------------------------------------- passes over all points
    def frozen_gradient(self, tiles, output, chunk):
        self.ds._require_chunking(chunk)
        got = self._each(_frozen_gradient, tiles, output, chunk, what="a frozen-pattern pass over the points")
        sums = tuple(np.concatenate([g[0][j] for g in got]) for j in range(5))
        return sums, self._indices([g[1] for g in got])

    def ends(self, kern, tangent):
        self._flush()
        return [self.client.submit(_ends, part, pat, kern, tangent, pure=False)
                for part, pat in zip(self.ds._parts, self._pat)]

    def dips(self, ends0, ends1, h, margin):
        self._flush()
        futures = [self.client.submit(_dips, pat, e0, e1, h, margin, pure=False)
                   for pat, e0, e1 in zip(self._pat, ends0, ends1)]
        return self._indices(self._gather(futures, "the dip test"))

    def flips(self, kern, tangent):
        return self._indices(self._each(_flips, kern, tangent, what="the first-order sign test"))

    def near_planes(self, kern, tangent, planes, extra, rel):
        ends = self.ends(kern, tangent)
        top = self._gather([self.client.submit(_absmax, e, pure=False) for e in ends], "the pre-activations' scale")
        zero = rel * max(1.0, max(top))
        extra = np.unique(np.asarray(extra, np.int64))
        part = np.searchsorted(self.starts, extra, side="right") - 1
        futures = [self.client.submit(_near, e, planes, zero, extra[part == p] - self.starts[p], pure=False)
                   for p, e in enumerate(ends)]
        near, rows = {plane: [] for plane in planes}, {}
        for p, (nr, want, a) in enumerate(self._gather(futures, "the points on the hyperplanes")):
            for plane in planes:
                near[plane].append(nr[plane] + self.starts[p])
            rows.update(zip((want + self.starts[p]).tolist(), a))
        return zero, {plane: np.concatenate(v) for plane, v in near.items()}, rows
