"""The bulk corrector: one step's crossings corrected together instead of located one by one.

*Bulk mode* keeps the step and adds, for each crossing point, the integral of its gradient jump
from its crossing time to the step's end (an interpolatory quadrature on the step's nodes,
``FrozenModel.subset_matrix``: per-entry contributions, weighted). Found on the frozen path, every crossing time
is off by the earlier crossings' effect on the path (the leading error, ~ h^3 per step), so the
crossings are re-found on the corrected path (frozen dense output plus the jumps' integrals up to
each node, plus their feedback), ``KinkOptions.bulk_refine`` passes of subset work only; points
that cross only on the corrected path join. The crossings' feedback on the step's own stages is
added to first order, ``J q1`` with ``q1 = sum_i int_{tau_i}^{t1} (t1 - s) jump_i(s) ds`` (one
evaluation: a difference of the frozen flow). The estimated error left (what another pass would
still move, plus the next feedback term ||J|| ||J q1|| h / 4), in the max norm scaled as the
stepper's and per unit of the flow's time scale 1 / ||J||, is :meth:`BulkCorrector.error`; the
step controller (``controller.py``) compares it with ``KinkOptions.bulk_budget``.

The corrector reads the model and never changes it.
"""
from __future__ import annotations

import numpy as np

from .filippov import project_velocity
from .locate import crossing_paths, late_candidates

__all__ = ["BulkCorrector"]


class BulkCorrector:
    """Jump integrals, corrected paths and error estimates of bulk-corrected steps."""

    def __init__(self, model, quad, options):
        self.model = model
        self.quad = quad
        self.options = options

    def project_velocity(self, g):
        """A gradient change's effect on the velocity: itself, projected off the sliding normals
        (those of the model's last evaluation)."""
        if not self.model.sliding:
            return g
        return project_velocity(g, self.model.last_ev)

    def error(self, ya, y1, h, f0, f1, q1, jq1, shift, rtol, atol):
        """The estimated error of a bulk-corrected step of length h (ends ya, y1, velocities f0, f1
        there): ``shift`` plus the next feedback term, about ||J|| ||J q1|| h / 4 (||J|| the larger
        of ||J q1|| / ||q1|| and a secant estimate along the step), in the max norm scaled as the
        stepper's, per unit of the flow's time scale 1 / ||J|| (the errors of many steps add up)."""
        n1 = np.linalg.norm(q1)
        r = max(np.linalg.norm(jq1) / n1 if n1 > 0 else 0.0, self.secant(ya, y1, f0, f1))
        scale = atol + np.maximum(np.abs(ya), np.abs(y1)) * rtol
        return float(np.max((shift + r * np.abs(jq1) * (h / 4)) / scale)) / min(1.0, r * h)


    def jump_pieces(self, segs, xu):
        """Per crossing point, the pieces [x_a, x_b) of the step (clipped at xu, in [-1, 1]) after each
        of its crossings, as subset entries (idx, pats, xa, xb): two entries per piece, the pattern
        after the crossing and the pattern at the step's start (``subset_matrix(..., pairs=True)``
        takes their difference, the piece's jump)."""
        pc = self.model
        W = (pc.L, pc.n_words)
        n = len(segs)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros((0,) + W, np.uint64), np.zeros(0), np.zeros(0)
        point = np.fromiter((c.point for c in segs), np.int64, n)
        x = np.fromiter((c.x for c in segs), np.float64, n)
        after = np.stack([c.pattern for c in segs])
        # points in the order they first cross, each point's crossings in time order (segs are)
        _, first, inverse = np.unique(point, return_index=True, return_inverse=True)
        order = np.lexsort((np.arange(n), first[inverse]))
        point, x, after = point[order], x[order], after[order]
        x_end = np.ones(n)
        same = point[1:] == point[:-1]
        x_end[:-1][same] = x[1:][same]
        a_, b_ = np.minimum(x, xu), np.minimum(x_end, xu)
        keep = b_ > a_
        point, a_, b_, after = point[keep], a_[keep], b_[keep], after[keep]
        m = point.size
        pats = np.empty((2 * m,) + W, np.uint64)
        pats[0::2], pats[1::2] = after, pc.pattern(point)
        return np.repeat(point, 2), pats, np.repeat(a_, 2), np.repeat(b_, 2)

    def node_deltas(self, segs, nodes_y, t0, t1):
        """(E, Q): the crossings' velocity jumps integrated from t0 to each of the step's K nodes t_m,
        E[m] = int_{t0}^{t_m} jumps ds, and their first moments Q[m] = int_{t0}^{t_m} (t_m - s) jumps ds
        (both (K, size); E[-1] is the step's delta, Q[-1] its q1)."""
        pc, q = self.model, self.quad
        h = t1 - t0
        K = q.n
        size = self.model.problem.size
        idx, pats, xa, xb = self.jump_pieces(segs, 1.0)
        n = idx.size
        if n == 0:
            return np.zeros((K, size)), np.zeros((K, size))
        # entries come in pairs (pattern after a crossing, +1; at the step's start, -1) on one
        # piece: the weights are those of the piece, applied to the pair's difference
        xa, xb, n = xa[0::2], xb[0::2], n // 2
        a_ = np.minimum(xa[None, :], q.x[:, None]).ravel()
        b_ = np.minimum(xb[None, :], q.x[:, None]).ravel()
        W = q.weights(a_, b_).reshape(K, n, K) * (h / 2)
        W1 = q.moment_weights(a_, b_, 1).reshape(K, n, K) * (h / 2) ** 2
        W = np.concatenate([W, W1], axis=0)                           # (2K, n, K): E, then int (t1 - s)
        out = np.zeros((2 * K, size))
        for kk, y in enumerate(nodes_y):
            g = pc.subset_matrix(pc.at(y), idx, pats, W[:, :, kk], pairs=True)
            out -= np.stack([self.project_velocity(r) for r in g]) if pc.sliding else g
        E = out[:K]
        tm = t0 + (q.x + 1) * (h / 2)
        Q = out[K:] - (t1 - tm)[:, None] * E
        return E, Q

    def bulk_delta(self, segs, nodes_t, nodes_y, t0, t1, upper, moments=False):
        """(delta, q1): the integral over the step (up to ``upper``) of the crossings' velocity jumps,
        and (``moments``) its first moment q1 = int (t1 - s) jumps ds (None otherwise)."""
        pc = self.model
        q = self.quad
        h = t1 - t0
        xu = -1.0 + 2.0 * (upper - t0) / h
        idx, pats, xa, xb = self.jump_pieces(segs, xu)
        size = self.model.problem.size
        if not idx.size:
            return np.zeros(size), (np.zeros(size) if moments else None)
        xa, xb = xa[0::2], xb[0::2]                                     # per piece (pairs: see node_deltas)
        W = q.weights(xa, xb) * (h / 2)                                 # (pieces, K)
        rows = [W]
        if moments:
            rows.append(q.moment_weights(xa, xb, 1) * (h / 2) ** 2)
        rows = np.stack(rows)                                           # (1 or 2, pieces, K)
        out = np.zeros((rows.shape[0], size))
        for kk, y in enumerate(nodes_y):
            g = pc.subset_matrix(pc.at(y), idx, pats, rows[:, :, kk], pairs=True)
            out -= np.stack([self.project_velocity(r) for r in g])
        return out[0], (out[1] if moments else None)

    def corrected_path(self, cand, segs, final_pats, nodes_t, nodes_y, y1, t0, t1):
        """Crossing times and jump integrals re-found along the corrected path.

        The frozen path misplaces every crossing by the effect of the earlier ones (the
        leading error of a bulk step, ~ h^3 per step). At the nodes the corrected path is
        the frozen dense output plus E (the integrals of the jumps up to each node) plus
        the feedback (J applied to the moments Q up to each node, taken along J q1: each
        node's Q projected on q1). Pass 1 re-finds the crossings on the path without
        feedback; then J q1 is evaluated (one evaluation), points that cross on the
        corrected path though not on the frozen one join the candidates (one pass over all
        points: pre-activations at y1 and their change towards the corrected end, to first
        order), and ``options.bulk_refine - 1`` more passes follow on the path with feedback. Each
        pass contracts the crossing-time error by about |moved| / |delta|. Subset work only
        apart from the two passes named. Returns (segs, final_pats, cand, nodes, delta, q1,
        J q1, shift, n_late) with ``shift`` (size,) what one more pass would still move and
        ``n_late`` the points that joined, or None when the feedback cannot be evaluated.
        """
        K = len(nodes_y)
        E, Q = self.node_deltas(segs, nodes_y, t0, t1)
        n_late = 0
        nodes_c, moves, jq1, fb = nodes_y, [], None, np.zeros(K)
        for _ in range(max(self.options.bulk_refine, 1)):
            trial = [nodes_y[m] + E[m] + fb[m] * (jq1 if jq1 is not None else 0.0) for m in range(K)]
            segs_n, pats_n = crossing_paths(self.model, self.quad, cand, nodes_t, trial, t0, t1, self.options.scan)
            if segs_n:
                E_n, Q_n = self.node_deltas(segs_n, trial, t0, t1)
                moves.append(np.abs(E_n[-1] - E[-1]))
                segs, final_pats, nodes_c, E, Q = segs_n, pats_n, trial, E_n, Q_n
            if jq1 is None:
                jq1 = self.frozen_difference(y1, Q[-1])
                if not np.all(np.isfinite(jq1)):
                    return None
                q1 = Q[-1]
                nq = float(q1 @ q1)
                fb = (Q @ q1) / nq if nq > 0 else np.zeros(K)
                late = late_candidates(self.model, cand, y1, y1 + E[-1] + jq1)
                if late.size:
                    n_late += int(late.size)
                    cand = np.union1d(cand, late)
                    pos = np.searchsorted(cand, late)
                    final_pats = np.insert(final_pats, pos - np.arange(late.size), self.model.pattern(late), axis=0)
            if not segs_n:
                break
        delta = E[-1]
        if not moves:
            shift = np.abs(delta)
        else:
            last = np.linalg.norm(moves[-1])
            before = np.linalg.norm(moves[-2]) if len(moves) > 1 else np.linalg.norm(delta)
            shift = moves[-1] * min(1.0, last / before if before > 0 else 1.0)
        return segs, final_pats, cand, nodes_c, delta, Q[-1], jq1, shift, n_late

    def sliding_kind(self, segs, y):
        """Per crossing: whether its own velocity jump turns its pre-activation back (a sliding mode)."""
        pc = self.model
        n = len(segs)
        idx = np.array([s_.point for s_ in segs], np.int64)
        new = np.array([s_.pattern for s_ in segs], np.uint64)
        # the jump of each crossing point alone, from its pattern before to after this crossing
        before = new.copy()
        ls = np.array([s_.layer for s_ in segs], np.int64)
        ks = np.array([s_.coord for s_ in segs], np.int64)
        before[np.arange(n), ls, ks // 64] ^= np.left_shift(np.uint64(1), (ks % 64).astype(np.uint64))
        at = pc.at(y)
        ent_idx = np.repeat(idx, 2)
        ent_pat = np.empty((2 * n,) + new.shape[1:], np.uint64)
        ent_pat[0::2], ent_pat[1::2] = new, before
        jumps = pc.subset(at, ent_idx, ent_pat, np.tile([-1.0, 1.0], n), np.repeat(np.arange(n), 2), n)
        jumps = np.stack([self.project_velocity(j) for j in jumps]) if pc.sliding else jumps
        _, da = pc.jvp(at, idx, new, jumps)
        own = da[np.arange(n), ls, ks]
        slope = np.array([s_.slope for s_ in segs])
        kind = slope * (slope + own) <= 0.0
        return kind

    def frozen_difference(self, y1, q):
        """J q: the change of the frozen (pre-crossing) velocity from y1 to y1 + q (one evaluation)."""
        if not np.any(q):
            return np.zeros_like(q)
        try:
            v1 = self.model.full(y1).v
            return self.model.full(y1 + q).v - v1
        except ValueError:
            return np.full_like(q, np.nan)

    @staticmethod
    def secant(ya, y1, f0, f1):
        """A secant estimate of the flow's Lipschitz constant along the step (f0, f1 the velocities
        at its ends)."""
        dy = np.linalg.norm(y1 - ya)
        return float(np.linalg.norm(f1 - f0) / dy) if dy > 0 else 0.0
