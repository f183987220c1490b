"""Minimizers built by hand: one cone per cluster (MODEL.md section 10).

For data whose clusters can be separated by cones, :func:`cone_minimizer` builds
cumulative parameters with ``L = Q`` layers (no output layer), layer ``c + 1``
belonging to cluster c:

- a *collapsing* layer is a cone with apex exactly at the cluster's input-space
  target ``y~_c`` (``b^(c+1) = -W^(c+1) y~_c``) that holds cluster c in its closed
  negative orthant (all cone coordinates ``a_k = (W (z - y~_c))_k <= 0``, so the
  layer maps the cluster to its apex) and everything else the layer sees strictly in
  its positive orthant (all ``a_k > 0``, so the layer is the identity there);
- a *free* layer (cluster not collapsed) is ``W = I`` with its apex moved below
  everything the layer sees, so that no point is truncated by it.

What layer ``c + 1`` sees: the original points of every cluster not collapsed by an
earlier layer, and the target ``y~_c'`` of every earlier collapsed cluster c' (its
images sit at that apex). Full collapse gives cost 0 and a vanishing gradient; the
``2^Q - 1`` proper subsets give the degenerate minima of arXiv:2309.10639, whose
free points contribute exactly nothing to any gradient (MODEL.md section 6).

Construction of a collapsing cone (apex p = y~_c). A linear program finds a unit
direction u and the largest angular margin delta with

    u . (x - p) <= -delta |x - p|   for every point x of cluster c,
    u . (y - p) >=  delta |y - p|   for every other point y the layer sees,

(HiGHS, on the unit vectors ``(x - p)/|x - p|``, with ``|u_k| <= 1``; solved by
cutting planes over the points so that 10^5 points take a fraction of a second).
The rows of W are ``u + eps s_k`` with ``eps = delta / 2`` and ``s_1..s_M`` the
vertices of a regular simplex of unit vectors in the hyperplane ``u^perp`` (for M = 1,
``W = [u]``). Then every cone coordinate keeps the margin ``delta/2 |z - p|`` on the
right side, and ``W`` has eigenvalue ``sqrt(M)`` along u and singular values
``eps sqrt(M/(M-1))`` on ``u^perp``: its 2-norm condition number is ``sqrt(M-1)/eps``.
"""
from __future__ import annotations

from collections.abc import Iterable
import numbers

import numpy as np
from scipy.optimize import linprog

from .backends import capabilities_of
from .data import Dataset
from .params import MAX_CONDITION, Params, check_network_size

__all__ = ["cone_minimizer", "predicted_cost", "collapse_mask", "SEPARATION_TOL"]

#: Angular margins at or below this are "not separable": the cone would be
#: numerically degenerate (its condition number grows like 1/margin).
SEPARATION_TOL = 1e-9

#: Relative round-off allowance of the cone-coordinate check (times the scale of the
#: data, the row norm of W and the condition numbers of earlier collapsing layers).
ROUNDOFF = 1e3 * np.finfo(np.float64).eps

#: Cutting planes: rows in the first LP, rows added per round, rounds before
#: falling back to one LP over all rows.
_LP_START_ROWS = 512
_LP_ADD_ROWS = 1024
_LP_MAX_ROUNDS = 40
#: A row counts as violated when its margin is below the subset optimum by more than this.
_LP_SLACK = 1e-10


# --------------------------------------------------------------- public API
def collapse_mask(collapse, n_clusters: int) -> np.ndarray:
    """(Q,) bool, True for each cluster to collapse.

    ``collapse`` is one of:

    - None: every cluster;
    - a boolean mask of length Q (a NumPy bool array, or a list/tuple of Python or
      NumPy bools): True for each cluster to collapse; another length is refused;
    - an iterable of cluster indices in ``[0, Q)``: Python or NumPy integers (floats
      and strings are refused). Repeated indices are allowed and count once; an empty
      iterable collapses nothing.

    Bools and integers cannot be mixed (``[True, 2]`` is refused).
    """
    mask = np.zeros(n_clusters, dtype=bool)
    if collapse is None:
        mask[:] = True
        return mask
    if isinstance(collapse, (str, bytes)) or not isinstance(collapse, Iterable) or \
            (isinstance(collapse, np.ndarray) and collapse.ndim != 1):
        raise ValueError(f"collapse must be None, a boolean mask of length {n_clusters} or an iterable of "
                         f"cluster indices in [0, {n_clusters}), got {collapse!r}")
    values = list(collapse)
    is_bool = [isinstance(v, (bool, np.bool_)) for v in values]
    if (isinstance(collapse, np.ndarray) and collapse.dtype == bool) or (values and all(is_bool)):
        if len(values) != n_clusters:
            raise ValueError(f"collapse is a boolean mask of length {len(values)}, but the dataset has "
                             f"{n_clusters} cluster(s): give one True/False per cluster, or cluster indices")
        return np.array(values, dtype=bool)
    for i, value in enumerate(values):
        if is_bool[i] or not isinstance(value, (numbers.Integral, np.integer)):
            what = "mixes booleans and cluster indices" if is_bool[i] else "is not a cluster index"
            raise ValueError(f"collapse[{i}] = {value!r} {what}: give cluster indices (integers in "
                             f"[0, {n_clusters})) or a boolean mask of length {n_clusters}")
        if not 0 <= value < n_clusters:
            raise ValueError(f"collapse[{i}] = {int(value)} is out of range: the dataset has "
                             f"{n_clusters} cluster(s), indices 0..{n_clusters - 1}")
        mask[int(value)] = True
    return mask


def predicted_cost(dataset: Dataset, collapse=None) -> float:
    """Input cost of :func:`cone_minimizer` ``(dataset, collapse)``, from the data alone.

    ``collapse``: None (all), a boolean mask of length Q, or cluster indices
    (:func:`collapse_mask`).

    Collapsed clusters land on their targets and cost nothing; the others stay where
    they are: ``C = sum_{c not collapsed} 1/(2N) sum_{i in c} |x_i - y~_c|^2``.
    Returns a float (0.0 for full collapse).
    """
    dataset = _require_input_dataset(dataset)
    collapsed = collapse_mask(collapse, dataset.n_clusters)
    free = ~collapsed[dataset.labels]
    residual = np.asarray(dataset.points[free], dtype=np.float64) - dataset.targets[dataset.labels[free]]
    with np.errstate(over="ignore", invalid="ignore"):
        cost = float(np.sum(residual * residual) / (2 * dataset.n_points))
    if not np.isfinite(cost):
        raise ValueError(f"predicted_cost overflowed float64 (cost {cost}): points or targets too large "
                         f"(max |x - y~| = {np.max(np.abs(residual)):.3g})")
    return cost


def cone_minimizer(dataset: Dataset, collapse=None) -> Params:
    """Cumulative parameters of a hand-built minimizer of the input cost (MODEL.md section 10).

    Args:
        dataset: a :class:`Dataset` with N points (N, M), labels in ``[0, Q)`` and
            input-space targets ``y~_c`` of shape (Q, M).
        collapse: None to collapse every cluster, a boolean mask of length Q, or an
            iterable of cluster indices (see :func:`collapse_mask`): the clusters to
            collapse onto their targets; the others stay free in every layer.
    Returns:
        :class:`Params` with ``L = Q`` layers of width M and no output layer; layer
        ``c + 1`` (cumulative ``W^(c+1)``, ``b^(c+1)``) belongs to cluster c. A
        collapsed cluster's layer is a cone with apex ``y~_c`` that maps the cluster to
        ``y~_c`` and is the identity on everything else it sees; a free cluster's layer
        is ``W = I`` with its apex below everything it sees (the identity on the data).
        Its input cost is :func:`predicted_cost`,
        ``C = sum_{c not collapsed} 1/(2N) sum_{i in c} |x_i - y~_c|^2`` (0 for full
        collapse), and its gradient vanishes (to round-off for collapsed clusters,
        exactly for free ones).
    Raises:
        ValueError: bad ``collapse``; targets not of shape (Q, M); more clusters than
            ``MAX_LAYERS`` or a network that does not fit in memory; a cluster c to
            collapse that no cone with apex ``y~_c`` separates from what its layer sees
            (the message names c and the clusters or collapsed targets that block it);
            a cone too narrow to be represented (condition number above
            ``MAX_CONDITION``); or a construction that fails the independent check of
            the cone coordinates of every point the layer sees.

    Notes:
        A cluster can be collapsed only if its target lies outside the convex hull of
        its own points, with the rest of what its layer sees on the far side of some
        hyperplane through the target: typically the target sits just outside the
        cluster on the side facing the other clusters. The layers follow the cluster
        order 0..Q-1, which matters (layer c+1 sees earlier collapsed clusters at their
        targets); relabel the clusters to try another order. An earlier collapsed
        target that coincides with ``y~_c`` is allowed (it sits at the apex and stays
        there). A cluster with no points that is to be collapsed still gets a cone at
        its target. Deterministic: no randomness.
    """
    dataset = _require_input_dataset(dataset)
    Q, M = dataset.n_clusters, dataset.width
    collapsed = collapse_mask(collapse, Q)
    check_network_size(Q, M, name="the number of clusters Q (one layer each)")
    points = np.asarray(dataset.points, dtype=np.float64)
    labels, targets, counts = dataset.labels, dataset.targets, dataset.counts
    scale = _data_scale(points, targets)
    cum_weights = np.empty((Q, M, M))
    cum_biases = np.empty((Q, M))
    earlier_condition = 1.0       # largest condition number of the collapsing layers so far
    for c in range(Q):
        view = _LayerView.build(c, points, labels, targets, collapsed, counts)
        if collapsed[c]:
            weight = _collapsing_cone(c, targets[c], view)
            apex = targets[c]
        else:
            weight, apex = np.eye(M), _apex_below(view.all_points(), scale)
        tol = ROUNDOFF * np.abs(weight).sum(axis=1).max() * scale * earlier_condition
        _check_layer(c, weight, apex, view, collapsed[c], tol)
        cum_weights[c] = weight
        cum_biases[c] = -weight @ apex
        if collapsed[c]:
            earlier_condition = max(earlier_condition, np.linalg.cond(weight, 1))
    try:
        return Params.from_cumulative(cum_weights, cum_biases)
    except ValueError as exc:       # only a cone too narrow for MAX_CONDITION can get here
        raise ValueError(f"cone_minimizer: {exc} (layer l belongs to cluster l - 1)") from None


# ------------------------------------------------------------------ helpers
def _require_input_dataset(dataset) -> Dataset:
    """The dataset, checked to carry input-space targets of shape (Q, M)."""
    if not getattr(capabilities_of(dataset), "points_here", False):
        raise ValueError(f"dataset must be a truncflow.Dataset, got {type(dataset).__name__}")
    if dataset.targets.shape[1] != dataset.width:
        raise ValueError(f"cone minimizers need input-space targets of shape (Q, {dataset.width}) to match "
                         f"the points; got targets of shape {dataset.targets.shape}")
    return dataset


def _data_scale(points: np.ndarray, targets: np.ndarray) -> float:
    """Largest absolute coordinate of points and targets (1.0 if all are zero)."""
    s = max(float(np.max(np.abs(points))), float(np.max(np.abs(targets))))
    return s if s > 0 else 1.0


class _LayerView:
    """What layer ``c + 1`` sees, split into the cluster it owns and the rest.

    Attributes:
        own            (n, M) float64  original points of cluster c
        others         (K, M) float64  the other points the layer sees: original points
                       of clusters not collapsed earlier, then earlier collapsed targets
        other_cluster  (K,) int64      cluster each row of ``others`` comes from
        other_is_target (K,) bool      True for a collapsed target row
    """

    def __init__(self, own, others, other_cluster, other_is_target):
        self.own = own
        self.others = others
        self.other_cluster = other_cluster
        self.other_is_target = other_is_target

    @classmethod
    def build(cls, c, points, labels, targets, collapsed, counts) -> "_LayerView":
        Q = targets.shape[0]
        collapsed_before = collapsed & (np.arange(Q) < c)
        still_free = ~collapsed_before[labels] & (labels != c)
        earlier_targets = np.flatnonzero(collapsed_before & (counts > 0))
        others = np.concatenate([points[still_free], targets[earlier_targets]])
        other_cluster = np.concatenate([labels[still_free], earlier_targets])
        other_is_target = np.concatenate([np.zeros(int(still_free.sum()), dtype=bool),
                                          np.ones(earlier_targets.size, dtype=bool)])
        return cls(points[labels == c], others, other_cluster, other_is_target)

    def all_points(self) -> np.ndarray:
        """(n + K, M): every point the layer sees, its own cluster included."""
        return np.concatenate([self.own, self.others])


def _apex_below(seen: np.ndarray, scale: float) -> np.ndarray:
    """(M,) apex of an identity cone leaving every seen point free with margin >= ``scale``."""
    if seen.shape[0] == 0:
        return np.full(seen.shape[1], -scale)
    return seen.min(axis=0) - scale


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(K, M) rows divided by their norms; zero rows are dropped."""
    norms = np.linalg.norm(vectors, axis=1)
    keep = norms > 0
    return vectors[keep] / norms[keep, None]


def _separation_rows(apex, own, others) -> np.ndarray:
    """(K, M) unit rows r with ``u . r >= delta`` meaning "own on the negative side, others
    on the positive side" of the hyperplane through ``apex`` with normal u. Own points at
    the apex are dropped (they are mapped to it whatever u is)."""
    return np.concatenate([-_unit_rows(own - apex), _unit_rows(others - apex)])


def _solve_margin_lp(rows: np.ndarray) -> tuple[np.ndarray, float]:
    """LP: maximize delta subject to ``rows @ u >= delta``, ``|u_k| <= 1``, ``delta <= 1``.

    Returns (u (M,), delta) as HiGHS found them (u not normalized).
    """
    K, M = rows.shape
    a_ub = np.hstack([-rows, np.ones((K, 1))])
    res = linprog(np.r_[np.zeros(M), -1.0], A_ub=a_ub, b_ub=np.zeros(K),
                  bounds=[(-1.0, 1.0)] * M + [(None, 1.0)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"the separation linear program failed: {res.message}")
    return res.x[:M], float(res.x[M])


def _separating_direction(rows: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit normal u (M,) maximizing (up to a factor sqrt(M)) the angular margin
    ``delta = min_i rows_i . u`` over unit rows (K, M); returns (u, delta), delta <= 1.

    Cutting planes: solve the LP on the rows most likely to bind, add the rows the
    solution violates, repeat; the final subset optimum is feasible for all rows and
    hence optimal. ``delta`` is recomputed exactly from the normalized u.
    """
    K, M = rows.shape
    if K == 0:
        return np.eye(M)[0], 1.0
    guess = rows.mean(axis=0)
    active = np.zeros(K, dtype=bool)
    active[_smallest(rows @ guess, _LP_START_ROWS)] = True
    for _ in range(_LP_MAX_ROUNDS):
        u, delta = _solve_margin_lp(rows[active])
        margins = rows @ u
        violated = np.flatnonzero(~active & (margins < delta - _LP_SLACK))
        if violated.size == 0:
            break
        active[violated[_smallest(margins[violated], _LP_ADD_ROWS)]] = True
    else:
        u, _ = _solve_margin_lp(rows)
    norm = np.linalg.norm(u)
    if norm == 0:
        return np.eye(M)[0], 0.0
    u = u / norm
    return u, min(float(np.min(rows @ u)), 1.0)


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest values (all when there are at most k)."""
    if values.size <= k:
        return np.arange(values.size)
    return np.argpartition(values, k)[:k]


def _simplex_cone(u: np.ndarray, eps: float) -> np.ndarray:
    """(M, M) matrix with rows ``u + eps s_k``, s_k a regular simplex of unit vectors in u^perp.

    ``W = (sqrt(M) J + eps' (I - J)) H^T`` with ``J = 1 1^T / M``, H orthogonal with
    ``H 1/sqrt(M) = u`` and ``eps' = eps sqrt(M / (M - 1))``; for M = 1, ``W = [u]``.
    """
    M = u.shape[0]
    if M == 1:
        return u.reshape(1, 1).copy()
    e = np.full(M, 1.0 / np.sqrt(M))
    H = _frame_with_first_column(u) @ _frame_with_first_column(e).T
    J = np.full((M, M), 1.0 / M)
    K = np.sqrt(M) * J + eps * np.sqrt(M / (M - 1)) * (np.eye(M) - J)
    return K @ H.T


def _frame_with_first_column(v: np.ndarray) -> np.ndarray:
    """Orthogonal (M, M) matrix whose first column is the unit vector v."""
    q, _ = np.linalg.qr(v.reshape(-1, 1), mode="complete")
    q[:, 0] = v
    return q


def _collapsing_cone(c: int, apex: np.ndarray, view: _LayerView) -> np.ndarray:
    """(M, M) cumulative weight of cluster c's collapsing layer, apex at its target."""
    # Earlier collapsed targets at this apex are fixed points of the layer: drop them.
    at_apex = np.all(view.others == apex, axis=1)
    blockers_at_apex = at_apex & ~view.other_is_target
    if blockers_at_apex.any():
        raise _not_separable(c, apex, view, 0.0)
    u, delta = _separating_direction(_separation_rows(apex, view.own, view.others[~at_apex]))
    if delta <= SEPARATION_TOL:
        raise _not_separable(c, apex, view, delta)
    weight = _simplex_cone(u, delta / 2)
    cond = np.linalg.cond(weight, 1)
    if not cond <= MAX_CONDITION:
        raise ValueError(f"cluster {c} (layer {c + 1}): the separating margin {delta:.3g} is too small: its "
                         f"cone would have condition number {cond:.3g} > {MAX_CONDITION:.0e}")
    return weight


def _not_separable(c: int, apex: np.ndarray, view: _LayerView, delta: float) -> ValueError:
    """The error for a cluster that no cone with apex at its target separates, naming the
    clusters (or collapsed targets) that block it."""
    head = (f"cluster {c} cannot be collapsed by layer {c + 1}: no hyperplane through its target "
            f"{np.array2string(apex, precision=4)} has the cluster strictly on one side and what the layer "
            f"sees of the other clusters strictly on the other (best angular margin {delta:.3g})")
    own_rows = -_unit_rows(view.own - apex)
    _, own_margin = _separating_direction(own_rows)
    if own_margin <= SEPARATION_TOL:
        return ValueError(f"{head}: the target lies in the convex hull of cluster {c}'s own points "
                          f"(no cone with apex there contains them); place it beyond the cluster")
    reasons = []
    for source in np.unique(view.other_cluster):
        for is_target in (False, True):
            group = view.others[(view.other_cluster == source) & (view.other_is_target == is_target)]
            if group.shape[0] == 0:
                continue
            n_at_apex = int(np.all(group == apex, axis=1).sum())
            if is_target and n_at_apex:
                continue      # an earlier target at this apex stays put: harmless
            if n_at_apex:
                reasons.append(f"cluster {source} ({n_at_apex} point(s) lie exactly at the target)")
                continue
            _, margin = _separating_direction(np.concatenate([own_rows, _unit_rows(group - apex)]))
            if margin <= SEPARATION_TOL:
                reasons.append(f"the target of collapsed cluster {source} (where its points sit after layer "
                               f"{source + 1})" if is_target else f"cluster {source}")
    if reasons:
        return ValueError(f"{head}: blocked by {', '.join(reasons)}")
    sources = ", ".join(str(s) for s in np.unique(view.other_cluster))
    return ValueError(f"{head}: no single other cluster blocks it, but together clusters {sources} "
                      f"(points or collapsed targets) surround the target")


def _check_layer(c: int, weight, apex, view: _LayerView, collapsing: bool, tol: float) -> None:
    """Verify the cone coordinates ``a = W (z - apex)`` of every point layer ``c + 1`` sees.

    Collapsing layer: cluster c's points have all ``a_k < -tol`` (or lie at the apex,
    all ``|a_k| <= tol``); everything else has all ``a_k > tol``, except earlier
    collapsed targets at the apex. Free layer: every point, its own included, has all
    ``a_k > tol``. Raises ValueError naming the layer, the cluster and the count.
    """
    layer = f"layer {c + 1} (cluster {c})"
    a_own = (view.own - apex) @ weight.T
    if collapsing:
        at_apex = np.all(np.abs(a_own) <= tol, axis=1)
        bad = np.any(a_own >= -tol, axis=1) & ~at_apex
        if bad.any():
            raise ValueError(f"{layer}: check failed: {int(bad.sum())} of the cluster's {len(bad)} points are "
                             f"not strictly inside the cone's negative orthant (max cone coordinate "
                             f"{a_own[bad].max():.3g}, tolerance {tol:.3g})")
    else:
        bad = np.any(a_own <= tol, axis=1)
        if bad.any():
            raise ValueError(f"{layer}: check failed: {int(bad.sum())} of the cluster's points are not free "
                             f"(min cone coordinate {a_own[bad].min():.3g}, tolerance {tol:.3g})")
    a_other = (view.others - apex) @ weight.T
    exempt = view.other_is_target & np.all(np.abs(a_other) <= tol, axis=1) if collapsing else False
    bad = np.any(a_other <= tol, axis=1) & ~exempt
    if bad.any():
        sources = np.unique(view.other_cluster[bad])
        raise ValueError(f"{layer}: check failed: {int(bad.sum())} point(s) from cluster(s) "
                         f"{', '.join(str(s) for s in sources)} are not strictly in the cone's positive orthant "
                         f"(min cone coordinate {a_other[bad].min():.3g}, tolerance {tol:.3g})")
