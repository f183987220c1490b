"""The crossing locator: which points change pattern within a step, where, and when exactly.

* **Dips.** A point can cross a hyperplane and come back inside one step, which the end-point
  test cannot see: :meth:`FrozenModel.dips` (a cubic Hermite test per coordinate between the
  step's two ends) flags those that come within ``KinkOptions.dip_margin`` of their end distances.
* **Crossing times.** For the flagged points only, the pre-activations are sampled along the
  step's dense output at ``KinkOptions.nodes`` Chebyshev-Lobatto nodes (:class:`Quadrature`),
  interpolated, and every crossing located in order per point (:func:`crossing_paths`; a point may
  cross in several layers, or cross and cross back, within one step: after each crossing its
  pattern is switched and the rest of its path re-examined). Each is a :class:`Crossing`.
* **Events.** :func:`polish_crossing` places one crossing to round-off with Brent's method on the
  dense output (SciPy ``solve_event_equation``'s role); :func:`past_planes` finds the other points
  already past their hyperplane there.

Functions of explicit inputs: the model is read, never changed.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq

from ...kernels.crossing import first_crossings, serial_matmul
from .bits import bit, bits

__all__ = ["Crossing", "Quadrature", "crossing_paths", "candidates", "late_candidates", "polish_crossing",
           "past_planes"]


class Crossing(NamedTuple):
    """One crossing of a hyperplane by a point within a step."""
    point: int           #: the point's index
    layer: int           #: the hyperplane's layer l (0-based)
    coord: int           #: its coordinate k
    tau: float           #: the crossing time
    pattern: np.ndarray  #: (L, W) the point's pattern after the crossing
    x: float             #: tau mapped to [-1, 1] on the step
    slope: float         #: da/dt along the path at the crossing


#: A pre-activation within ON_PLANE * max(1, max |a|) of zero is on its hyperplane to round-off.
ON_PLANE = 64 * np.finfo(float).eps


def crossing_paths(model, quad, cand, nodes_t, nodes_y, t0, t1, scan):
    """Crossings of the flagged points along the step, in order per point.

    ``cand`` the points, ``nodes_y`` the states at the step's nodes ``nodes_t`` (``quad``'s
    Chebyshev-Lobatto nodes on [t0, t1]), ``scan`` the points of the grid scanned for sign
    changes. Returns (crossings, final_pats): a list of :class:`Crossing` sorted by time;
    final_pats (n, L, W) the patterns at t1.
    """
    pc = model
    q = quad
    h = t1 - t0
    L, M = pc.L, pc.M
    LM = L * M
    ats = [pc.at(y) for y in nodes_y]
    n = cand.size
    pats = pc.pattern(cand)
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
        if _round == 0:     # on the plane to round-off all along the step: no side to cross to
            flat = np.abs(vals).reshape(len(ats), n, LM)
            held_flat |= np.max(flat, axis=0) <= ON_PLANE * max(1.0, float(np.max(flat)))
        coef = serial_product(q.Vinv, vals.reshape(len(ats), m * LM))
        free = bits(pats[active], M).reshape(-1)
        thr = np.repeat(start[active], LM)
        jf = just[active]
        rows = np.flatnonzero(jf >= 0)
        thr[rows * LM + jf[rows]] += 1e-7
        roots, slope = first_crossings(np.ascontiguousarray(coef), thr, free,
                                       np.ascontiguousarray(held_flat[active].reshape(-1)), scan)
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
        segs.extend(map(Crossing._make, zip(cand[e_].tolist(), ll.tolist(), kk.tolist(), taus.tolist(), after,
                                            x[rr].tolist(), sl.tolist())))
        start[e_] = x[rr]
        just[e_] = cc
        active = e_.astype(np.int64)
    segs.sort(key=lambda s: s.tau)
    return segs, pats



def candidates(model, ev, y):
    """Points whose pattern differs from their signs at y (sliding coordinates excepted)."""
    pc = model
    if not pc.sliding:
        return ev.flagged
    sl_pts = sorted({c[0] for c in pc.sliding})
    cand = list(np.setdiff1d(ev.flagged, sl_pts))
    at = pc.at(y)
    sl_pats = pc.pattern(np.array(sl_pts, np.int64))
    a = pc.preacts(at, sl_pts, sl_pats)
    held = {(c[0], c[1], c[2]) for c in pc.sliding}
    for e, i in enumerate(sl_pts):
        for l in range(pc.L):
            for k in range(pc.M):
                if (i, l, k) in held:
                    continue
                if (a[e, l, k] > 0) != bit(sl_pats[e], l, k):
                    cand.append(i)
                    break
            else:
                continue
            break
    return np.array(sorted(set(cand)), dtype=np.int64)



def late_candidates(model, cand, y1, y_end):
    """Points outside ``cand`` whose sign at y_end (to first order from y1) differs from their pattern."""
    return model.flips(y1, y_end - y1, cand)


class Quadrature:
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
        mono = (powers(xb, self.n)[:, 1:] - powers(xa, self.n)[:, 1:]) / j     # (m, n) integrals of x^j
        return serial_product(mono, self.Vinv)

    def moment_weights(self, xa, xb, n=1):
        """(m, K) int_{xa}^{xb} (1 - x)^n / n! l_k(x) dx (with (h/2)^(n+1): the quadrature of (t1 - s)^n / n!)."""
        from math import comb, factorial
        Pa, Pb = powers(xa, self.n + n), powers(xb, self.n + n)
        mono = np.zeros((xa.size, self.n))
        for r in range(n + 1):
            e = self.powers + r + 1
            mono += (comb(n, r) * (-1) ** r) * (Pb[:, e] - Pa[:, e]) / e
        return serial_product(mono / factorial(n), self.Vinv)


def serial_product(a, b):
    """a @ b without BLAS. The products of the integrator's steps are small, but large enough
    for a multithreaded BLAS (OpenBLAS, MKL) to run them on its own threads, which then spin
    for milliseconds after the call and take the cores from the next compiled pass over the
    points: measured, one 18 x 2,000 x 64 product made the next frozen-pattern pass at
    N = 2e5 3.6x slower (9.3 ms instead of 2.5). ``kernels.crossing.serial_matmul`` runs in the
    calling thread."""
    return serial_matmul(np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64))


def powers(x, m):
    """(len(x), m + 1): x^0 ... x^m."""
    P = np.empty((x.size, m + 1))
    P[:, 0] = 1.0
    for j in range(1, m + 1):
        P[:, j] = P[:, j - 1] * x
    return P



def polish_crossing(model, dense, crossing, t0, t_end_step, y_end_step, h):
    """(t*, y*): the first time on the new side of ``crossing`` (found at tau on the step's
    interpolant), polished on the dense output: a bracket around tau, Brent's method to round-off,
    then past the root by ulps until the sign has changed. ``t_end_step``, ``y_end_step``: the
    step's end (the state there is the stepper's, not the dense output's)."""
    pc = model
    i, l, k, tau = crossing.point, crossing.layer, crossing.coord, crossing.tau
    pat_i = pc.pattern(np.array([i], np.int64))
    free_before = bit(pat_i[0], l, k)

    def a_of(t):
        return pc.preacts(pc.at(dense(t)), [i], pat_i)[0, l, k]

    # bracket around the polynomial root, then Brent to round-off
    side = lambda a: (a > 0) == free_before      # still on the old side
    lo, hi = t0, min(t_end_step, tau + 0.05 * h)
    a_lo, a_hi = a_of(lo), a_of(hi)
    if side(a_hi) and hi < t_end_step:
        hi = t_end_step
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
    y_star = dense(t_star) if t_star < t_end_step else y_end_step
    return t_star, y_star


def past_planes(model, y):
    """Coordinates (i, l, k), one per point at most (its first), of points whose pattern differs from
    their signs at y outside the sliding set: found past their hyperplane at another's event."""
    pc = model
    ev = pc.full(y)
    cand = candidates(pc, ev, y)
    coords = []
    if cand.size:
        at = pc.at(y)
        pats = pc.pattern(cand)
        a = pc.preacts(at, cand, pats)
        held = {tuple(c[:3]) for c in pc.sliding}
        for e, i in enumerate(cand):
            for l in range(pc.L):
                for k in range(pc.M):
                    if (int(i), l, k) not in held and (a[e, l, k] > 0) != bit(pats[e], l, k):
                        coords.append((int(i), l, k))
                        break
                else:
                    continue
                break
    return coords
