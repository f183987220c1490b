"""``method="kinks"``: a high-order integrator for the piecewise-smooth gradient flow.

The right-hand side of the flow (MODEL.md section 8) is smooth while no point
changes activation pattern, and jumps by one point's gradient contribution when
one does. Dormand-Prince applied straight to it is first order globally (every
step that straddles a change commits an error of order h * jump). Here:

* **Frozen patterns.** The stepper (SciPy's RK45 or DOP853, unchanged: its error
  control, step-size control and dense output) integrates the *frozen-pattern*
  flow: every point keeps the activation pattern it had at the start of the step
  (``kernels.crossing.frozen_gradient_kernel``: the gradient pass with the pattern
  as input, bit-identical to the ordinary pass where the pattern is the true one),
  a smooth ODE. The same pass flags the points whose pattern differs from the
  signs of their pre-activations at the step's end: O(N), streaming, deterministic.
* **Dips.** A point can cross a hyperplane and come back inside one step, which the
  end-point test cannot see. At each step's end one more pass over all points
  (``preacts_jvp_kernel``) gives the pre-activations and their rates along the
  velocity; a cubic Hermite test per coordinate between the step's two ends
  (``hermite_dips_kernel``) flags those that come within ``DIP_MARGIN`` of their end
  distances from the hyperplane. Flagged points join the end-point ones.
* **Crossing times.** For the flagged points only, the pre-activations are sampled
  along the step's dense output at ``_NODES`` Chebyshev-Lobatto nodes
  (``subset_preacts_kernel`` on an index list), interpolated, and every crossing
  located in order per point (``first_crossings``; a point may cross in several
  layers, or cross and cross back, within one step: after each crossing its pattern
  is switched and the rest of its path re-examined).
* **Events or bulk correction, chosen per step.** *Event mode* steps to the earliest
  crossing (polished with Brent's method on the dense output to round-off), switches
  the pattern there and restarts the stepper: exact, but a step per crossing.
  *Bulk mode* keeps the step and adds, for each crossing point, the integral of its
  gradient jump from its crossing time to the step's end (an interpolatory quadrature
  on the same nodes, ``subset_gradient_kernel`` with per-entry weights). Found on the
  frozen path, every crossing time is off by the earlier crossings' effect on the
  path (the leading error, ~ h^3 per step), so the crossings are re-found on the
  corrected path (frozen dense output plus the jumps' integrals up to each node, plus
  their feedback), ``BULK_REFINE`` passes of subset work only; points that cross only
  on the corrected path join. The crossings' feedback on the step's own stages is
  added to first order, ``J q1`` with ``q1 = sum_i int_{tau_i}^{t1} (t1 - s) jump_i(s) ds``
  (one evaluation: a difference of the frozen flow). The estimated error left (what
  another pass would still move, plus the next feedback term ||J|| ||J q1|| h / 4),
  in the max norm scaled as the stepper's and per unit of the flow's time scale
  1 / ||J||, must be below ``BULK_BUDGET``; otherwise a step with few crossings
  (<= ``_EVENT_MAX``) is located event by event and one with more is redone shorter,
  and the stepper's steps are held to the length the test allows.
* **Sliding modes.** At a located crossing every coordinate at that hyperplane is
  decided together: the crossing one, the sliding set, and every point whose
  pre-activation there is zero to round-off (points an earlier layer truncated onto a
  face that the hyperplane now contains reach it all at once). Their weights s_j in
  [0, 1] make ``g0 + sum_j s_j d_j`` (d_j the jump of point j's gradient contribution
  across its hyperplane) the minimal-norm element of the convex hull, by bounded least
  squares (BVLS; the weights nearest 1/2 when the d_j are rank-deficient): the Filippov
  velocity of MODEL.md section 5, tangent to every hyperplane whose weight is inside
  (0, 1). Those coordinates slide (held at ``a = 0``, treated as truncated in the frozen
  pattern); the others go to the side their weight is at. A weight that reaches a bound
  releases its point once the velocity has taken it off the plane on that side
  (timed by the unbounded weight crossing the bound, Brent's method along the dense
  output). Drift off the hyperplanes of the sliding coordinates is removed after every
  step by a Newton projection along their normals (n_j = d_j / c_j with
  c_j = |d_j|^2 / (d_j . grad a_j)), not accumulated.

Counts and choices are reported in ``result.config["kinks"]``; the sliding intervals
(point, layer, coordinate, entry time, exit time) in ``result.arrays["sliding_intervals"]``.
"""
from __future__ import annotations

import math
import time

import numpy as np
from scipy.integrate import DOP853, RK45
from scipy.optimize import brentq, lsq_linear

from ..compute import Gradient, aligned_scale_gradient, cumulative_to_layer_gradient, kernel_arrays, tile_arrays
from ..kernels import config
from ..kernels.crossing import (first_crossings, frozen_gradient_kernel, hermite_dips_kernel, preacts_jvp_kernel,
                                subset_gradient_kernel, subset_jvp_kernel, subset_preacts_kernel)
from ..kernels.forward import patterns_kernel
from .control import Interrupted, stop_reason as _stop_reason
from .integrate import _Evaluator

__all__ = ["run_kinks"]

#: Chebyshev-Lobatto nodes per step for crossing times and quadratures.
_NODES = 9
#: Points of the grid on which the interpolated pre-activations are scanned for sign changes
#: (local minima closer to the hyperplane than a quarter of the largest distance are polished).
_SCAN = 64
#: A coordinate whose cubic Hermite path (values and time derivatives at both ends of a step)
#: comes closer to its hyperplane than this share of its end distances is examined on the
#: step's dense output: it may cross and come back inside the step (a "dip").
DIP_MARGIN = 0.5
#: At most this many crossings in a step are located one by one (event mode) when bulk
#: correction does not pass the error test; with more the step is redone shorter instead.
_EVENT_MAX = 4
#: rtol at or below which DOP853 (8th order, 12 evaluations a step) is used instead of RK45
#: (5th order, 6). Where crossings limit the steps (bulk mode) the cheaper step wins: the README's
#: default job at rtol 1e-9 took 25,490 evaluations with DOP853 and 12,412 with RK45 (the two
#: 5e-10 apart); DOP853 pays only where smooth stretches dominate at the tightest tolerances.
_DOP853_BELOW = 1e-10
#: Pull of the sliding weights towards 1/2 when they are not unique (``_least_squares``).
SLIDE_REG = 1e-7
#: A sliding coordinate at a bound of its weight leaves when its rate away from the plane exceeds
#: this fraction of its jump's (``_exits``).
SLIDE_MARGIN = 1e-9
#: Share of the stepper's error budget the estimated error of a bulk correction may take.
BULK_BUDGET = 0.1
#: Passes that re-find the crossing times and jump integrals of a bulk-corrected step along its
#: corrected path (each contracts the error of the crossing times by about |moved| / |delta|).
BULK_REFINE = 2
#: Bulk correction allowed (False: every crossing is located; for experiments and benchmarks).
BULK = True
#: Bulk steps redone shorter in a row after which the step's first crossing is located instead
#: (crossings that do not thin out as the step shrinks: many points crossing at one instant).
_MAX_REDOS = 3
#: Zero-length events in a row after which the run stops (a degenerate tangency).
_MAX_STUCK = 200


class _At:
    """Parameters at one state and the kernels' arrays."""
    __slots__ = ("params", "tiles", "kern")

    def __init__(self, params, dataset, kind):
        self.params = params
        self.tiles = tile_arrays(params, dataset.targets, kind)
        self.kern = kernel_arrays(params)


class _Eval:
    __slots__ = ("cost", "g0", "v", "mismatch", "s", "D", "grad_norm")


class _Pieces:
    """Frozen-pattern evaluations of one FlowProblem, with the current pattern and sliding set."""

    def __init__(self, problem):
        self.problem = problem
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
        self.pat = patterns_kernel(ds.points, *kernel_arrays(p), config.chunk_size(self.N))
        self.sliding = []          # (i, l, k) held at a = 0, bit cleared in self.pat
        self.version = 0           # changes with pattern or sliding set: keys the caches
        self._at_cache = {}
        self._ev_cache = {}
        self.last_ev = None
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

    def changed(self):
        self.version += 1
        self._ev_cache.clear()

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

    def full(self, y):
        """Evaluation of the current mode at y (cached): cost, g0, velocity, mismatch flags, s."""
        key = y.tobytes()
        hit = self._ev_cache.get(key)
        if hit is not None:
            self.last_ev = hit
            return hit
        at = self.at(y)
        self.problem.n_evaluations += 1
        self.n_full += 1
        sq, gw, gb, gow, gob, mm = frozen_gradient_kernel(self.ds.points, self.ds.labels, self.pat, *at.tiles,
                                                          self.output, 1, self.chunk)
        ev = _Eval()
        ev.cost = float(sq.sum() / (2 * self.N))
        ev.g0 = self._vector(at.params, gw.sum(0)[0], gb.sum(0)[0], gow.sum(0)[0], gob.sum(0)[0])
        ev.mismatch = mm
        ev.s, ev.D = None, None
        if self.sliding:
            ev.D = self.jumps(at, self.sliding)
            ev.s = _least_squares(ev.D, ev.g0)
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
        """(n_slots, size) masked gradient vectors: sum over entries of weight * contribution."""
        gw, gb, gow, gob = subset_gradient_kernel(self.ds.points, self.ds.labels, np.asarray(idx, np.int64),
                                                  np.ascontiguousarray(pats), np.asarray(weights, np.float64),
                                                  np.asarray(slots, np.int64), *at.tiles, self.output, n_slots)
        if n_slots == 1:
            return self._vector(at.params, gw[0], gb[0], gow[0], gob[0])[None]
        return self._vectors(at.params, gw, gb, gow, gob)

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
        pats = np.empty((2 * n,) + self.pat.shape[1:], np.uint64)
        for j, (i, l, k) in enumerate(coords):
            base = self.pat[i].copy()
            idx[2 * j] = idx[2 * j + 1] = i
            pats[2 * j] = _set_bit(base, l, k, True)
            pats[2 * j + 1] = _set_bit(base, l, k, False)
        weights = np.tile([1.0, -1.0], n)
        return self.subset(at, idx, pats, weights, np.repeat(np.arange(n), 2), n).T

    def all_jvp(self, at, v):
        """(a, da) (N, L, M): every point's frozen-pattern pre-activations and their rate along velocity v."""
        dcw, dcb, dedges_t = self._tangents(at.params, v[None])
        return preacts_jvp_kernel(self.ds.points, self.pat, *at.kern, dcw[0], dcb[0], dedges_t[0],
                                  config.chunk_size(self.N))

    def preacts(self, at, idx, pats):
        return subset_preacts_kernel(self.ds.points, np.asarray(idx, np.int64), np.ascontiguousarray(pats),
                                     *at.kern)

    def jvp(self, at, idx, pats, dirs):
        """Frozen-pattern pre-activations of entries and their derivatives along dirs[e] (y-space)."""
        return subset_jvp_kernel(self.ds.points, np.asarray(idx, np.int64), np.ascontiguousarray(pats),
                                 *at.kern, *self._tangents(at.params, dirs))

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


def _set_bit(pat_i, l, k, free):
    out = pat_i.copy()
    bit = np.uint64(1) << np.uint64(k % 64)
    if free:
        out[l, k // 64] |= bit
    else:
        out[l, k // 64] &= ~bit
    return out


def _bit(pat_i, l, k):
    return bool((int(pat_i[l, k // 64]) >> (k % 64)) & 1)


def _least_squares(D, g0):
    """The sliding weights s in [0, 1]^n of the minimal-norm element g0 + D s of the convex hull
    (the Filippov velocity is -(g0 + D s); MODEL.md section 5): bounded least squares (BVLS).

    When D is rank-deficient (sliding points whose constraints coincide, e.g. many points on one
    face of an earlier layer that the hyperplane now contains) the velocity is still unique but s
    is not: a tiny pull towards s = 1/2 (weight SLIDE_REG relative to D's largest column) picks
    the solution nearest the middle, unique and continuous in the state, which changes the
    velocity by a relative SLIDE_REG**2 at most. A weight at 0 or 1 releases its point
    (``_Kinks._exits``).
    """
    n = D.shape[1]
    scale = float(np.sqrt(np.max(np.sum(D * D, axis=0)))) if n else 0.0
    if scale == 0.0:
        return np.full(n, 0.5)
    reg = SLIDE_REG * scale
    A = np.vstack([D, reg * np.eye(n)])
    b = np.concatenate([-g0, np.full(n, 0.5 * reg)])
    return lsq_linear(A, b, bounds=(0.0, 1.0), method="bvls", tol=1e-15).x


def _free_weights(D, g0):
    """The weights of ``_least_squares`` without the bounds (unregularized; nearest 1/2 when not
    unique): smooth in the state, so their crossing of a bound times a sliding exit."""
    half = np.full(D.shape[1], 0.5)
    ds, *_ = np.linalg.lstsq(D, -(g0 + D @ half), rcond=1e-12)
    return half + ds


class _Quadrature:
    """Chebyshev-Lobatto nodes on a step and interpolatory weights on sub-intervals."""

    def __init__(self, n):
        self.x = -np.cos(np.pi * np.arange(n) / (n - 1))
        V = np.vander(self.x, n, increasing=True)
        self.Vinv = np.linalg.inv(V)          # coefficients of the Lagrange basis (monomials in x)
        self.n = n
        self.powers = np.arange(n)

    def weights(self, xa, xb):
        """(m, n) int_{xa}^{xb} l_k(x) dx for arrays xa, xb (m,) in [-1, 1]."""
        j = np.arange(1, self.n + 1)
        mono = (_powers(xb, self.n)[:, 1:] - _powers(xa, self.n)[:, 1:]) / j     # (m, n) integrals of x^j
        return mono @ self.Vinv

    def moment_weights(self, xa, xb, n=1):
        """(m, K) int_{xa}^{xb} (1 - x)^n / n! l_k(x) dx (with (h/2)^(n+1): the quadrature of (t1 - s)^n / n!)."""
        from math import comb, factorial
        Pa, Pb = _powers(xa, self.n + n), _powers(xb, self.n + n)
        mono = np.zeros((xa.size, self.n))
        for r in range(n + 1):
            e = self.powers + r + 1
            mono += (comb(n, r) * (-1) ** r) * (Pb[:, e] - Pa[:, e]) / e
        return (mono / factorial(n)) @ self.Vinv


def _powers(x, m):
    """(len(x), m + 1): x^0 ... x^m."""
    P = np.empty((x.size, m + 1))
    P[:, 0] = 1.0
    for j in range(1, m + 1):
        P[:, j] = P[:, j - 1] * x
    return P


class _Stats(dict):
    def __init__(self, stepper):
        super().__init__(stepper=stepper, events_located=0, sliding_entries=0, sliding_exits=0,
                         corrected_crossings=0, bulk_steps=0, event_steps=0, shortened_steps=0, redone_steps=0,
                         projections=0, dip_candidates=0, unresolved_crossings=0, late_crossings=0, max_crossings_per_step=0)


def run_kinks(problem, t_end, schedule, recorder, opts, rules, callback, guard=None):
    """Integrate the flow locating activation-pattern changes (see the module docstring).

    ``guard``: the :class:`SignalGuard` of :func:`simulate` (signals stop the run
    between evaluations)."""
    return _Kinks(problem, t_end, schedule, recorder, opts, rules, callback, guard).run()


class _Kinks:
    def __init__(self, problem, t_end, schedule, recorder, opts, rules, callback, guard=None):
        self.problem = problem
        self.t_end = t_end
        self.recorder = recorder
        self.opts = opts
        self.rules = rules
        self.callback = callback
        self.pending = list(schedule[1:])
        self.rtol, self.atol = opts["rtol"], opts["atol"]
        self.Stepper = DOP853 if self.rtol <= _DOP853_BELOW else RK45
        self.stats = _Stats(self.Stepper.__name__)
        self.quad = _Quadrature(_NODES)
        self.counters = {"accepted": 0, "rejected": 0, "evaluations": 0}
        self.guard = guard
        self.rec_fun = _Evaluator(problem, self.guard)
        self.failure = None
        self.intervals = []     # [i, l, k, t_in, t_out]
        self._ends = None       # (pattern version, a, da) at the end of the last step ...
        self._ends_key = None   # ... and the state there (bytes)
        self._redos = 0         # bulk steps redone in a row
        self.h_cap = np.inf     # step limit from the last bulk test (relaxed by steps without crossings)

    # --------------------------------------------------------------- plumbing
    def fun(self, t, y):
        try:
            ev = self.pieces.full(y)
        except ValueError as exc:
            self.failure = (t, str(exc))
            v = np.full_like(y, np.nan)
        else:
            if not (math.isfinite(ev.cost) and math.isfinite(ev.grad_norm)):
                self.failure = (t, f"non-finite cost {ev.cost} or gradient norm {ev.grad_norm}")
            v = ev.v
        if self.guard is not None:
            self.guard.check()          # a signal stops the run here, between kernels (a failed
        return v                        # evaluation too: the stepper retries it with smaller steps)

    def record(self, t, y):
        armed = None
        if self.guard is not None:
            armed, self.guard.armed = self.guard.armed, False   # a record is never cut in half
        try:
            cost, gn = self.rec_fun.at(y)
            self.counters["evaluations"] = self.problem.n_evaluations
            self.counters["sliding"] = self._sliding_counts()
            self.recorder.record(float(t), self.problem.unpack(y), gn, self.counters)
        finally:
            if self.guard is not None:
                self.guard.armed = armed

    def _sliding_counts(self):
        """(L, Q) int64: points of each cluster held on a hyperplane of each layer (sliding)."""
        L, Q = self.problem.params.n_layers, self.problem.dataset.n_clusters
        counts = np.zeros((L, Q), dtype=np.int64)
        pieces = getattr(self, "pieces", None)
        if pieces is not None and pieces.sliding:
            pairs = np.array(sorted({(c[0], c[1]) for c in pieces.sliding}), dtype=np.int64)
            np.add.at(counts, (pairs[:, 1], self.problem.dataset.labels[pairs[:, 0]]), 1)
        return counts

    def start(self, t, y, h):
        if t >= self.t_end:
            return
        if h is not None:
            h = float(min(h, self.t_end - t))
            if not h > 0:
                h = None
        if h is not None:
            h = min(h, self.h_cap)
        self.solver = self.Stepper(self.fun, t, y, self.t_end, rtol=self.rtol, atol=self.atol,
                                   first_step=h, max_step=self.opts["max_step"] or np.inf)
        self._cap_steps()

    def _cap_steps(self):
        """Hold the stepper's steps to ``h_cap``, the longest step the last bulk test allowed."""
        self.solver.max_step = min(self.opts["max_step"] or np.inf, self.h_cap)

    def records_upto(self, t_hi, y_of_t, t_lo=-np.inf, inclusive=True):
        while self.pending and (self.pending[0] <= t_hi if inclusive else self.pending[0] < t_hi):
            tr = self.pending.pop(0)
            self.record(tr, y_of_t(tr))

    def err_norm(self, e, y0, y1):
        scale = self.atol + np.maximum(np.abs(y0), np.abs(y1)) * self.rtol
        return float(np.sqrt(np.mean((e / scale) ** 2)))

    # ----------------------------------------------------------------- the run
    def run(self):
        problem = self.problem
        started = time.monotonic()
        self.pieces = _Pieces(problem)
        y0 = problem.pack(problem.params)
        self.record(0.0, y0)
        self.last = _State(0.0, y0)
        status, detail = None, ""
        self.solver = None
        stuck = 0
        try:
            ev = self.pieces.full(y0)
            status = _stop_reason(ev.cost, ev.grad_norm, problem.n_evaluations, started, self.rules)
            if status is None:
                self.start(0.0, y0, self.opts["first_step"])
            while status is None:
                t0, ya = self.solver.t, self.solver.y
                nfev = self.solver.nfev
                message = self.solver.step()
                attempts = (self.solver.nfev - nfev) // self.solver.n_stages
                if self.solver.status == "failed":
                    if self.failure is not None:
                        status, detail = "diverged", (f"at t = {self.solver.t:.6g} the flow reached a state it "
                                                      f"cannot evaluate ({self.failure[1]})")
                    else:
                        status, detail = "failed", f"at t = {self.solver.t:.6g}: {message}"
                    break
                self.counters["rejected"] += max(attempts - 1, 0)
                self.failure = None
                t1, y1 = self.solver.t, self.solver.y
                progressed = self.after_step(t0, ya, t1, y1)
                if progressed is None:      # step redone shorter: no progress
                    continue
                t_new, y_new = progressed
                self._redos = 0
                stuck = stuck + 1 if t_new <= t0 else 0
                if stuck > _MAX_STUCK:
                    status, detail = "failed", f"at t = {t_new:.6g}: {_MAX_STUCK} events in a row without progress"
                    break
                self.counters["accepted"] += 1
                self.last = _State(t_new, y_new)
                ev = self.pieces.full(y_new)
                if not (math.isfinite(ev.cost) and math.isfinite(ev.grad_norm)):
                    status, detail = "diverged", f"at t = {t_new:.6g}: non-finite cost"
                    break
                if self.callback is not None:
                    self.callback(t_new, ev.cost)
                if t_new >= self.t_end:
                    status = "t_end"
                    break
                status = _stop_reason(ev.cost, ev.grad_norm, problem.n_evaluations, started, self.rules)
                if status is None and self.guard is not None:
                    self.guard.check()
        except Interrupted as exc:
            status, detail = "interrupted", f"signal {exc.signal_name}"
        except KeyboardInterrupt:
            status, detail = "interrupted", "KeyboardInterrupt"
        except Exception as exc:  # keep what was recorded; say what happened
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
        if self.guard is not None:
            self.guard.armed = False
        self._record_final(status)
        for it in self.intervals:
            if it[4] is None:
                it[4] = self.last.t
        result = self.recorder.result(status, detail)
        self.stats["evaluations"] = int(problem.n_evaluations)
        result.config["kinks"] = dict(self.stats)
        result.arrays["sliding_intervals"] = np.array([[float(v) for v in it] for it in self.intervals],
                                                      dtype=np.float64).reshape(-1, 5)
        return result

    def _record_final(self, status):
        """Record the last accepted state unless it is already the last record (as the rk45 loop does)."""
        t, y = self.last.t, self.last.y
        if status in ("diverged", "failed", "interrupted"):
            if not np.all(np.isfinite(y)):
                return
            try:
                self.problem.unpack(y)
            except ValueError:
                return
        if self.recorder.last_time is not None and t <= self.recorder.last_time:
            return
        try:
            self.record(t, y)
        except (Exception, Interrupted):   # a signal stopped the compilation of its kernels
            pass

    # -------------------------------------------------------- after each step
    def after_step(self, t0, ya, t1, y1):
        """Handle the accepted frozen step [t0, t1]. Returns the new (t, y), or None if redone."""
        pc = self.pieces
        ev = pc.full(y1)
        mism = self._candidates(ev, y1)
        cand = np.union1d(mism, self._dips(ya, t1 - t0, y1))
        exits = self._exits(ev, y1)
        if cand.size == 0 and not exits:
            return self._plain(t1, y1)
        dense = self.solver.dense_output()
        h = t1 - t0
        self.stats["max_crossings_per_step"] = max(self.stats["max_crossings_per_step"], int(cand.size))
        nodes_t = t0 + (self.quad.x + 1) * (h / 2)
        nodes_y = [ya] + [dense(t) for t in nodes_t[1:-1]] + [y1]
        segs, final_pats = self._paths(cand, nodes_t, nodes_y, t0, t1)
        # sliding exits: earliest time s_j leaves [0, 1]
        t_exit, j_exit, side_exit = self._exit_time(exits, dense, t0, t1) if exits else (np.inf, None, None)
        n_cross = len(segs)
        t_first = min((s[3] for s in segs), default=np.inf)
        if j_exit is not None and t_exit <= t_first:
            return self._event_exit(dense, t_exit, j_exit, side_exit, t0, h)
        if n_cross:
            if BULK:
                done = self._bulk_step(cand, segs, final_pats, nodes_t, nodes_y, dense, ya, y1, t0, t1)
                if done is False:
                    return None
                if done is not None:
                    return done
            return self._event_cross(dense, segs, t0, h)
        if mism.size == 0:
            return self._plain(t1, y1)      # only possible dips, and none crossed
        # flagged points whose crossings could not be placed: resynchronise at t1
        return self._resync(cand, t1, y1, h)

    def _plain(self, t1, y1):
        """Accept the step as it is (no pattern changed)."""
        if self.h_cap < np.inf:
            self.h_cap *= 1.5
            self._cap_steps()
        if self.pending and self.pending[0] <= t1:
            dense = self.solver.dense_output()
            self.records_upto(t1, lambda tr: y1 if tr == t1 else dense(tr))
        return t1, self._project(t1, y1)

    def _dips(self, ya, h, y1):
        """Points that may cross a hyperplane inside the step and come back (sliding points excepted).

        The end-point test (pattern against signs at y1) cannot see them. One pass over all
        points at y1 (pre-activations and their rates along the velocity, kept for the next
        step's start) and a cubic Hermite test per coordinate (``hermite_dips_kernel``).
        """
        pc = self.pieces
        if ya.tobytes() == self._ends_key and self._ends[0] == pc.version:
            _, a0, da0 = self._ends
        else:
            a0, da0 = pc.all_jvp(pc.at(ya), self.solver.K[0])
        a1, da1 = pc.all_jvp(pc.at(y1), self.solver.f)
        self._ends, self._ends_key = (pc.version, a1, da1), y1.tobytes()
        flags = hermite_dips_kernel(pc.pat, a0, da0, a1, da1, h, DIP_MARGIN, config.chunk_size(pc.N))
        if pc.sliding:
            flags[[c[0] for c in pc.sliding]] = 0
        found = np.flatnonzero(flags)
        self.stats["dip_candidates"] += int(found.size)
        return found

    def _candidates(self, ev, y):
        """Points whose pattern differs from their signs at y (sliding coordinates excepted)."""
        pc = self.pieces
        flags = ev.mismatch
        if not pc.sliding:
            return np.flatnonzero(flags)
        sl_pts = sorted({c[0] for c in pc.sliding})
        flags = flags.copy()
        flags[sl_pts] = 0
        cand = list(np.flatnonzero(flags))
        at = pc.at(y)
        a = pc.preacts(at, sl_pts, pc.pat[sl_pts])
        held = {(c[0], c[1], c[2]) for c in pc.sliding}
        for e, i in enumerate(sl_pts):
            for l in range(pc.L):
                for k in range(pc.M):
                    if (i, l, k) in held:
                        continue
                    if (a[e, l, k] > 0) != _bit(pc.pat[i], l, k):
                        cand.append(i)
                        break
                else:
                    continue
                break
        return np.array(sorted(set(cand)), dtype=np.int64)

    # --------------------------------------------------------- crossing paths
    def _paths(self, cand, nodes_t, nodes_y, t0, t1):
        """Crossings of the flagged points along the step, in order per point.

        Returns (segs, final_pats): segs a list of (point, l, k, tau, pattern after, x) sorted
        by tau (x: tau mapped to [-1, 1]); final_pats (n, L, W) the patterns at t1.
        """
        pc = self.pieces
        q = self.quad
        h = t1 - t0
        L, M = pc.L, pc.M
        LM = L * M
        ats = [pc.at(y) for y in nodes_y]
        n = cand.size
        pats = pc.pat[cand].copy()
        start = np.full(n, -1.0)                  # in x in [-1, 1]
        just = np.full(n, -1)                     # flat coordinate flipped last
        held = np.zeros((n, LM), bool)
        for (i, l, k) in pc.sliding:
            held[cand == i, l * M + k] = True
        active = np.arange(n)
        segs = []
        held_flat = held.reshape(n, LM)
        for _round in range(4 * LM + 4):
            if active.size == 0:
                break
            m = active.size
            vals = np.stack([pc.preacts(at, cand[active], pats[active]) for at in ats])   # (K, m, L, M)
            coef = q.Vinv @ vals.reshape(len(ats), m * LM)
            bits = _bits(pats[active], M).reshape(-1)
            thr = np.repeat(start[active], LM)
            jf = just[active]
            rows = np.flatnonzero(jf >= 0)
            thr[rows * LM + jf[rows]] += 1e-7
            roots, slope = first_crossings(np.ascontiguousarray(coef), thr, bits,
                                           np.ascontiguousarray(held_flat[active].reshape(-1)), _SCAN)
            slope = slope * (2.0 / h)                 # da/dt along the path at the crossing
            roots = roots.reshape(m, LM)
            slope = slope.reshape(m, LM)
            c = roots.argmin(axis=1)
            x = roots[np.arange(m), c]
            rr = np.flatnonzero(np.isfinite(x))
            e_ = active[rr]
            cc = c[rr]
            ll, kk = np.divmod(cc, M)
            pats[e_, ll, kk // 64] ^= np.left_shift(np.uint64(1), (kk % 64).astype(np.uint64))
            after = pats[e_]                                  # a copy (fancy indexing)
            taus = t0 + (x[rr] + 1) * h / 2
            sl = slope[rr, cc]
            segs.extend(zip(cand[e_].tolist(), ll.tolist(), kk.tolist(), taus.tolist(), after,
                            x[rr].tolist(), sl.tolist()))
            start[e_] = x[rr]
            just[e_] = cc
            active = e_.astype(np.int64)
        segs.sort(key=lambda s: s[3])
        return segs, pats

    # -------------------------------------------------------------- bulk mode
    def _jump_pieces(self, segs, xu):
        """Per crossing point, the pieces [x_a, x_b) of the step (clipped at xu, in [-1, 1]) after each
        of its crossings, as subset entries: (idx, pats, xa, xb, sign), two entries per piece (the
        pattern after, +1, and the pattern at the step's start, -1)."""
        pc = self.pieces
        by_point = {}
        for (i, l, k, tau, pat, x, _) in segs:
            by_point.setdefault(i, []).append((x, pat))
        idx, pats, xa, xb, sign = [], [], [], [], []
        for i, lst in by_point.items():
            base = pc.pat[i]
            for n_, (x, pat) in enumerate(lst):
                x_end = lst[n_ + 1][0] if n_ + 1 < len(lst) else 1.0
                a_, b_ = min(x, xu), min(x_end, xu)
                if b_ <= a_:
                    continue
                idx += [i, i]
                pats += [pat, base]
                xa += [a_, a_]
                xb += [b_, b_]
                sign += [1.0, -1.0]
        W = pc.pat.shape[1:]
        return (np.array(idx, np.int64), np.array(pats, np.uint64).reshape((-1,) + W), np.array(xa, float),
                np.array(xb, float), np.array(sign, float))

    def _bulk_step(self, cand, segs, final_pats, nodes_t, nodes_y, dense, ya, y1, t0, t1):
        """Correct the step in bulk when its estimated error passes; None: locate its first crossing.

        The step's value becomes y1 + delta + J q1: delta the crossings' velocity jumps
        integrated from their crossing times along the corrected path (``_corrected_path``),
        J q1 their feedback on the step to first order (q1 = int (t1 - s) jumps ds; J q1 a
        difference of the frozen flow, one evaluation). Error estimate (max norm, scaled as
        the stepper's): what another refinement of the path would still move, plus the next
        feedback term, about ||J|| ||J q1|| h / 4 (||J|| the larger of ||J q1|| / ||q1|| and a
        secant estimate along the step). Crossings of the sliding kind (their own jump turns
        their pre-activation back) are located, never corrected: the step is then corrected
        up to the first one. A step that fails is located event by event when it holds at
        most ``_EVENT_MAX`` crossings, else redone shorter (``_MAX_REDOS`` times in a row at
        most, then its first crossing is located). Returns the new (t, y), None (locate the
        first crossing) or False (redone: no progress).
        """
        h = t1 - t0
        path = self._corrected_path(cand, segs, final_pats, nodes_t, nodes_y, y1, t0, t1)
        if path is None:
            return None
        segs, final_pats, cand, nodes_c, delta, q1, jq1, shift = path
        n1 = np.linalg.norm(q1)
        r = max(np.linalg.norm(jq1) / n1 if n1 > 0 else 0.0, self._secant(ya, y1))
        scale = self.atol + np.maximum(np.abs(ya), np.abs(y1)) * self.rtol
        # per unit of the flow's time scale 1 / ||J||: the errors of many steps add up
        err = float(np.max((shift + r * np.abs(jq1) * (h / 4)) / scale)) / min(1.0, r * h)
        slide = self._sliding_kind(segs, y1)
        t_slide = min((sg[3] for sg, f in zip(segs, slide) if f), default=np.inf)
        grow = 0.9 * (BULK_BUDGET / err) ** (1.0 / 3.0) if err > 0 else 10.0
        if err <= BULK_BUDGET and t_slide == np.inf:
            self.h_cap = h * min(grow, 4.0)
            h_next = min(self.solver.h_abs, h * grow)
            return self._bulk_accept(segs, final_pats, cand, nodes_t, nodes_c, dense, t0, t1, y1,
                                     delta + jq1, h_next, jq1)
        if len(segs) <= _EVENT_MAX or (err > BULK_BUDGET and self._redos >= _MAX_REDOS):
            return None
        if err > BULK_BUDGET:
            # redo the step shorter (the stepper restarts at t0)
            self._redos += 1
            self.stats["redone_steps"] += 1
            self.h_cap = h * max(grow, 0.2)
            self.start(t0, ya, self.h_cap)
            return False
        t_u = t_slide                   # correct up to the first crossing of the sliding kind
        if t_u <= t0 + 1e-3 * h:
            return None
        self.stats["shortened_steps"] += 1
        return self._bulk_partial(segs, cand, nodes_t, nodes_c, dense, t0, t1, t_u, y1)

    def _corrected_path(self, cand, segs, final_pats, nodes_t, nodes_y, y1, t0, t1):
        """Crossing times and jump integrals re-found along the corrected path.

        The frozen path misplaces every crossing by the effect of the earlier ones (the
        leading error of a bulk step, ~ h^3 per step). At the nodes the corrected path is
        the frozen dense output plus E (the integrals of the jumps up to each node) plus
        the feedback (J applied to the moments Q up to each node, taken along J q1: each
        node's Q projected on q1). Pass 1 re-finds the crossings on the path without
        feedback; then J q1 is evaluated (one evaluation), points that cross on the
        corrected path though not on the frozen one join the candidates (one pass over all
        points: pre-activations at y1 and their change towards the corrected end, to first
        order), and ``BULK_REFINE - 1`` more passes follow on the path with feedback. Each
        pass contracts the crossing-time error by about |moved| / |delta|. Subset work only
        apart from the two passes named. Returns (segs, final_pats, cand, nodes, delta, q1,
        J q1, shift) with ``shift`` (size,) what one more pass would still move, or None
        when the feedback cannot be evaluated.
        """
        K = len(nodes_y)
        E, Q = self._node_deltas(segs, nodes_y, t0, t1)
        nodes_c, moves, jq1, fb = nodes_y, [], None, np.zeros(K)
        for _ in range(max(BULK_REFINE, 1)):
            trial = [nodes_y[m] + E[m] + fb[m] * (jq1 if jq1 is not None else 0.0) for m in range(K)]
            segs_n, pats_n = self._paths(cand, nodes_t, trial, t0, t1)
            if segs_n:
                E_n, Q_n = self._node_deltas(segs_n, trial, t0, t1)
                moves.append(np.abs(E_n[-1] - E[-1]))
                segs, final_pats, nodes_c, E, Q = segs_n, pats_n, trial, E_n, Q_n
            if jq1 is None:
                jq1 = self._frozen_difference(y1, Q[-1])
                if not np.all(np.isfinite(jq1)):
                    return None
                q1 = Q[-1]
                nq = float(q1 @ q1)
                fb = (Q @ q1) / nq if nq > 0 else np.zeros(K)
                late = self._late_candidates(cand, y1, y1 + E[-1] + jq1)
                if late.size:
                    self.stats["late_crossings"] += int(late.size)
                    cand = np.union1d(cand, late)
                    pos = np.searchsorted(cand, late)
                    final_pats = np.insert(final_pats, pos - np.arange(late.size), self.pieces.pat[late], axis=0)
            if not segs_n:
                break
        delta = E[-1]
        if not moves:
            shift = np.abs(delta)
        else:
            last = np.linalg.norm(moves[-1])
            before = np.linalg.norm(moves[-2]) if len(moves) > 1 else np.linalg.norm(delta)
            shift = moves[-1] * min(1.0, last / before if before > 0 else 1.0)
        return segs, final_pats, cand, nodes_c, delta, Q[-1], jq1, shift

    def _late_candidates(self, cand, y1, y_end):
        """Points outside ``cand`` whose sign at y_end (to first order from y1) differs from their pattern."""
        pc = self.pieces
        a1, da = pc.all_jvp(pc.at(y1), y_end - y1)
        free = _bits(pc.pat, pc.M)
        flip = np.any(((a1 + da) > 0) != free, axis=(1, 2))
        flip[cand] = False
        if pc.sliding:
            flip[[c[0] for c in pc.sliding]] = False
        return np.flatnonzero(flip)

    def _node_deltas(self, segs, nodes_y, t0, t1):
        """(E, Q): the crossings' velocity jumps integrated from t0 to each of the step's K nodes t_m,
        E[m] = int_{t0}^{t_m} jumps ds, and their first moments Q[m] = int_{t0}^{t_m} (t_m - s) jumps ds
        (both (K, size); E[-1] is the step's delta, Q[-1] its q1)."""
        pc, q = self.pieces, self.quad
        h = t1 - t0
        K = q.n
        size = self.problem.size
        idx, pats, xa, xb, sign = self._jump_pieces(segs, 1.0)
        n = idx.size
        if n == 0:
            return np.zeros((K, size)), np.zeros((K, size))
        a_ = np.minimum(xa[None, :], q.x[:, None]).ravel()
        b_ = np.minimum(xb[None, :], q.x[:, None]).ravel()
        W = q.weights(a_, b_).reshape(K, n, K) * (h / 2) * sign[None, :, None]
        W1 = q.moment_weights(a_, b_, 1).reshape(K, n, K) * (h / 2) ** 2 * sign[None, :, None]
        W = np.concatenate([W, W1], axis=0)                           # (2K, n, K): E, then int (t1 - s)
        e_idx, e_pats, slots = np.tile(idx, 2 * K), np.tile(pats, (2 * K, 1, 1)), np.repeat(np.arange(2 * K), n)
        out = np.zeros((2 * K, size))
        for kk, y in enumerate(nodes_y):
            g = pc.subset(pc.at(y), e_idx, e_pats, W[:, :, kk].ravel(), slots, 2 * K)
            out -= np.stack([self._project_velocity(r) for r in g]) if pc.sliding else g
        E = out[:K]
        tm = t0 + (q.x + 1) * (h / 2)
        Q = out[K:] - (t1 - tm)[:, None] * E
        return E, Q

    def _bulk_delta(self, segs, nodes_t, nodes_y, t0, t1, upper, moments=False):
        """(delta, q1): the integral over the step (up to ``upper``) of the crossings' velocity jumps,
        and (``moments``) its first moment q1 = int (t1 - s) jumps ds (None otherwise)."""
        pc = self.pieces
        q = self.quad
        h = t1 - t0
        xu = -1.0 + 2.0 * (upper - t0) / h
        idx, pats, xa, xb, sign = self._jump_pieces(segs, xu)
        size = self.problem.size
        if not idx.size:
            return np.zeros(size), (np.zeros(size) if moments else None)
        W = q.weights(xa, xb) * (h / 2) * sign[:, None]                 # (entries, K)
        delta = np.zeros(size)
        slots = np.zeros(idx.size, np.int64)
        if moments:
            W1 = q.moment_weights(xa, xb, 1) * (h / 2) ** 2 * sign[:, None]
            q1 = np.zeros(size)
        for kk, y in enumerate(nodes_y):
            at = pc.at(y)
            if moments:
                g2 = pc.subset(at, np.concatenate([idx, idx]), np.concatenate([pats, pats]),
                               np.concatenate([W[:, kk], W1[:, kk]]), np.concatenate([slots, slots + 1]), 2)
                delta -= self._project_velocity(g2[0])
                q1 -= self._project_velocity(g2[1])
            else:
                delta -= self._project_velocity(pc.subset(at, idx, pats, W[:, kk], slots, 1)[0])
        return delta, (q1 if moments else None)

    def _project_velocity(self, g):
        """A gradient change's effect on the velocity: itself, projected off the sliding normals."""
        pc = self.pieces
        if not pc.sliding:
            return g
        ev = pc.last_ev
        if ev is None or ev.D is None:
            return g
        D = ev.D[:, (ev.s > 0.0) & (ev.s < 1.0)]      # weights at a bound do not move with g
        if D.shape[1] == 0:
            return g
        s, *_ = np.linalg.lstsq(D, -g, rcond=1e-12)     # linear: the change of g off the normals
        return g + D @ s

    def _secant(self, ya, y1):
        """A secant estimate of the flow's Lipschitz constant along the step."""
        f0, f1 = self.solver.K[0], self.solver.f
        dy = np.linalg.norm(y1 - ya)
        return float(np.linalg.norm(f1 - f0) / dy) if dy > 0 else 0.0

    def _sliding_kind(self, segs, y):
        """Per crossing: whether its own velocity jump turns its pre-activation back (a sliding mode)."""
        pc = self.pieces
        n = len(segs)
        idx = np.array([s_[0] for s_ in segs], np.int64)
        new = np.array([s_[4] for s_ in segs], np.uint64)
        # the jump of each crossing point alone, from its pattern before to after this crossing
        before = new.copy()
        ls = np.array([s_[1] for s_ in segs], np.int64)
        ks = np.array([s_[2] for s_ in segs], np.int64)
        before[np.arange(n), ls, ks // 64] ^= np.left_shift(np.uint64(1), (ks % 64).astype(np.uint64))
        at = pc.at(y)
        ent_idx = np.repeat(idx, 2)
        ent_pat = np.empty((2 * n,) + new.shape[1:], np.uint64)
        ent_pat[0::2], ent_pat[1::2] = new, before
        jumps = pc.subset(at, ent_idx, ent_pat, np.tile([-1.0, 1.0], n), np.repeat(np.arange(n), 2), n)
        jumps = np.stack([self._project_velocity(j) for j in jumps]) if pc.sliding else jumps
        _, da = pc.jvp(at, idx, new, jumps)
        own = da[np.arange(n), ls, ks]
        slope = np.array([s_[6] for s_ in segs])
        kind = slope * (slope + own) <= 0.0
        return kind

    def _frozen_difference(self, y1, q):
        """J q: the change of the frozen (pre-crossing) velocity from y1 to y1 + q (one evaluation)."""
        if not np.any(q):
            return np.zeros_like(q)
        try:
            v1 = self.pieces.full(y1).v
            return self.pieces.full(y1 + q).v - v1
        except ValueError:
            return np.full_like(q, np.nan)

    def _bulk_partial(self, segs, cand, nodes_t, nodes_y, dense, t0, t1, t_u, y1):
        """Bulk-correct the crossings before t_u < t1 and continue from t_u (the rest of the step is dropped).

        The feedback term J q1 of [t0, t_u] uses the Jacobian at y1 (one evaluation)."""
        pc = self.pieces
        segs_u = [sg for sg in segs if sg[3] < t_u]
        y_u = dense(t_u)
        if segs_u:
            d_u, m_u = self._bulk_delta(segs_u, nodes_t, nodes_y, t0, t1, t_u, moments=True)
            jq = self._frozen_difference(y1, m_u - (t1 - t_u) * d_u)
            if not np.all(np.isfinite(jq)):
                jq = np.zeros_like(d_u)
            if self.pending and self.pending[0] <= t_u:
                self.records_upto(t_u, lambda tr: (dense(tr) + self._bulk_delta(segs_u, nodes_t, nodes_y, t0, t1, tr)[0]
                                                   + jq * ((tr - t0) / (t_u - t0)) ** 2))
            y_u = y_u + d_u + jq
            for sg in segs_u:                 # in time order: the last one of a point is its pattern at t_u
                pc.pat[sg[0]] = sg[4]
            pc.changed()
        elif self.pending and self.pending[0] <= t_u:
            self.records_upto(t_u, dense)
        self._sync(cand, y_u)
        self.stats["corrected_crossings"] += len(segs_u)
        self.stats["bulk_steps"] += 1
        y_u = self._project(t_u, y_u, restart=False)
        self.start(t_u, y_u, t_u - t0)
        return t_u, y_u

    def _bulk_accept(self, segs, final_pats, cand, nodes_t, nodes_y, dense, t0, t1, y1, delta, h, jq1=None):
        pc = self.pieces
        jq1_part = 0.0 if jq1 is None else jq1
        if self.pending and self.pending[0] <= t1:
            def y_of(tr):
                if tr == t1:
                    return y1 + delta
                d, _ = self._bulk_delta(segs, nodes_t, nodes_y, t0, t1, tr)
                return dense(tr) + d + jq1_part * ((tr - t0) / (t1 - t0)) ** 2
            self.records_upto(t1, y_of)
        y_new = y1 + delta
        pc.pat[cand] = final_pats
        pc.changed()
        # resynchronise with the true patterns at the corrected state
        self._sync(cand, y_new)
        self.stats["corrected_crossings"] += len(segs)
        self.stats["bulk_steps"] += 1
        y_new = self._project(t1, y_new, restart=False)
        self.start(t1, y_new, h)
        return t1, y_new

    def _sync(self, cand, y):
        """Set the listed points' patterns to their true patterns at y (sliding coordinates kept)."""
        pc = self.pieces
        at = pc.at(y)
        true = patterns_kernel(np.ascontiguousarray(pc.ds.points[cand]), *at.kern, config.chunk_size(cand.size))
        held = pc.sliding
        for (i, l, k) in held:
            w = np.flatnonzero(cand == i)
            if w.size:
                true[w[0]] = _set_bit(true[w[0]], l, k, False)
        diff = np.any(true != pc.pat[cand], axis=(1, 2))
        if diff.any():
            self.stats["unresolved_crossings"] += int(diff.sum())
            pc.pat[cand] = true
            pc.changed()

    def _resync(self, cand, t1, y1, h):
        self._sync(cand, y1)
        if self.pending and self.pending[0] <= t1:
            dense = self.solver.dense_output()
            self.records_upto(t1, lambda tr: y1 if tr == t1 else dense(tr))
        y_new = self._project(t1, y1, restart=False)
        self.start(t1, y_new, h)
        return t1, y_new

    # ------------------------------------------------------------- event mode
    def _event_cross(self, dense, segs, t0, h):
        """Step to the earliest crossing (polished on the dense output) and switch there."""
        pc = self.pieces
        i, l, k, tau, _, _, _ = segs[0]
        free_before = _bit(pc.pat[i], l, k)
        pat_i = pc.pat[i][None].copy()

        def a_of(t):
            return pc.preacts(pc.at(dense(t)), [i], pat_i)[0, l, k]

        # bracket around the polynomial root, then Brent to round-off
        side = lambda a: (a > 0) == free_before      # still on the old side
        lo, hi = t0, min(self.solver.t, tau + 0.05 * h)
        a_lo, a_hi = a_of(lo), a_of(hi)
        if side(a_hi) and hi < self.solver.t:
            hi = self.solver.t
            a_hi = a_of(hi)
        if not side(a_lo):
            t_star = lo
        elif side(a_hi):
            # no sign change seen: fall back to the polynomial root
            t_star = tau
        else:
            lo2, hi2 = max(lo, tau - 0.05 * h), hi
            if not side(a_of(lo2)):
                lo2 = lo
            r = brentq(a_of, lo2, hi2, xtol=1e-15 * max(1.0, abs(hi2)), rtol=4 * np.finfo(float).eps, maxiter=200)
            # the first time on the new side: step past the root by ulps until the sign has changed
            t_star = r
            for _ in range(60):
                if not side(a_of(t_star)) or t_star >= hi2:
                    break
                t_star = np.nextafter(t_star, np.inf) if _ < 8 else t_star + (t_star - r + 1e-300) * 2
            t_star = min(t_star, hi2)
        y_star = dense(t_star) if t_star < self.solver.t else self.solver.y
        self.records_upto(t_star, lambda tr: dense(tr), inclusive=False)
        self.stats["events_located"] += 1
        self.stats["event_steps"] += 1
        self._switch(t_star, y_star, [(i, l, k)])
        # any other flagged point already past its hyperplane here switches too
        self._sync_at_event(t_star, y_star)
        y_star = self._project(t_star, y_star, restart=False)
        self.start(t_star, y_star, max(self.solver.h_abs, h) if t_star > t0 else h)
        return t_star, y_star

    def _sync_at_event(self, t, y):
        pc = self.pieces
        ev = pc.full(y)
        cand = self._candidates(ev, y)
        if cand.size:
            at = pc.at(y)
            a = pc.preacts(at, cand, pc.pat[cand])
            held = {tuple(c[:3]) for c in pc.sliding}
            coords = []
            for e, i in enumerate(cand):
                for l in range(pc.L):
                    for k in range(pc.M):
                        if (int(i), l, k) not in held and (a[e, l, k] > 0) != _bit(pc.pat[i], l, k):
                            coords.append((int(i), l, k))
                            break
                    else:
                        continue
                    break
            if coords:
                self.stats["events_located"] += len(coords)
                self._switch(t, y, coords, located=False)

    def _switch(self, t, y, coords, located=True):
        """Switch the listed coordinates at (t, y): each to a side, or into the sliding set.

        Decided together (MODEL.md section 5, Filippov): the listed coordinates, the sliding set
        and every other point whose pre-activation on one of the listed hyperplanes is zero to
        round-off here (points an earlier layer truncated onto a face that the hyperplane now
        contains: they all meet it at once). Listed coordinates not ``located`` at their crossing
        (found past it at another's event) and not at their plane to round-off take the side their
        pre-activation is on. Of the others, a coordinate whose jump d_j = c_j n_j
        repels (c_j <= 0) takes the side its pre-activation is on; the others get weights s_j
        of the velocity -(g_base + sum s_j d_j), g_base with all of them truncated, found as
        ``_least_squares`` does (bounded): s_j in (0, 1) slides, s_j = 0 is truncated, 1 free
        (a point on the plane to round-off but on the other side of it is held as sliding).
        """
        pc = self.pieces
        at, ev = pc.at(y), pc.full(y)
        a_all, _ = pc.all_jvp(at, ev.v)
        zero = 64 * np.finfo(float).eps * max(1.0, float(np.max(np.abs(a_all))))
        listed = list(dict.fromkeys((int(i), int(l), int(k)) for (i, l, k) in coords))
        group = list(dict.fromkeys(listed + [tuple(c) for c in pc.sliding]
                                   + [(int(i), l, k) for (l, k) in {(c[1], c[2]) for c in listed}
                                      for i in np.flatnonzero(np.abs(a_all[:, l, k]) <= zero)]))
        was_sliding = {tuple(c) for c in pc.sliding}
        idx = np.array([c[0] for c in group], np.int64)
        D = pc.jumps(at, group)                                   # (size, n): free minus truncated
        _, dd = pc.jvp(at, idx, pc.pat[idx], D.T.copy())
        c_sign = np.array([dd[j, l, k] for j, (i, l, k) in enumerate(group)])      # c_j |n_j|^2
        free_now = np.array([_bit(pc.pat[i], l, k) for (i, l, k) in group])
        a_now = np.array([a_all[i, l, k] for (i, l, k) in group])
        # g0 holds each coordinate's current side (sliding ones truncated, their s_j aside)
        g_base = ev.g0 - D[:, free_now].sum(axis=1)
        to_free = np.zeros(len(group), bool)
        on_plane = np.abs(a_now) <= zero
        if located:
            on_plane[:len(listed)] = True
        on_plane[[j for j, c in enumerate(group) if c in was_sliding]] = True
        active = (c_sign > 0) & on_plane
        to_free[~active] = a_now[~active] > 0
        g_base = g_base + D[:, ~active & to_free].sum(axis=1)
        cols = np.flatnonzero(active)
        if cols.size:
            sj = _least_squares(D[:, cols], g_base)
            to_free[cols] = sj >= 0.5
            # at a bound: that side, unless the point sits on the plane to round-off on the other side;
            # then it is held there too, at its bound, until its velocity takes it off (``_exits``)
            wrong_side = (np.abs(a_now[cols]) <= zero) & ((a_now[cols] > 0) != to_free[cols])
            active[cols] = ((sj > 0.0) & (sj < 1.0)) | wrong_side
        pc.sliding = []                                           # rebuilt below, in group order
        for j, (i, l, k) in enumerate(group):
            if active[j]:
                pc.pat[i] = _set_bit(pc.pat[i], l, k, False)
                pc.sliding.append((i, l, k))
                if (i, l, k) not in was_sliding:
                    self.intervals.append([i, l, k, t, None])
                    self.stats["sliding_entries"] += 1
            else:
                pc.pat[i] = _set_bit(pc.pat[i], l, k, bool(to_free[j]))
                if (i, l, k) in was_sliding:
                    self._close_interval(i, l, k, t)
                    self.stats["sliding_exits"] += 1
        pc.changed()

    def _close_interval(self, i, l, k, t):
        for it in self.intervals:
            if it[0] == i and it[1] == l and it[2] == k and it[4] is None:
                it[4] = t

    # ------------------------------------------------------------ sliding set
    def _exits(self, ev, y):
        """Sliding indices to release at y (``ev`` its evaluation): a weight at its bound releases
        its point once the velocity has taken it off the plane on that side, i.e. its rate off
        the plane exceeds SLIDE_MARGIN of its jump's and its pre-activation is on that side
        (until then it is held at its bound and not projected back, ``_project``)."""
        pc = self.pieces
        if not pc.sliding or ev.s is None:
            return []
        at_bound = [j for j, s_j in enumerate(ev.s) if not 0.0 < s_j < 1.0]
        if not at_bound:
            return []
        held = [pc.sliding[j] for j in at_bound]
        n = len(held)
        idx = np.array([c[0] for c in held] * 2, np.int64)
        # rates along v and along the coordinate's own jump: n_j.v and n_j.d_j = c_j |n_j|^2
        a, dd = pc.jvp(pc.at(y), idx, pc.pat[idx], np.concatenate([np.repeat(ev.v[None], n, 0), ev.D[:, at_bound].T]))
        out = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for e, (j, (i, l, k)) in enumerate(zip(at_bound, held)):
                lean = dd[e, l, k] / dd[n + e, l, k]         # > 0: towards the free side, in units of the jump
                if (ev.s[j] >= 1.0 and lean > SLIDE_MARGIN and a[e, l, k] > 0.0) or \
                        (ev.s[j] <= 0.0 and lean < -SLIDE_MARGIN and a[e, l, k] <= 0.0):
                    out.append(j)
        return out

    def _exit_time(self, exits, dense, t0, t1):
        """(t, j, to_free): the earliest exit among ``exits`` (sliding indices whose weight is at a
        bound at the step's end t1). Timed by the unbounded weight (``_free_weights``, smooth in t)
        crossing the bound when it does within the step; a weight at its bound all along (held at
        the plane until its velocity took it off) exits at t1; otherwise at the bounded weight's
        crossing."""
        pc = self.pieces
        y_of = lambda t: dense(t) if t < self.solver.t else self.solver.y
        best = (np.inf, None, None)
        for j in exits:
            bound = 1.0 if pc.full(y_of(t1)).s[j] >= 1.0 else 0.0
            away = (lambda x: x > 0) if bound == 1.0 else (lambda x: x < 0)

            def free(t):
                ev = pc.full(y_of(t))
                return _free_weights(ev.D, ev.g0)[j] - bound

            def bounded(t):
                return pc.full(y_of(t)).s[j] - bound
            xtol = 1e-14 * max(1.0, abs(t1))
            if bounded(t0) == 0.0:
                te = t1
            elif away(bounded(t0)):
                te = t0
            elif not away(free(t0)) and away(free(t1)):
                te = brentq(free, t0, t1, xtol=xtol, rtol=4 * np.finfo(float).eps)
            else:
                te = brentq(bounded, t0, t1, xtol=xtol, rtol=4 * np.finfo(float).eps) if bounded(t1) != 0.0 else t1
            if te < best[0]:
                best = (te, j, bound == 1.0)
        return best

    def _event_exit(self, dense, t_exit, j, to_free, t0, h):
        pc = self.pieces
        y_e = dense(t_exit) if t_exit < self.solver.t else self.solver.y
        self.records_upto(t_exit, lambda tr: dense(tr), inclusive=False)
        released = [(j, to_free)]
        if t_exit >= self.solver.t:         # at the step's end: every coordinate that left by then goes
            ev = pc.full(self.solver.y)
            released = [(e, bool(ev.s[e] >= 1.0)) for e in self._exits(ev, self.solver.y)] or released
        for e, free in sorted(released, reverse=True):
            i, l, k = pc.sliding.pop(e)
            pc.pat[i] = _set_bit(pc.pat[i], l, k, free)
            self._close_interval(i, l, k, t_exit)
            self.stats["sliding_exits"] += 1
        pc.changed()
        y_e = self._project(t_exit, y_e, restart=False)
        self.start(t_exit, y_e, h)
        return t_exit, y_e

    def _project(self, t, y, restart=True):
        """Newton projection of y onto the hyperplanes a_j = 0 of the sliding coordinates with weights
        inside (0, 1) (when it drifted)."""
        pc = self.pieces
        if not pc.sliding:
            return y
        tol = 1e-3 * min(self.atol, self.rtol)
        ev = pc.full(y)
        held = [c for c, s_j in zip(pc.sliding, ev.s) if 0.0 < s_j < 1.0]   # at a bound: free to leave
        if not held:
            return y
        idx = [c[0] for c in held]
        y_new = y
        for _ in range(3):
            at = pc.at(y_new)
            pats = pc.pat[idx]
            a = pc.preacts(at, idx, pats)
            av = np.array([a[j, l, k] for j, (i, l, k) in enumerate(held)])
            if np.max(np.abs(av)) <= tol:
                break
            D = pc.jumps(at, held)                                    # (size, n) = c_j n_j
            _, dd = pc.jvp(at, idx, pats, D.T.copy())
            dda = np.array([dd[j, l, k] for j, (i, l, k) in enumerate(held)])  # c_j |n_j|^2
            nn = np.sum(D * D, axis=0)
            ok = (nn > 0) & (dda != 0)
            if not ok.any():
                break
            Nrm = D[:, ok] * (dda[ok] / nn[ok])[None, :]             # n_j = d_j / c_j
            mu = np.linalg.lstsq(Nrm.T @ Nrm, -av[ok], rcond=None)[0]
            y_new = y_new + Nrm @ mu
        if y_new is not y:
            self.stats["projections"] += 1
            if restart:
                self.start(t, y_new, self.solver.h_abs)
        return y_new


class _State:
    __slots__ = ("t", "y")

    def __init__(self, t, y):
        self.t, self.y = t, y


def _bits(pats, M):
    """(n, L, M) bool: the free bits of bit-packed patterns (n, L, W)."""
    k = np.arange(M)
    words = pats[:, :, k // 64]
    return ((words >> (k % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)
