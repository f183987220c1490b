"""One Dormand-Prince 5(4) step in compiled code, SciPy's ``RK45`` rules (issue 12).

For a flow whose points fit one chunk, SciPy's ``RK45.step`` costs 30-40 us of
Python per step, four times the six gradient evaluations it makes. :func:`rk45_step`
is that step (``scipy.integrate._ivp.rk.RungeKutta._step_impl`` with ``rk_step``):
the same tableau (taken from SciPy's ``RK45`` class), the same step-size rules
(SAFETY 0.9, factors 0.2 .. 10, error exponent -1/5, no growth after a rejection,
the step cut to reach ``t_bound``), the same RMS error norm, every evaluation the
flow's compiled one (``flow.evaluate_serial_in``). Sums run in index order, so the
bits differ from SciPy's (which uses BLAS) in the last places, not the method.

A state that cannot be evaluated gives a NaN right-hand side, as in the Python
loop: its error norm is NaN, the attempt is rejected and the step shrinks (by the
factor 0.2), until the step succeeds or falls below the smallest step.
"""
import numpy as np
from numba import njit
from scipy.integrate import RK45

from .config import JIT_OPTIONS
from .flow import STATUS_OK, evaluate_serial_in, serial_workspace

#: SciPy's RK45 tableau and error weights (C (6,), A (6, 6), B (6,), E (7,)).
C, A, B, E = (np.array(getattr(RK45, name), dtype=np.float64) for name in ("C", "A", "B", "E"))
#: SciPy's dense-output matrix for RK45 (7, 4).
P = np.array(RK45.P, dtype=np.float64)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
ERROR_EXPONENT = -1.0 / (RK45.error_estimator_order + 1)

STEP_ACCEPTED, STEP_TOO_SMALL = 0, 1


@njit(**JIT_OPTIONS)
def _rhs(t, y, out, mode, n_layers, width, n_out, frames, max_condition,
         points, labels, targets, mask, output_cost, chunk, workspace):
    """out = -(masked gradient) at y; returns (cost, gradient norm, evaluated): NaN and False
    when y cannot be evaluated (out is NaN then)."""
    status, c, g, gn = evaluate_serial_in(y, mode, n_layers, width, n_out, frames, max_condition,
                                          points, labels, targets, mask, output_cost, chunk, workspace)
    if status != STATUS_OK:
        out[:] = np.nan
        return np.nan, np.nan, False
    for i in range(out.shape[0]):
        out[i] = -g[i]
    return c, gn, True


@njit(**JIT_OPTIONS)
def rk45_step(t, y, f, h_abs, t_bound, direction, max_step, min_step, rtol, atol, K,
              mode, n_layers, width, n_out, frames, max_condition, padded_width,
              points, labels, targets, mask, output_cost, chunk):
    """One accepted step of SciPy's RK45 from (t, y) with derivative f, or a failure.

    Args:
        t, y (S,), f (S,): the current state and its right-hand side; h_abs: the step to
        try; t_bound; direction (+1.0 or -1.0); max_step; min_step: 10 spacings of t
        (``10 * |nextafter(t, direction * inf) - t|``); rtol, atol; K (7, S) the stages,
        written (SciPy's ``K``: the dense output is ``K.T @ P``); the rest as
        ``flow.evaluate_serial``.
    Returns:
        (status, t_new, y_new, f_new, h_abs_next, attempts, cost, grad_norm, failed_y):
        status STEP_ACCEPTED or STEP_TOO_SMALL; attempts made (6 evaluations each);
        cost and gradient norm at y_new (its evaluation gives f_new); failed_y the last
        state that could not be evaluated, or an empty array.
    """
    S = y.shape[0]
    if h_abs > max_step:
        h_abs = max_step
    elif h_abs < min_step:
        h_abs = min_step
    rejected = False
    attempts = 0
    failed_y = np.empty(0)
    y_stage = np.empty(S)
    workspace = serial_workspace(n_layers, padded_width, n_out, points, chunk)
    while True:
        if h_abs < min_step:
            return STEP_TOO_SMALL, t, y, f, h_abs, attempts, np.nan, np.nan, failed_y
        h = h_abs * direction
        t_new = t + h
        if direction * (t_new - t_bound) > 0:
            t_new = t_bound
        h = t_new - t
        h_abs = abs(h)
        attempts += 1
        K[0] = f
        for s in range(1, 6):
            for i in range(S):
                acc = 0.0
                for j in range(s):
                    acc += K[j, i] * A[s, j]
                y_stage[i] = y[i] + acc * h
            c, gn, ok = _rhs(t + C[s] * h, y_stage, K[s], mode, n_layers, width, n_out, frames, max_condition,
                             points, labels, targets, mask, output_cost, chunk, workspace)
            if not ok:
                failed_y = y_stage.copy()
        y_new = np.empty(S)
        for i in range(S):
            acc = 0.0
            for j in range(6):
                acc += K[j, i] * B[j]
            y_new[i] = y[i] + h * acc
        f_new = np.empty(S)
        cost, gn, ok = _rhs(t + h, y_new, f_new, mode, n_layers, width, n_out, frames, max_condition,
                            points, labels, targets, mask, output_cost, chunk, workspace)
        if not ok:
            failed_y = y_new.copy()
        K[6] = f_new
        sq = 0.0
        for i in range(S):
            acc = 0.0
            for j in range(7):
                acc += K[j, i] * E[j]
            scale = atol + max(abs(y[i]), abs(y_new[i])) * rtol
            e = acc * h / scale
            sq += e * e
        error_norm = np.sqrt(sq) / np.sqrt(S)
        if error_norm < 1:
            if error_norm == 0:
                factor = MAX_FACTOR
            else:
                factor = min(MAX_FACTOR, SAFETY * error_norm ** ERROR_EXPONENT)
            if rejected:
                factor = min(1.0, factor)
            return STEP_ACCEPTED, t_new, y_new, f_new, h_abs * factor, attempts, cost, gn, failed_y
        shrink = SAFETY * error_norm ** ERROR_EXPONENT
        h_abs *= shrink if shrink > MIN_FACTOR else MIN_FACTOR      # max(0.2, NaN) is 0.2, as in Python
        rejected = True
