"""The Filippov projector: sliding weights, the switch at a crossing, sliding exits, projections.

At a located crossing every coordinate at that hyperplane is decided together: the crossing one,
the sliding set, and every point whose pre-activation there is zero to round-off (points an earlier
layer truncated onto a face that the hyperplane now contains reach it all at once). Their weights
s_j in [0, 1] make ``g0 + sum_j s_j d_j`` (d_j the jump of point j's gradient contribution across
its hyperplane) the minimal-norm element of the convex hull, by bounded least squares (BVLS; the
weights nearest 1/2 when the d_j are rank-deficient): the Filippov velocity of MODEL.md section 5,
tangent to every hyperplane whose weight is inside (0, 1). Those coordinates slide (held at
``a = 0``, treated as truncated in the frozen pattern); the others go to the side their weight is
at. A weight that reaches a bound releases its point once the velocity has taken it off the plane
on that side (timed by the unbounded weight crossing the bound, Brent's method along the dense
output). Drift off the hyperplanes of the sliding coordinates is removed after every step by a
Newton projection along their normals (n_j = d_j / c_j with c_j = |d_j|^2 / (d_j . grad a_j)).

Functions of explicit inputs: the model (:class:`~.model.FrozenModel`) is read, never changed;
the caller applies what they return through the model's methods.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, lsq_linear

from .bits import bit

__all__ = ["least_squares", "free_weights", "project_velocity", "switch_decision", "exits", "exit_time",
           "newton_projection"]


def least_squares(D, g0, reg):
    """The sliding weights s in [0, 1]^n of the minimal-norm element g0 + D s of the convex hull
    (the Filippov velocity is -(g0 + D s); MODEL.md section 5): bounded least squares (BVLS).

    When D is rank-deficient (sliding points whose constraints coincide, e.g. many points on one
    face of an earlier layer that the hyperplane now contains) the velocity is still unique but s
    is not: a tiny pull towards s = 1/2 (weight ``reg``, ``KinkOptions.slide_reg``, relative to D's
    largest column) picks the solution nearest the middle, unique and continuous in the state,
    which changes the velocity by a relative reg**2 at most. A weight at 0 or 1 releases its point
    (:func:`exits`).
    """
    n = D.shape[1]
    scale = float(np.sqrt(np.max(np.sum(D * D, axis=0)))) if n else 0.0
    if scale == 0.0:
        return np.full(n, 0.5)
    reg = reg * scale
    A = np.vstack([D, reg * np.eye(n)])
    b = np.concatenate([-g0, np.full(n, 0.5 * reg)])
    return lsq_linear(A, b, bounds=(0.0, 1.0), method="bvls", tol=1e-15).x


def free_weights(D, g0):
    """The weights of :func:`least_squares` without the bounds (unregularized; nearest 1/2 when not
    unique): smooth in the state, so their crossing of a bound times a sliding exit."""
    half = np.full(D.shape[1], 0.5)
    ds, *_ = np.linalg.lstsq(D, -(g0 + D @ half), rcond=1e-12)
    return half + ds


def project_velocity(g, ev):
    """A gradient change's effect on the velocity: itself, projected off the sliding normals of the
    evaluation ``ev`` (its jumps D and weights s; weights at a bound do not move with g)."""
    if ev is None or ev.D is None:
        return g
    D = ev.D[:, (ev.s > 0.0) & (ev.s < 1.0)]
    if D.shape[1] == 0:
        return g
    s, *_ = np.linalg.lstsq(D, -g, rcond=1e-12)     # linear: the change of g off the normals
    return g + D @ s


def switch_decision(model, y, coords, located, reg):
    """Decide the listed coordinates at y: each to a side, or into the sliding set.

    Decided together (MODEL.md section 5, Filippov): the listed coordinates, the sliding set
    and every other point whose pre-activation on one of the listed hyperplanes is zero to
    round-off here (points an earlier layer truncated onto a face that the hyperplane now
    contains: they all meet it at once). Listed coordinates not ``located`` at their crossing
    (found past it at another's event) and not at their plane to round-off take the side their
    pre-activation is on. Of the others, a coordinate whose jump d_j = c_j n_j
    repels (c_j <= 0) takes the side its pre-activation is on; the others get weights s_j
    of the velocity -(g_base + sum s_j d_j), g_base with all of them truncated, found as
    :func:`least_squares` does (bounded): s_j in (0, 1) slides, s_j = 0 is truncated, 1 free
    (a point on the plane to round-off but on the other side of it is held as sliding).

    Returns (group, sliding, free): the coordinates decided, in order, and per coordinate whether
    it slides and otherwise whether it is free (for :meth:`FrozenModel.set_sides`).
    """
    pc = model
    at, ev = pc.at(y), pc.full(y)
    listed = list(dict.fromkeys((int(i), int(l), int(k)) for (i, l, k) in coords))
    planes = {(c[1], c[2]) for c in listed}
    zero, near, a_at = pc.near_planes(y, ev.v, planes, [c[0] for c in listed + list(pc.sliding)],
                                      64 * np.finfo(float).eps)
    group = list(dict.fromkeys(listed + [tuple(c) for c in pc.sliding]
                               + [(int(i), l, k) for (l, k) in planes for i in near[(l, k)]]))
    was_sliding = {tuple(c) for c in pc.sliding}
    idx = np.array([c[0] for c in group], np.int64)
    pats = pc.pattern(idx)
    D = pc.jumps(at, group)                                   # (size, n): free minus truncated
    _, dd = pc.jvp(at, idx, pats, D.T.copy())
    c_sign = np.array([dd[j, l, k] for j, (i, l, k) in enumerate(group)])      # c_j |n_j|^2
    free_now = np.array([bit(pats[j], l, k) for j, (i, l, k) in enumerate(group)])
    a_now = np.array([a_at[i][l, k] for (i, l, k) in group])
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
        sj = least_squares(D[:, cols], g_base, reg)
        to_free[cols] = sj >= 0.5
        # at a bound: that side, unless the point sits on the plane to round-off on the other side;
        # then it is held there too, at its bound, until its velocity takes it off (``exits``)
        wrong_side = (np.abs(a_now[cols]) <= zero) & ((a_now[cols] > 0) != to_free[cols])
        active[cols] = ((sj > 0.0) & (sj < 1.0)) | wrong_side
    return group, active, to_free


def exits(model, ev, y, margin):
    """Sliding indices to release at y (``ev`` its evaluation): a weight at its bound releases
    its point once the velocity has taken it off the plane on that side, i.e. its rate off
    the plane exceeds ``margin`` (``KinkOptions.slide_margin``) of its jump's and its
    pre-activation is on that side (until then it is held at its bound and not projected back,
    :func:`newton_projection`)."""
    pc = model
    if not pc.sliding or ev.s is None:
        return []
    at_bound = [j for j, s_j in enumerate(ev.s) if not 0.0 < s_j < 1.0]
    if not at_bound:
        return []
    sliding = pc.sliding
    held = [sliding[j] for j in at_bound]
    n = len(held)
    idx = np.array([c[0] for c in held] * 2, np.int64)
    # rates along v and along the coordinate's own jump: n_j.v and n_j.d_j = c_j |n_j|^2
    a, dd = pc.jvp(pc.at(y), idx, pc.pattern(idx), np.concatenate([np.repeat(ev.v[None], n, 0), ev.D[:, at_bound].T]))
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for e, (j, (i, l, k)) in enumerate(zip(at_bound, held)):
            lean = dd[e, l, k] / dd[n + e, l, k]         # > 0: towards the free side, in units of the jump
            if (ev.s[j] >= 1.0 and lean > margin and a[e, l, k] > 0.0) or \
                    (ev.s[j] <= 0.0 and lean < -margin and a[e, l, k] <= 0.0):
                out.append(j)
    return out


def exit_time(model, exits, y_of, t0, t1):
    """(t, j, to_free): the earliest exit among ``exits`` (sliding indices whose weight is at a
    bound at the step's end t1; ``y_of(t)`` the state along the step). Timed by the unbounded
    weight (:func:`free_weights`, smooth in t) crossing the bound when it does within the step; a
    weight at its bound all along (held at the plane until its velocity took it off) exits at t1;
    otherwise at the bounded weight's crossing."""
    pc = model
    best = (np.inf, None, None)
    for j in exits:
        bound = 1.0 if pc.full(y_of(t1)).s[j] >= 1.0 else 0.0
        away = (lambda x: x > 0) if bound == 1.0 else (lambda x: x < 0)

        def free(t):
            ev = pc.full(y_of(t))
            return free_weights(ev.D, ev.g0)[j] - bound

        def bounded(t):
            return pc.full(y_of(t)).s[j] - bound
        xtol = 1e-14 * max(1.0, abs(t1))
        b0 = bounded(t0)
        if b0 == 0.0 or away(b0):
            # at its bound from the step's start (the bounded weights stay in [0, 1]: beyond a bound
            # by round-off only): the step was integrated with it there, as if released, so it
            # exits at the step's end, where its velocity was seen to take it off the plane
            te = t1
        elif not away(free(t0)) and away(free(t1)):
            te = brentq(free, t0, t1, xtol=xtol, rtol=4 * np.finfo(float).eps)
        else:
            te = brentq(bounded, t0, t1, xtol=xtol, rtol=4 * np.finfo(float).eps) if bounded(t1) != 0.0 else t1
        if te < best[0]:
            best = (te, j, bound == 1.0)
    return best


def newton_projection(model, y, tol):
    """Newton projection of y onto the hyperplanes a_j = 0 of the sliding coordinates with weights
    inside (0, 1) (when it drifted): the projected state, or y itself (the same object) when none
    was needed."""
    pc = model
    if not pc.sliding:
        return y
    ev = pc.full(y)
    held = [c for c, s_j in zip(pc.sliding, ev.s) if 0.0 < s_j < 1.0]   # at a bound: free to leave
    if not held:
        return y
    idx = [c[0] for c in held]
    y_new = y
    for _ in range(3):
        at = pc.at(y_new)
        pats = pc.pattern(np.array(idx, np.int64))
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
    return y_new
