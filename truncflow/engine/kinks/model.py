"""The frozen-pattern model: the one owner of the activation pattern and the sliding set.

The stepper integrates the *frozen-pattern* flow: every point keeps the activation pattern it had
at the start of the step (``kernels.crossing.frozen_gradient_kernel``: the gradient pass with the
pattern as input, bit-identical to the ordinary pass where the pattern is the true one), a smooth
ODE. :class:`FrozenModel` holds that pattern and the sliding set (coordinates held at ``a = 0``,
their bit cleared in the pattern, MODEL.md section 5) and evaluates the flow and its pieces
(subset gradients, jumps, pre-activations and their tangents) under them.

Only its methods change the pattern or the sliding set (:meth:`FrozenModel.set_patterns`,
:meth:`~FrozenModel.apply_crossings`, :meth:`~FrozenModel.set_sides`,
:meth:`~FrozenModel.release`), and each keeps the caches right: ``version`` changes and the cached
evaluations are dropped. Outside, :meth:`~FrozenModel.pattern` gives copies of rows and
``sliding`` is a tuple.

The patterns themselves, and every pass over all points, live where the points are: the
dataset's ``frozen_points`` (``backends.frozen``: in this process, on a Dask cluster's workers
or on a GPU). The model asks it for sums and sorted lists of flagged points and works on the
rows of those points here.
"""
from __future__ import annotations

import numpy as np

from ...compute import Gradient, aligned_scale_gradient, cumulative_to_layer_gradient, kernel_arrays, tile_arrays
from ...kernels import config
from ...kernels.crossing import scatter_rows, subset_contributions_kernel, subset_jvp_kernel, subset_preacts_kernel
from ...kernels.forward import patterns_kernel
from .bits import bits, pack, set_bit
from .filippov import least_squares
from .locate import ON_PLANE, serial_product
from .options import DEFAULT

__all__ = ["FrozenModel"]


class _At:
    """Parameters at one state and the kernels' arrays."""
    __slots__ = ("params", "tiles", "kern")

    def __init__(self, params, dataset, kind):
        self.params = params
        self.tiles = tile_arrays(params, dataset.targets, kind)
        self.kern = kernel_arrays(params)


class _Eval:
    """One evaluation under the pattern and sliding set of its time: cost, g0 (the gradient with the
    sliding coordinates truncated), v (the velocity, -(g0 + D s)), flagged (sorted int64: the points
    whose pattern and signs differ), s and D (the sliding weights and jumps; None without sliding),
    grad_norm (|v|)."""
    __slots__ = ("cost", "g0", "v", "flagged", "s", "D", "grad_norm")


class FrozenModel:
    """Frozen-pattern evaluations of one FlowProblem, with the current pattern and sliding set."""

    def __init__(self, problem, options=DEFAULT):
        self.problem = problem
        self.options = options
        ds = problem.dataset
        self.ds = ds
        self.kind = problem.kind
        self.output = problem.kind == "output"
        self.N = ds.n_points
        p = problem.params
        self.L, self.M = p.n_layers, p.width
        Mp = problem.params.width
        arr = tile_arrays(p, ds.targets, self.kind)
        Mp, P = arr[1].shape[1], arr[5].shape[0]
        self.chunk = config.chunk_size(self.N, 8 * (1 + self.L * Mp * (Mp + 1) + P * (Mp + 1)))
        # the per-point side (patterns, passes over all points) lives where the points do
        self.points = ds.frozen_points(kernel_arrays(p), config.chunk_size(self.N))
        self.n_words = (self.M + 63) // 64
        self._sliding = []         # (i, l, k) held at a = 0, bit cleared in the pattern
        self.version = 0           # changes with pattern or sliding set: keys the caches
        self._at_cache = {}
        self._ev_cache = {}
        self.last_ev = None
        self._ends_cache = None
        self.n_full = 0

    # ---------------------------------------------------------------- states
    def at(self, y):
        key = y.tobytes()
        hit = self._at_cache.get(key)
        if hit is None:
            hit = _At(self.problem.unpack(y), self.ds, self.kind)
            if len(self._at_cache) > 64:
                self._at_cache.clear()
            self._at_cache[key] = hit
        return hit

    # ------------------------------------------------- pattern and sliding set
    def pattern(self, idx):
        """A copy of the patterns of points idx (an index array: (n, L, W) uint64; one index: (L, W)),
        sliding coordinates truncated."""
        if np.ndim(idx) == 0:
            return self.points.pattern(np.array([idx], np.int64))[0]
        return self.points.pattern(idx)

    def whole_pattern(self):
        """(N, L, W) uint64: every point's pattern (a copy, for checkpoints)."""
        return self.points.whole_pattern()

    @property
    def sliding(self):
        """The sliding set: (i, l, k) coordinates held at a = 0, in order (their weights' order)."""
        return tuple(self._sliding)

    def _changed(self):
        self.version += 1
        self._ev_cache.clear()

    def set_patterns(self, idx, pats):
        """Set the patterns of points idx (distinct; crossings found by the locator, or true patterns)."""
        self.points.set_pattern(idx, pats)
        self._changed()

    def apply_crossings(self, crossings):
        """Give each crossing's point its pattern after it, in the order given (time order: a point's
        last crossing sets its pattern)."""
        last = {c.point: c.pattern for c in crossings}
        if last:
            self.points.set_pattern(np.fromiter(last, np.int64, len(last)), np.stack(list(last.values())))
        self._changed()

    def _edit(self, coords, free):
        """Set coordinate (i, l, k) of each of ``coords`` free or truncated (``free[j]``), in order."""
        pts = np.array(sorted({int(c[0]) for c in coords}), np.int64)
        if pts.size == 0:
            return
        pats = self.points.pattern(pts)
        row = {int(i): e for e, i in enumerate(pts)}
        for (i, l, k), f in zip(coords, free):
            pats[row[i]] = set_bit(pats[row[i]], l, k, bool(f))
        self.points.set_pattern(pts, pats)

    def set_sides(self, group, sliding, free):
        """Put each coordinate (i, l, k) of ``group`` into the sliding set (``sliding[j]``: truncated in
        the pattern) or on its side (``free[j]``); the sliding set becomes the sliding ones of
        ``group``, in group order. Returns (entered, left): coordinates that joined the sliding set
        and coordinates that left it."""
        was = set(self._sliding)
        self._sliding = []
        entered, left = [], []
        for j, (i, l, k) in enumerate(group):
            if sliding[j]:
                self._sliding.append((i, l, k))
                if (i, l, k) not in was:
                    entered.append((i, l, k))
            elif (i, l, k) in was:
                left.append((i, l, k))
        self._edit(group, [bool(free[j]) and not sliding[j] for j in range(len(group))])
        self._changed()
        return entered, left

    def release(self, releases):
        """Release sliding coordinates: ``releases`` (index in the sliding set, free) pairs; each goes to
        its side. Returns the released coordinates, in the order released."""
        out, sides = [], []
        for e, free in sorted(releases, reverse=True):
            out.append(self._sliding.pop(e))
            sides.append(free)
        self._edit(out, sides)
        self._changed()
        return out

    def restore(self, pat, sliding):
        """Take back the pattern (N, L, W) uint64 and sliding set of a checkpoint (checked there)."""
        self.points.restore_pattern(pat)
        self._sliding = [tuple(int(v) for v in c) for c in sliding]
        self._changed()

    def keep_only(self, y):
        """Drop every cached evaluation but that of state y (an accepted state). Called between
        steps, it makes the caches' content a function of the current state alone, so that a run
        resumed from a checkpoint finds (and counts) the same evaluations as one never stopped."""
        key = y.tobytes()
        for cache in (self._ev_cache, self._at_cache):
            hit = cache.get(key)
            cache.clear()
            if hit is not None:
                cache[key] = hit

    def resync(self, cand, y):
        """Set the listed points' patterns (cand sorted) to their true patterns at y, sliding
        coordinates kept truncated. Returns how many differed (0: nothing changed, caches kept)."""
        at = self.at(y)
        pts, _, rows = self.points.data(cand)
        true = patterns_kernel(np.ascontiguousarray(pts[rows]), *at.kern, config.chunk_size(cand.size))
        for (i, l, k) in self._sliding:
            w = np.flatnonzero(cand == i)
            if w.size:
                true[w[0]] = set_bit(true[w[0]], l, k, False)
        now = self.points.pattern(cand)
        # a coordinate on its hyperplane to round-off keeps its side (either is right to round-off)
        a = subset_preacts_kernel(pts, rows, now, *at.kern)
        flat = np.abs(a)
        on = flat <= ON_PLANE * max(1.0, float(np.max(flat))) if flat.size else flat.astype(bool)
        if on.any():
            keep = bits(now, self.M) & on
            set_ = bits(true, self.M)
            want = np.where(on, keep, set_)
            true = pack(want, self.n_words)
        diff = np.any(true != now, axis=(1, 2))
        if diff.any():
            self.points.set_pattern(cand[diff], true[diff])
            self._changed()
        return int(diff.sum())

    def _unslid(self, idx):
        """idx without the sliding points."""
        if self._sliding:
            return np.setdiff1d(idx, [c[0] for c in self._sliding])
        return idx

    def ends(self, y, v, fresh=False):
        """A handle of every point's frozen-pattern pre-activations at y and their rates along v (for
        :meth:`dips`), kept for the next step's start: the step's end state y1 with the stepper's
        velocity there, which is the next step's first stage (the cached one is returned whenever y
        and the pattern match, unless ``fresh``)."""
        key = (self.version, y.tobytes())
        if fresh or self._ends_cache is None or self._ends_cache[0] != key:
            self._ends_cache = (key, self.points.ends(self.at(y).kern, self._tangent(self.at(y).params, v)))
        return self._ends_cache[1]

    def dips(self, ya, va, y1, v1, h, margin):
        """Sorted points (sliding ones excepted) whose coordinate's cubic Hermite path between the
        step's ends (states ya, y1, velocities va, v1, length h) comes within ``margin`` of its end
        distances (``hermite_dips_kernel``)."""
        e0 = self.ends(ya, va)
        return self._unslid(self.points.dips(e0, self.ends(y1, v1, fresh=True), h, margin))

    def flips(self, y, dy, exclude):
        """Sorted points outside ``exclude`` and the sliding set whose sign at y + dy, to first order
        from y, differs from their pattern."""
        found = self.points.flips(self.at(y).kern, self._tangent(self.at(y).params, dy))
        return self._unslid(np.setdiff1d(found, exclude))

    def near_planes(self, y, v, planes, extra, rel):
        """(zero, near, a): the round-off scale zero = rel * max(1, max |a|) of the frozen-pattern
        pre-activations a at y (over all points), per hyperplane (l, k) of ``planes`` the sorted
        points with |a_lk| <= zero, and the (L, M) pre-activations of those and of ``extra``
        (a dict by point)."""
        at = self.at(y)
        return self.points.near_planes(at.kern, self._tangent(at.params, v), planes, extra, rel)

    # ----------------------------------------------------------- gradients
    def _vector(self, params, gw, gb, gow, gob):
        """Masked flat gradient (problem's parametrization) from unscaled padded cumulative sums."""
        N, M = self.N, self.M
        g = Gradient(gw[:, :M, :M] / N, gb[:, :M] / N, gow[:, :M] / N if self.output else None,
                     gob / N if self.output else None, "cumulative")
        wrt = self.problem.wrt
        if wrt == "layers":
            g = cumulative_to_layer_gradient(params, g)
        elif wrt == "aligned":
            g = Gradient(aligned_scale_gradient(params, g.weights), g.biases, g.out_weight, g.out_bias, "aligned")
        return self.problem.gradient_vector(g)

    def full(self, y, count=True):
        """Evaluation of the current mode at y (cached): cost, g0, velocity, mismatch flags, s.
        ``count=False``: not counted in the problem's evaluations (one a checkpoint stands for)."""
        key = y.tobytes()
        hit = self._ev_cache.get(key)
        if hit is not None:
            self.last_ev = hit
            return hit
        at = self.at(y)
        self.problem.n_evaluations += bool(count)
        self.n_full += 1
        (sq, gw, gb, gow, gob), ev_flagged = self.points.frozen_gradient(at.tiles, self.output, self.chunk)
        ev = _Eval()
        ev.cost = float(sq.sum() / (2 * self.N))
        ev.g0 = self._vector(at.params, gw.sum(0)[0], gb.sum(0)[0], gow.sum(0)[0], gob.sum(0)[0])
        ev.flagged = ev_flagged
        ev.s, ev.D = None, None
        if self._sliding:
            ev.D = self.jumps(at, self._sliding)
            ev.s = least_squares(ev.D, ev.g0, self.options.slide_reg)
            ev.v = -(ev.g0 + ev.D @ ev.s)
        else:
            ev.v = -ev.g0
        ev.grad_norm = float(np.sqrt(ev.v @ ev.v))
        if len(self._ev_cache) > 32:
            self._ev_cache.clear()
        self._ev_cache[key] = ev
        self.last_ev = ev
        return ev

    def subset(self, at, idx, pats, weights, slots, n_slots):
        """(n_slots, size) masked gradient vectors: slot s sums weights[e] times the contribution of
        the entries e with slots[e] = s, in entry order (``subset_matrix`` with that sparse weight
        matrix, the same sums, without making the matrix: ``kernels.crossing.scatter_rows``)."""
        pts, lab, rows = self.points.data(idx)
        gw, gb, gow, gob = subset_contributions_kernel(pts, lab, rows, np.ascontiguousarray(pats), *at.tiles,
                                                       self.output)
        weights = np.ascontiguousarray(weights, np.float64)
        slots = np.ascontiguousarray(slots, np.int64)
        sums = [scatter_rows(weights, slots, n_slots, np.ascontiguousarray(g.reshape(g.shape[0], -1)))
                .reshape((n_slots,) + g.shape[1:]) for g in self._unpadded(gw, gb, gow, gob)]
        return self._vectors(at.params, *sums)

    def _unpadded(self, gw, gb, gow, gob):
        """Per-entry contributions without the tile layout's padding (zeros that ``_vectors``
        drops): the weighted sums then skip them."""
        M = self.M
        return gw[:, :, :M, :M], gb[:, :, :M], gow[:, :, :M], gob

    def subset_matrix(self, at, idx, pats, weights, pairs=False):
        """(S, size) masked gradient vectors: row s = sum over entries e of weights[s, e] times entry
        e's contribution (point idx[e] under pattern pats[e]). One pass over the n entries
        (``subset_contributions_kernel``) however many rows: the weighted sums are one product.
        ``pairs``: entries 2p and 2p + 1 are one point under two patterns (after a crossing, and
        before it) and ``weights`` has a column per pair, applied to their difference (a jump)."""
        weights = np.asarray(weights, np.float64)
        pts, lab, rows = self.points.data(idx)
        gw, gb, gow, gob = subset_contributions_kernel(pts, lab, rows, np.ascontiguousarray(pats), *at.tiles,
                                                       self.output)
        gw, gb, gow, gob = self._unpadded(gw, gb, gow, gob)
        if pairs:
            gw, gb, gow, gob = (g[0::2] - g[1::2] for g in (gw, gb, gow, gob))
        S = weights.shape[0]
        sums = [serial_product(weights, g.reshape(g.shape[0], -1)).reshape((S,) + g.shape[1:]) for g in (gw, gb, gow, gob)]
        return self._vectors(at.params, *sums)

    def _vectors(self, params, gw, gb, gow, gob):
        """``_vector`` for a stack of S slots at once, (S, size): the same linear maps, batched."""
        N, M, L = self.N, self.M, self.L
        S = gw.shape[0]
        w = gw[:, :, :M, :M] / N
        b = gb[:, :, :M] / N
        wrt = self.problem.wrt
        if wrt == "layers":
            # compute.cumulative_to_layer_gradient on every slot
            gwl = np.empty((S, L, M, M))
            gbl = np.empty((S, L, M))
            G_bar, B_bar = w[:, L - 1].copy(), b[:, L - 1].copy()
            for l in range(L - 1, -1, -1):
                if l > 0:
                    gwl[:, l] = (G_bar @ params.cum_weights[l - 1].T
                                 + B_bar[:, :, None] * params.cum_biases[l - 1][None, None, :])
                else:
                    gwl[:, l] = G_bar
                gbl[:, l] = B_bar
                if l > 0:
                    Wt = params.weights[l].T
                    G_bar = w[:, l - 1] + Wt[None] @ G_bar
                    B_bar = b[:, l - 1] + B_bar @ params.weights[l]
            w, b = gwl, gbl
        elif wrt == "aligned":
            w = aligned_scale_gradient(params, w)
        parts = [w.reshape(S, -1), b.reshape(S, -1)]
        if self.output:
            parts += [(gow[:, :, :M] / N).reshape(S, -1), (gob / N).reshape(S, -1)]
        return np.concatenate(parts, axis=1) * self.problem.mask[None, :]

    def jumps(self, at, coords):
        """(size, n) columns d_j = contribution with coordinate j free minus truncated (others as now)."""
        n = len(coords)
        idx = np.empty(2 * n, np.int64)
        pats = np.empty((2 * n, self.L, self.n_words), np.uint64)
        now = self.pattern(np.array([c[0] for c in coords], np.int64))
        for j, (i, l, k) in enumerate(coords):
            base = now[j]
            idx[2 * j] = idx[2 * j + 1] = i
            pats[2 * j] = set_bit(base, l, k, True)
            pats[2 * j + 1] = set_bit(base, l, k, False)
        weights = np.tile([1.0, -1.0], n)
        return self.subset(at, idx, pats, weights, np.repeat(np.arange(n), 2), n).T

    def _tangent(self, params, v):
        """The kernels' tangent arrays along one y-direction v: (dcw, dcb, dedges_t) of shapes
        (L, M, M), (L, M), (L, M, M)."""
        return tuple(np.ascontiguousarray(t[0]) for t in self._tangents(params, v[None]))

    def preacts(self, at, idx, pats):
        pts, _, rows = self.points.data(idx)
        return subset_preacts_kernel(pts, rows, np.ascontiguousarray(pats), *at.kern)

    def jvp(self, at, idx, pats, dirs):
        """Frozen-pattern pre-activations of entries and their derivatives along dirs[e] (y-space)."""
        pts, _, rows = self.points.data(idx)
        return subset_jvp_kernel(pts, rows, np.ascontiguousarray(pats), *at.kern, *self._tangents(at.params, dirs))

    def _tangents(self, params, dirs):
        """The kernels' tangent arrays along y-directions dirs (n, size): (dcw, dcb, dedges_t),
        contiguous, of shapes (n, L, M, M), (n, L, M), (n, L, M, M), with dedges_t = (dA)^T for
        dA = -A dW A (A the inverse of the cumulative weight)."""
        dcw, dcb = self._cum_tangent(params, dirs)
        A = params.inverses
        dA = -np.einsum("lij,eljk,lkm->elim", A, dcw, A)
        return (np.ascontiguousarray(dcw), np.ascontiguousarray(dcb),
                np.ascontiguousarray(np.swapaxes(dA, 2, 3)))

    def _cum_tangent(self, params, dirs):
        """Tangents (n, L, M, M), (n, L, M) of the cumulative parameters along y-directions dirs (n, size)."""
        pr = self.problem
        L, M = self.L, self.M
        n = dirs.shape[0]
        o = pr._offsets
        w = dirs[:, o[0]:o[1]]
        b = dirs[:, o[1]:o[2]].reshape(n, L, M)
        if pr.wrt == "cumulative":
            return w.reshape(n, L, M, M), b
        if pr.wrt == "aligned":
            return w.reshape(n, L, M)[..., None] * params.frames[None], b
        w = w.reshape(n, L, M, M)
        dcw = np.empty((n, L, M, M))
        dcb = np.empty((n, L, M))
        for l in range(L):
            if l == 0:
                dcw[:, 0], dcb[:, 0] = w[:, 0], b[:, 0]
            else:
                Wl = params.weights[l]
                dcw[:, l] = w[:, l] @ params.cum_weights[l - 1] + np.einsum("ij,ejk->eik", Wl, dcw[:, l - 1])
                dcb[:, l] = (np.einsum("eij,j->ei", w[:, l], params.cum_biases[l - 1])
                             + np.einsum("ij,ej->ei", Wl, dcb[:, l - 1]) + b[:, l])
        return dcw, dcb


