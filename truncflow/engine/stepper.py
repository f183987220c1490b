"""SciPy's RK45, its steps compiled, for flows whose points fit one chunk (issue 12).

:class:`CompiledRK45` has the interface of ``scipy.integrate.RK45`` that the rk45
loop uses (``t``, ``y``, ``f``, ``h_abs``, ``status``, ``step()``,
``dense_output()``). Its start is SciPy's own: the derivative at y0 and
``select_initial_step`` (or ``first_step``) through the loop's evaluator; its steps
are :func:`truncflow.kernels.dopri.rk45_step`, one compiled call per accepted step;
its dense output is SciPy's ``RkDenseOutput`` of the step's stages.
"""
from __future__ import annotations

import numpy as np
from scipy.integrate._ivp.common import select_initial_step, validate_first_step
from scipy.integrate._ivp.rk import RkDenseOutput

from ..kernels import dopri

__all__ = ["CompiledRK45"]

TOO_SMALL_STEP = "Required step size is less than spacing between numbers."
_EVALS_PER_ATTEMPT = 6


class CompiledRK45:
    """Dormand-Prince 5(4) with SciPy's rules for ``fun`` = an ``_Evaluator`` of a one-chunk problem.

    Args:
        fun: the loop's evaluator (``fun(t, y)`` -> right-hand side; it keeps the last
            cost, gradient norm and failure, and the problem counts evaluations).
        t0, y0, t_bound, rtol, atol, first_step, max_step: as ``scipy.integrate.RK45``.
        state: (t, y, f, h_abs, status) to continue from (a checkpoint) instead of starting.
    """

    def __init__(self, fun, t0, y0, t_bound, *, rtol, atol, first_step=None, max_step=np.inf, state=None):
        self.fun, self.t_bound = fun, float(t_bound)
        self.rtol, self.atol, self.max_step = float(rtol), float(atol), float(max_step)
        self.direction = 1.0 if t_bound >= t0 else -1.0
        self.t_old = self.y_old = None
        if state is not None:
            t, y, f, h_abs, status = state
            self.t, self.y, self.f, self.h_abs, self.status = float(t), np.array(y), np.array(f), float(h_abs), status
        else:
            self.t, self.y, self.status = float(t0), np.array(y0, dtype=np.float64), "running"
            self.f = fun(self.t, self.y)
            if first_step is None:
                self.h_abs = select_initial_step(fun, self.t, self.y, self.t_bound, self.max_step, self.f,
                                                 self.direction, 4, self.rtol, self.atol)
            else:
                self.h_abs = validate_first_step(first_step, t0, t_bound)
        self.K = np.empty((7, self.y.size))

    def step(self):
        """One accepted step (or the failure to take one); returns SciPy's message or None."""
        if self.status != "running":
            raise RuntimeError("Attempt to step on a failed or finished solver.")
        if self.t == self.t_bound:
            self.t_old, self.status = self.t, "finished"
            return None
        t = self.t
        min_step = 10 * np.abs(np.nextafter(t, self.direction * np.inf) - t)
        problem = self.fun.problem
        status, t_new, y_new, f_new, h_abs, attempts, cost, gn, failed_y = dopri.rk45_step(
            t, self.y, self.f, self.h_abs, self.t_bound, self.direction, self.max_step, min_step, self.rtol,
            self.atol, self.K, *problem.serial_args)
        problem.n_evaluations += _EVALS_PER_ATTEMPT * attempts
        if failed_y.size:
            self.fun(None, failed_y)           # the evaluator records why it could not be evaluated
            problem.n_evaluations -= 1         # (already counted in the attempts)
        if status == dopri.STEP_TOO_SMALL:
            self.status = "failed"
            return TOO_SMALL_STEP
        self.t_old, self.y_old = t, self.y
        self.t, self.y, self.f, self.h_abs = float(t_new), y_new, f_new, float(h_abs)
        self.fun.restore_last(y_new, cost, gn, f_new)
        if self.direction * (self.t - self.t_bound) >= 0:
            self.status = "finished"
        return None

    def dense_output(self):
        """SciPy's interpolant of the last step (``RkDenseOutput`` of ``K.T @ P``)."""
        return RkDenseOutput(self.t_old, self.t, self.y_old, self.K.T.dot(dopri.P))
