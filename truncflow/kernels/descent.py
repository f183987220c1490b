"""Gradient-descent steps in compiled code, for flows whose points fit one chunk (issue 12).

``simulate(method="gd")`` on a small problem spends its time in Python around each
step, not in the pass over the points. :func:`descend` runs steps until something
needs Python (a record is due, a stopping rule is met, the step budget of the call
is spent, a state cannot be evaluated) with exactly the arithmetic of the Python
loop (``engine.integrate._GdLoop``): ``y <- y + lr * rhs`` with ``rhs = -masked
gradient``, the step's time ``(k + 1) * lr``, a record due when the next record
time is ``<= t * (1 + 1e-12)``. :func:`descend_many` does the same for the members
of an ensemble at once, in parallel over members; each member's steps are the
same calls as its own run's, so the members equal single runs bit for bit.

Codes returned (why the steps stopped), after the step that caused them:
"""
import numpy as np
from numba import njit, prange

from .config import JIT_OPTIONS
from .flow import STATUS_OK, evaluate_serial_in, serial_workspace

#: the step budget of the call is spent
CODE_BUDGET = 0
#: a record is due at the new iterate
CODE_RECORD = 1
#: the last step reached the final step number
CODE_END = 2
#: cost_tol, grad_tol or max_evals is met at the new iterate
CODE_RULE = 3
#: the new iterate cannot be evaluated, or its cost or gradient norm is not finite: the
#: step is not taken; Python redoes it, which reports why
CODE_PYTHON = 4

_SLACK = 1 + 1e-12


@njit(**JIT_OPTIONS)
def descend(y, rhs, cost, gn, k, lr, n_steps, next_record, cost_tol, grad_tol, max_evals, n_evals, budget,
            mode, n_layers, width, n_out, frames, max_condition, padded_width,
            points, labels, targets, mask, output_cost, chunk):
    """Gradient-descent steps from iterate k (state y, ``rhs`` = -masked gradient at y).

    Args:
        y, rhs: (S,) float64, not modified; cost, gn: the cost and gradient norm at y;
        k: steps taken; lr: step length;
        n_steps: the step number that ends the run; next_record: the next record time
        (inf for none); cost_tol, grad_tol: stop at or below them (-inf for none);
        max_evals: stop when n_evals reaches it; n_evals: evaluations so far; budget:
        at most this many steps in this call (>= 1); the rest as ``flow.evaluate_serial``.
    Returns:
        (code, k, y, rhs, cost, grad_norm, n_evals) after the last step taken (for
        CODE_PYTHON, the iterate before the step that failed, whose evaluation is not counted).
    """
    workspace = serial_workspace(n_layers, padded_width, n_out, points, chunk)
    for _ in range(budget):
        y_new = y + lr * rhs
        n_evals += 1
        status, c, g, norm = evaluate_serial_in(y_new, mode, n_layers, width, n_out, frames, max_condition,
                                                points, labels, targets, mask, output_cost, chunk, workspace)
        if status != STATUS_OK or not (np.isfinite(c) and np.isfinite(norm)):
            return CODE_PYTHON, k, y, rhs, cost, gn, n_evals - 1
        k += 1
        y, rhs, cost, gn = y_new, -g, c, norm
        t = k * lr
        if k >= n_steps:
            return CODE_END, k, y, rhs, cost, gn, n_evals
        if next_record <= t * _SLACK:
            return CODE_RECORD, k, y, rhs, cost, gn, n_evals
        if cost <= cost_tol or gn <= grad_tol or n_evals >= max_evals:
            return CODE_RULE, k, y, rhs, cost, gn, n_evals
    return CODE_BUDGET, k, y, rhs, cost, gn, n_evals


@njit(parallel=True, **JIT_OPTIONS)
def descend_many(members, ys, rhss, costs, norms, ks, lr, n_steps, next_records, cost_tol, grad_tol, max_evals,
                 n_evals, budget, mode, n_layers, width, n_out, frames, max_condition, padded_width,
                 data_of, points, labels, targets, mask, output_cost, chunk, codes):
    """:func:`descend` for the ensemble members ``members`` (A,) int64, in parallel over them.

    Per member b (arrays with a leading member axis B, updated in place): ys, rhss (B, S),
    costs, norms (B,), ks, n_evals (B,) int64, next_records (B,), frames (B, L, M, M)
    (aligned mode; (B, 1, 1, 1) otherwise), data_of (B,) int64 the member's dataset, whose
    points (D, N, M), labels (D, N), targets (D, ...) are stacked; codes (B,) int64 out.
    The other arguments are shared and as in :func:`descend`.
    """
    for i in prange(members.shape[0]):
        b = members[i]
        d = data_of[b]
        code, k, y, rhs, c, gn, ne = descend(
            ys[b], rhss[b], costs[b], norms[b], ks[b], lr, n_steps, next_records[b], cost_tol, grad_tol,
            max_evals, n_evals[b], budget, mode, n_layers, width, n_out, frames[b], max_condition,
            padded_width, points[d], labels[d], targets[d], mask, output_cost, chunk)
        codes[b] = code
        ks[b] = k
        ys[b, :] = y
        rhss[b, :] = rhs
        costs[b] = c
        norms[b] = gn
        n_evals[b] = ne
