"""Exact event-driven solution of the threshold equation (MODEL.md section 9).

Each problem is one threshold ``t`` (one layer, one coordinate) acting on the
sorted coordinates ``w`` of the points it sees, each point with the target
coordinate ``eta`` of its cluster. With ``n_c(t)`` the number of points of
cluster c with ``w <= t`` (a point on the threshold counts as truncated),

    dt/ds = kappa(t) * F(t) / N,      F(t) = sum_c n_c(t) (eta_c - t),
    kappa = 1 / lambda^2              (biases flow, lambda frozen),
    kappa = (1 + t^2)^2 / r^2         (weights and biases flow, r^2 = lambda^2 + b^2 conserved).

Between events (while every ``n_c`` is constant) ``t`` relaxes toward
``t* = sum_c n_c eta_c / sum_c n_c`` in closed form: exponentially for the
biases flow, along the partial-fraction antiderivative of
``1 / ((1 + t^2)^2 (t - t*))`` for the other. A scalar autonomous flow is
monotone, so each threshold moves one way only; it stops for good at a data
value where the force changes sign (a sliding point: the Filippov solution
stays on the hyperplane) and never moves with no point truncated.
"""
import math

import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS

#: Bisection steps of the value solve; each halves the bracket (53 reach round-off).
_BISECTIONS = 200


#: Gauss-Legendre rule for the far field of the antiderivative (see ``delta_antiderivative``).
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)
#: Beyond ``|s| = _FAR * (1 + |a|)`` the closed form cancels: integrate in u = 1/s instead.
_FAR = 4.0


@njit(**JIT_OPTIONS)
def _closed_form(t, x, a):
    """``G(x) - G(t)`` by partial fractions, with ``d = 1 + a^2``:
    ``1/((s-a)(1+s^2)^2) = 1/(d^2 (s-a)) - (s+a)/(d^2 (1+s^2)) - (s+a)/(d (1+s^2)^2)``,
    each difference written without cancellation between its own two ends."""
    h = x - t
    d = 1.0 + a * a
    pt = 1.0 + t * t
    px = 1.0 + x * x
    d_log = math.log1p(h / (t - a))                   # ln|x - a| - ln|t - a|
    d_log2 = 0.5 * math.log1p(h * (x + t) / pt)       # (ln(1 + x^2) - ln(1 + t^2)) / 2
    d_atan = math.atan2(h, 1.0 + x * t)               # atan x - atan t
    d_inv = -h * (x + t) / (px * pt)                  # 1/(1+x^2) - 1/(1+t^2)
    d_frac = h * (1.0 - x * t) / (px * pt)            # x/(1+x^2) - t/(1+t^2)
    return (d_log - d_log2 - a * d_atan) / (d * d) - (-0.5 * d_inv + 0.5 * a * d_frac + 0.5 * a * d_atan) / d


@njit(**JIT_OPTIONS)
def _far_field(t, x, a):
    """``G(x) - G(t)`` for t, x on the same side with ``|s| >= _FAR (1 + |a|)``: in u = 1/s the
    integrand is ``-u^3 / ((1 + u^2)^2 (1 - a u))``, smooth on the short interval between
    1/t and 1/x (``|a u| <= 1/4``), where a 24-point Gauss-Legendre rule is exact to round-off."""
    u0 = 1.0 / t
    u1 = 1.0 / x
    mid = 0.5 * (u0 + u1)
    half = 0.5 * (u1 - u0)
    acc = 0.0
    for i in range(_GL_NODES.shape[0]):
        u = mid + half * _GL_NODES[i]
        q = 1.0 + u * u
        acc += _GL_WEIGHTS[i] * (-u * u * u / (q * q * (1.0 - a * u)))
    return half * acc


@njit(**JIT_OPTIONS)
def delta_antiderivative(t, x, a):
    """``G(x) - G(t)`` with ``G' = 1 / ((1 + s^2)^2 (s - a))``, for t, x on the same side of a.

    Near a and the origin (``|s| < B = _FAR (1 + |a|)``) the partial-fraction closed form is
    accurate; far out its terms are much larger than their sum, so the part of [t, x]
    beyond B (it meets at most one side: a lies strictly between -B and B) is integrated
    in u = 1/s instead.
    """
    B = _FAR * (1.0 + abs(a))
    lo, hi = (t, x) if t <= x else (x, t)
    sign = 1.0 if t <= x else -1.0
    if hi <= B and lo >= -B:
        return _closed_form(t, x, a)
    if lo >= B or hi <= -B:
        return sign * _far_field(lo, hi, a)
    if hi > B:                                   # [lo, B] near, [B, hi] far
        return sign * (_closed_form(lo, B, a) + _far_field(B, hi, a))
    return sign * (_far_field(lo, -B, a) + _closed_form(-B, hi, a))   # [lo, -B] far, [-B, hi] near


@njit(**JIT_OPTIONS)
def _time_to(t, x, a, rate, biases_only):
    """Flow time for the threshold to go from t to x (between t and a) at ``rate = n / (N c)``.

    ``c = lambda^2`` (biases) or ``r^2`` (all); ``dt/ds = -rate * k(t) (t - a)`` with
    ``k = 1`` (biases) or ``(1 + t^2)^2`` (all).
    """
    if biases_only:
        return -math.log1p((x - t) / (t - a)) / rate
    return -delta_antiderivative(t, x, a) / rate


@njit(**JIT_OPTIONS)
def _value_after(t, a, rate, biases_only, tau, end):
    """The threshold a time tau after it was at t, moving toward a; ``end`` bounds it (a or the next event)."""
    if tau <= 0.0:
        return t
    if biases_only:
        return a + (t - a) * math.exp(-rate * tau)
    # Solve G(x) - G(t) = -rate * tau for x between t and end: G - G(t) is monotone there.
    lo, hi = t, end
    target = -rate * tau
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if mid == lo or mid == hi:
            break
        # |G(mid) - G(t)| grows as mid moves from t toward a
        if abs(delta_antiderivative(t, mid, a)) < abs(target):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@njit(**JIT_OPTIONS)
def _force(counts, eta, t):
    """``F(t) = sum_c n_c (eta_c - t)`` and ``n = sum_c n_c``."""
    f = 0.0
    n = 0
    for c in range(counts.shape[0]):
        if counts[c] > 0:
            f += counts[c] * (eta[c] - t)
            n += counts[c]
    return f, n


@njit(**JIT_OPTIONS)
def _target(counts, eta):
    """``t* = sum_c n_c eta_c / sum_c n_c``."""
    s = 0.0
    n = 0
    for c in range(counts.shape[0]):
        if counts[c] > 0:
            s += counts[c] * eta[c]
            n += counts[c]
    return s / n


@njit(parallel=True, **JIT_OPTIONS)
def threshold_events_kernel(w, cls, eta, offsets, t0, coef, biases_only, frozen, walls, n_total,
                            record_times, trunc_time):
    """Solve every threshold problem exactly from s = 0 through the last record time.

    Args:
        w (K,) float64: the points' coordinates, problem p in ``w[offsets[p]:offsets[p+1]]``
            sorted ascending.
        cls (K,) int64: each point's cluster (index into ``eta[p]``).
        eta (n_problems, Q) float64: the clusters' target coordinates per problem.
        offsets (n_problems + 1,) int64.
        t0 (n_problems,): initial thresholds. coef (n_problems,): ``lambda^2`` (biases
            flow) or ``r^2 = lambda^2 + b^2`` (all). frozen (n_problems,) bool: thresholds
            that do not move. walls (n_problems,): the threshold must stay below this
            value (the lowest point of a cluster the layer must not truncate; inf for none).
        n_total: N, the number of points of the whole dataset.
        record_times (T,) ascending, >= 0.
        trunc_time (K,) float64, written: first time each point is truncated
            (``w <= t``), 0 if at the start, inf if never up to the last record time.

    Returns:
        values (n_problems, T): the threshold at each record time.
        events (n_problems, T) int64: events processed before each record time.
        wall_time (n_problems,): when the threshold reaches its wall (inf if not before
            the last record time); values after it are not meaningful.
    """
    n_problems = offsets.shape[0] - 1
    T = record_times.shape[0]
    Q = eta.shape[1]
    values = np.empty((n_problems, T))
    events = np.zeros((n_problems, T), dtype=np.int64)
    wall_time = np.full(n_problems, np.inf)
    s_last = record_times[T - 1] if T > 0 else 0.0
    for pr in prange(n_problems):
        lo_i, hi_i = offsets[pr], offsets[pr + 1]
        for i in range(lo_i, hi_i):
            trunc_time[i] = np.inf
        counts = np.zeros(Q, dtype=np.int64)
        t = t0[pr]
        p = lo_i                          # points [lo_i, p) are truncated
        while p < hi_i and w[p] <= t:
            counts[cls[p]] += 1
            trunc_time[p] = 0.0
            p += 1
        direction = 0
        if not frozen[pr]:
            f, n = _force(counts, eta[pr], t)
            if f > 0.0:
                direction = 1
            elif f < 0.0:
                # moving down frees the points exactly on the threshold at once
                q = p
                while q > lo_i and w[q - 1] == t:
                    q -= 1
                for i in range(q, p):
                    counts[cls[i]] -= 1
                f2, n2 = _force(counts, eta[pr], t)
                if n2 > 0 and f2 < 0.0:
                    direction = -1
                    p = q
                else:
                    for i in range(q, p):
                        counts[cls[i]] += 1
        if direction > 0 and walls[pr] <= t:
            wall_time[pr] = 0.0
        s = 0.0
        n_events = 0
        rate_coef = coef[pr] * n_total
        r = 0
        while r < T:
            if direction == 0:
                while r < T:
                    values[pr, r] = t
                    events[pr, r] = n_events
                    r += 1
                break
            f, n = _force(counts, eta[pr], t)
            a = _target(counts, eta[pr])
            rate = n / rate_coef
            if direction > 0:
                nxt = w[p] if p < hi_i else np.inf
                reached = nxt < a
            else:
                nxt = w[p - 1]
                reached = nxt > a
            # the wall (moving up only) is an event of its own when it comes first
            hit_wall = direction > 0 and walls[pr] < a and walls[pr] <= nxt and wall_time[pr] == np.inf
            s_event = s + _time_to(t, nxt, a, rate, biases_only) if reached else np.inf
            if hit_wall:
                s_wall = s + _time_to(t, walls[pr], a, rate, biases_only)
                if s_wall <= s_last:
                    wall_time[pr] = s_wall
            end = nxt if reached else a
            while r < T and record_times[r] < s_event:
                values[pr, r] = _value_after(t, a, rate, biases_only, record_times[r] - s, end)
                events[pr, r] = n_events
                r += 1
            if r == T:
                break
            # the event: t reaches nxt at s_event
            s = s_event
            t = nxt
            n_events += 1
            if direction > 0:
                while p < hi_i and w[p] <= t:
                    counts[cls[p]] += 1
                    trunc_time[p] = s
                    p += 1
                f, n = _force(counts, eta[pr], t)
                if f <= 0.0:
                    direction = 0         # sliding: the flow pushes back from above
            else:
                q = p - 1
                while q > lo_i and w[q - 1] == t:
                    q -= 1
                for i in range(q, p):
                    counts[cls[i]] -= 1
                f, n = _force(counts, eta[pr], t)
                if n > 0 and f < 0.0:
                    p = q
                else:
                    direction = 0         # stays on the hyperplane (a point there counts as truncated)
                    for i in range(q, p):
                        counts[cls[i]] += 1
    return values, events, wall_time


@njit(parallel=True, **JIT_OPTIONS)
def sort_problem_rows(w_rows, labels, w_out, cls_out, point_out):
    """Sort each row of ``w_rows`` (P, n) ascending, in parallel over rows.

    Writes ``w_out`` (P * n,) the sorted values row after row, ``cls_out`` the
    labels of the points in that order and ``point_out`` their column indices.
    """
    P, n = w_rows.shape
    for p in prange(P):
        order = np.argsort(w_rows[p])
        base = p * n
        for j in range(n):
            i = order[j]
            w_out[base + j] = w_rows[p, i]
            cls_out[base + j] = labels[i]
            point_out[base + j] = i
