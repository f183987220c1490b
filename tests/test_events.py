"""The exact event-driven solver (simulate(..., method="events"), MODEL.md section 9).

Held to: problems solved by hand in closed form; an independent high-accuracy
numerical integration written here (SciPy's DOP853 at rtol 1e-13, segment by
segment between data values, no closed forms); rk45 on the full restricted flow
through the gradient kernels; and the cluster-separated hypothesis.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.integrate import quad, solve_ivp

import truncflow as tf
from truncflow.engine.events import SeparationWarning
from truncflow.kernels.events import delta_antiderivative
from conftest import assert_close
from problems import one_layer_problem, separated_problem


# ------------------------------------------------ independent numerical reference
def reference_threshold(w, labels, eta, t0, coef, train, N, times):
    """Integrate dt/ds = kappa(t) sum_c n_c(t) (eta_c - t) / N numerically at rtol 1e-13.

    Segment by segment: the truncated set is {w <= t} while t rises, {w < t} while it
    falls (a scalar autonomous flow is monotone); DOP853 integrates each smooth segment
    and stops at the next data value (a terminal event), where the set changes.
    Returns (t at ``times``, first truncation time per point).
    """
    kappa = (lambda t: (1 + t * t) ** 2 / coef) if train == "all" else (lambda t: 1.0 / coef)

    def force(t, strict):
        mask = (w < t) if strict else (w <= t)
        return float(np.sum(mask * (eta[labels] - t)))

    f_up = force(t0, False)
    direction = 1 if f_up > 0 else (-1 if force(t0, True) < 0 and f_up < 0 else 0)
    trunc = np.where(w <= t0, 0.0, np.inf)
    out = np.full(len(times), t0)
    if direction == 0:
        return out, trunc
    strict = direction < 0
    s, t = 0.0, t0
    s_end = float(times[-1])
    while s < s_end:
        beyond = w[w > t] if direction > 0 else w[w < t]
        nxt = (beyond.min() if direction > 0 else beyond.max()) if beyond.size else None
        if force(t, strict) * direction <= 0:      # sliding or no force: it stays
            break
        rhs = lambda _s, y: [kappa(y[0]) * force(y[0], strict) / N]
        events = []
        if nxt is not None:
            ev = lambda _s, y, nxt=nxt: y[0] - nxt
            ev.terminal = True
            events = [ev]
        sol = solve_ivp(rhs, (s, s_end), [t], method="DOP853", rtol=1e-13, atol=1e-15,
                        dense_output=True, events=events)
        s_stop = sol.t_events[0][0] if events and sol.t_events[0].size else s_end
        sel = (times >= s) & (times <= s_stop)
        if sel.any():
            out[sel] = sol.sol(times[sel])[0]
        if s_stop >= s_end:
            break
        s, t = s_stop, nxt
        if direction > 0:
            trunc[(w <= t) & np.isinf(trunc)] = s
        else:
            strict_set_after = force(t, True)
            if not np.any(w < t) or strict_set_after >= 0:
                break
        out[times >= s] = t
    return out, trunc


def one_coordinate_dataset(w, labels, eta):
    """M = 1 data: points at w, clusters with targets eta (the frame is the identity)."""
    w = np.asarray(w, dtype=np.float64)[:, None]
    return tf.Dataset(w, np.asarray(labels), np.asarray(eta, dtype=np.float64)[:, None])


# ----------------------------------------------------------- hand-solved problems
def test_biases_by_hand_moving_up():
    """Points 0, 1, 2 of one cluster, target 5, lambda = 2, t0 = 0.5, N = 3.
    n = 1: t = 5 - 4.5 exp(-s/12) reaches 1 at s1 = 12 ln(4.5/4); n = 2: t* = 5,
    t = 5 - 4 exp(-2(s-s1)/12) reaches 2 at s2 = s1 + 6 ln(4/3); n = 3:
    t = 5 - 3 exp(-3(s-s2)/12)."""
    ds = one_coordinate_dataset([0.0, 1.0, 2.0], [0, 0, 0], [5.0])
    p = tf.Params.aligned(np.eye(1)[None], [[2.0]], [[-1.0]])        # t0 = -b/lambda = 0.5
    s1 = 12 * math.log(4.5 / 4)
    s2 = s1 + 6 * math.log(4 / 3)
    times = np.array([0.0, 0.5 * s1, s1, 0.5 * (s1 + s2), s2, s2 + 3.0, 40.0])
    exact = [0.5, 5 - 4.5 * math.exp(-0.5 * s1 / 12), 1.0, 5 - 4 * math.exp(-2 * 0.5 * (s2 - s1) / 12),
             2.0, 5 - 3 * math.exp(-3 * 3.0 / 12), 5 - 3 * math.exp(-3 * (40 - s2) / 12)]
    r = tf.simulate(p, ds, 40.0, wrt="aligned", method="events", train="biases", record_times=times,
                    record_truncation_times=True)
    assert r.status == "t_end"
    assert_close(r.thresholds[:, 0, 0], exact, 1e-14, "threshold")
    assert_close(r.truncation_times[:, 0, 0], [0.0, s1, s2], 1e-14, "truncation times")
    # events before each record (at an event time itself the count depends on round-off)
    assert np.array_equal(r.steps_accepted[[0, 1, 3, 5, 6]], [0, 0, 1, 2, 2])
    assert_close(r.scales[:, 0, 0], np.full(7, 2.0), 0)


def test_biases_by_hand_moving_down_then_stopping():
    """Points 0, 1, 2, target -1, lambda = 1, t0 = 2.5 (all truncated), N = 3: t falls as
    -1 + 3.5 exp(-s), frees the point at 2 at s1 = ln(3.5/3), then -1 + 3 exp(-2(s-s1)/3)
    frees 1 at s2 = s1 + 1.5 ln(3/2), then -1 + 2 exp(-(s-s2)/3) reaches 0 at
    s3 = s2 + 3 ln 2, where no point is left below it: t stays at 0."""
    ds = one_coordinate_dataset([2.0, 0.0, 1.0], [0, 0, 0], [-1.0])
    p = tf.Params.aligned(np.eye(1)[None], [[1.0]], [[-2.5]])
    s1 = math.log(3.5 / 3)
    s2 = s1 + 1.5 * math.log(1.5)
    s3 = s2 + 3 * math.log(2)
    times = np.array([0.0, 0.5 * s1, s1 + 0.1, s2 + 0.2, s3, s3 + 5])
    exact = [2.5, -1 + 3.5 * math.exp(-0.5 * s1), -1 + 3 * math.exp(-2 * 0.1 / 3),
             -1 + 2 * math.exp(-0.2 / 3), 0.0, 0.0]
    r = tf.simulate(p, ds, float(times[-1]), wrt="aligned", method="events", train="biases",
                    record_times=times, record_truncation_times=True)
    assert_close(r.thresholds[:, 0, 0], exact, 1e-14)
    assert np.array_equal(r.truncation_times[:, 0, 0], [0.0, 0.0, 0.0])   # first truncation: at the start
    assert r.steps_accepted[-1] == 3


def test_weights_and_biases_by_hand_one_segment():
    """Both flow: between events t(s) solves G(t) - G(t0) = -n s / (N r^2) with
    G' = 1/((1+t^2)^2 (t - t*)). Check the event time against numerical quadrature and
    the conserved r: lambda = r / sqrt(1 + t^2), b = -lambda t."""
    ds = one_coordinate_dataset([0.0, 1.0], [0, 0], [3.0])
    lam0, t0 = 1.5, 0.25
    p = tf.Params.aligned(np.eye(1)[None], [[lam0]], [[-lam0 * t0]])
    r2 = lam0 ** 2 * (1 + t0 ** 2)
    # time to reach 1 with n = 1, N = 2, t* = 3: s1 = N r^2 * integral_{t0}^{1} dt / ((1+t^2)^2 (3 - t))
    s1 = 2 * r2 * quad(lambda t: 1 / ((1 + t * t) ** 2 * (3 - t)), t0, 1.0, epsabs=0, epsrel=1e-13, limit=200)[0]
    r = tf.simulate(p, ds, 2 * s1, wrt="aligned", method="events", record_times=[s1, 2 * s1],
                    record_truncation_times=True)
    assert_close(r.truncation_times[1, 0, 0], s1, 1e-13, "event time")
    assert_close(r.thresholds[1, 0, 0], 1.0, 1e-13)
    assert_close(r.scales ** 2 + r.cum_biases ** 2, np.full((3, 1, 1), r2), 1e-14, "r conserved")


def _quad_pieces(a, t, x):
    """The integral of 1/((1+s^2)^2 (s-a)) from t to x by adaptive quadrature, split where it bends."""
    lo, hi = sorted([t, x])
    cuts = [lo] + [c for c in (-4 * (1 + abs(a)), -10, -1, 0, 1, 10, 4 * (1 + abs(a))) if lo < c < hi] + [hi]
    f = lambda s: 1 / ((1 + s * s) ** 2 * (s - a))
    total = sum(quad(f, u, v, epsabs=0, epsrel=1e-13, limit=200)[0] for u, v in zip(cuts[:-1], cuts[1:]))
    return total if t <= x else -total


@pytest.mark.parametrize("a, t, x", [
    (0.3, -1.0, 0.2), (2.0, 3.0, 2.5), (-1.5, 0.5, -1.0), (10.0, -20.0, 9.99), (0.0, 1e-3, 0.5),
    # far from the target the partial fractions cancel: the far field is integrated in 1/s
    (0.0, 1000.0, 5.0), (0.0, 1000.0, 900.0), (1.0, -1000.0, -3.0), (30.0, -5000.0, 20.0), (-2.0, 50.0, 1e4),
])
def test_antiderivative_matches_quadrature(a, t, x):
    assert_close(delta_antiderivative(t, x, a), _quad_pieces(a, t, x), 1e-11, f"a={a}, t={t}, x={x}")


def test_threshold_far_from_its_target_both_flow():
    """One point at -5, target 0, t0 = 1000, lambda = 1, weights and biases flow: the
    threshold falls through a range where kappa = (1+t^2)^2/r^2 is huge; the exact
    solution agrees with DOP853 at rtol 1e-13 (it lost 4e-3 before the far-field fix)."""
    ds = one_coordinate_dataset([-5.0], [0], [0.0])
    p = tf.Params.aligned(np.eye(1)[None], [[1.0]], [[-1000.0]])
    times = np.array([0.0, 1e-7, 3e-6, 1e-3])
    r = tf.simulate(p, ds, 1e-3, wrt="aligned", method="events", record_times=times)
    ref, _ = reference_threshold(np.array([-5.0]), np.array([0]), np.array([0.0]), 1000.0,
                                 1.0 + 1000.0 ** 2, "all", 1, times)
    assert_close(r.thresholds[:, 0, 0], ref, 1e-10, floor=1.0)


def test_sliding_threshold_stops_on_the_point():
    """Cluster 0 at w = 0 with target 10 pulls t up; at w = 1 sits a cluster with target
    -20: once that point is truncated the force is 10 - 1 + (-20 - 1) < 0, so t stops at 1."""
    ds = one_coordinate_dataset([0.0, 1.0], [0, 1], [10.0, -20.0])
    p = tf.Params.aligned(np.eye(1)[None], [[1.0]], [[-0.5]])
    r = tf.simulate(p, ds, 50.0, wrt="aligned", method="events", train="biases", n_records=6)
    assert r.thresholds[-1, 0, 0] == 1.0
    s1 = 2 * math.log(9.5 / 9.0)            # N = 2, n = 1: t = 10 - 9.5 exp(-s/2) reaches 1
    reached = r.t >= s1
    assert np.all(r.thresholds[reached, 0, 0] == 1.0) and np.all(r.thresholds[~reached, 0, 0] < 1.0)


def test_untouched_threshold_never_moves():
    ds = one_coordinate_dataset([0.0, 1.0], [0, 0], [5.0])
    p = tf.Params.aligned(np.eye(1)[None], [[1.0]], [[1.0]])    # t0 = -1, below every point
    r = tf.simulate(p, ds, 10.0, wrt="aligned", method="events", record_truncation_times=True, n_records=3)
    assert np.all(r.thresholds == -1.0) and np.all(np.isinf(r.truncation_times))


# --------------------------------------- against the high-accuracy integration
@pytest.mark.parametrize("train", ["all", "biases"])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_layer_matches_numerical_integration(train, seed):
    """M = 3 coordinates, three clusters sharing every coordinate, thresholds moving up
    and down (checked), ties in the data; every record and truncation time to 1e-10."""
    params, ds = one_layer_problem(M=3, N=45, Q=3, seed=seed)
    pts = np.round(ds.points * 4) / 4                 # ties
    ds = tf.Dataset(pts, ds.labels, ds.targets)
    times = np.linspace(0, 6.0, 13)
    r = tf.simulate(params, ds, 6.0, wrt="aligned", method="events", train=train, record_times=times,
                    record_truncation_times=True)
    R, lam, b = params.frames[0], params.scales[0], params.cum_biases[0]
    w = ds.points @ R.T
    eta = ds.targets @ R.T
    coef = lam ** 2 if train == "biases" else lam ** 2 + b ** 2
    moved = np.sign(r.thresholds[-1, 0] - r.thresholds[0, 0])
    for k in range(3):
        ref, ref_trunc = reference_threshold(w[:, k], ds.labels, eta[:, k], params.thresholds[0, k],
                                             coef[k], train, ds.n_points, times)
        assert_close(r.thresholds[:, 0, k], ref, 1e-10, f"threshold {k}", floor=1.0)
        finite = np.isfinite(ref_trunc)
        assert np.array_equal(np.isfinite(r.truncation_times[:, 0, k]), finite)
        assert_close(r.truncation_times[finite, 0, k], ref_trunc[finite], 1e-10, f"truncation times {k}", floor=1.0)
    assert set(moved) >= {1.0, -1.0} or seed == 1     # seed 0 has thresholds moving both ways


def test_thresholds_move_both_ways_in_the_reference_case():
    params, ds = one_layer_problem(M=3, N=45, Q=3, seed=0)
    v = tf.threshold_velocity(params, ds)
    assert (v > 0).any() and (v < 0).any()


@pytest.mark.parametrize("train", ["all", "biases"])
def test_separated_layers_match_numerical_integration(train):
    params, ds = separated_problem()
    times = np.linspace(0, 10.0, 6)
    r = tf.simulate(params, ds, 10.0, wrt="aligned", method="events", train=train, record_times=times)
    assert r.status == "t_end"
    for l in range(2):
        idx = ds.labels == l
        R, lam, b = params.frames[l], params.scales[l], params.cum_biases[l]
        w = ds.points[idx] @ R.T
        eta = ds.targets @ R.T
        coef = lam ** 2 if train == "biases" else lam ** 2 + b ** 2
        for k in range(2):
            ref, _ = reference_threshold(w[:, k], ds.labels[idx], eta[:, k], params.thresholds[l, k], coef[k],
                                         train, ds.n_points, times)
            assert_close(r.thresholds[:, l, k], ref, 1e-10, f"layer {l + 1} threshold {k}", floor=1.0)


@pytest.mark.parametrize("train", ["all", "biases"])
@pytest.mark.parametrize("case", ["one_layer", "separated"])
def test_events_agree_with_rk45(train, case):
    """rk45 integrates the restricted flow through the gradient kernels; over a window
    without sliding points (where adaptive rk45 stalls) it agrees to its tolerance."""
    params, ds = one_layer_problem() if case == "one_layer" else separated_problem()
    times = [0.0, 0.5, 1.0]
    e = tf.simulate(params, ds, 1.0, wrt="aligned", method="events", train=train, record_times=times)
    r = tf.simulate(params, ds, 1.0, wrt="aligned", method="rk45", train=train, record_times=times,
                    rtol=1e-10, atol=1e-12, max_evals=20000)
    assert e.success and r.status == "t_end"
    assert e.steps_accepted[-1] > 5                    # events did happen
    assert np.abs(e.thresholds - r.thresholds).max() < 1e-6
    assert_close(e.cost, r.cost, 1e-6)
    # records are observed like any run: the cost is the kernels' cost of the recorded params
    for i in (0, 2):
        assert_close(e.cost[i], tf.cost(e.params_at(i), ds), 1e-14)


def test_events_with_frozen_layer():
    params, ds = separated_problem()
    r = tf.simulate(params, ds, 5.0, wrt="aligned", method="events", frozen_layers=[2], n_records=4)
    assert np.array_equal(r.cum_biases[-1, 1], r.cum_biases[0, 1])
    assert np.abs(r.thresholds[-1, 0] - r.thresholds[0, 0]).max() > 1e-2


@pytest.mark.long  # compiles the kernels for float32 points
def test_float32_points():
    params, ds = one_layer_problem()
    ds32 = tf.Dataset(ds.points.astype(np.float32), ds.labels, ds.targets)
    ds64 = tf.Dataset(ds32.points.astype(np.float64), ds.labels, ds.targets)
    a = tf.simulate(params, ds32, 1.0, wrt="aligned", method="events", n_records=3)
    b = tf.simulate(params, ds64, 1.0, wrt="aligned", method="events", n_records=3)
    assert np.array_equal(a.thresholds, b.thresholds)


# ------------------------------------------------------- hypotheses and errors
def test_events_refuse_non_separated_clusters_naming_them():
    params, ds = separated_problem()
    t = params.thresholds.copy()
    t[0] = 5.0
    p = tf.Params.aligned(params.frames, params.scales, -params.scales * t)
    with pytest.raises(ValueError, match="layer 1 truncates [0-9]+ point\\(s\\) of cluster 1"):
        tf.simulate(p, ds, 1.0, wrt="aligned", method="events")


def test_events_stop_where_a_threshold_reaches_a_later_cluster():
    """Layer 1's threshold rises toward a target beyond cluster 1: the exact solution
    stops ("failed") at the time it reaches cluster 1's lowest point, keeping the records."""
    x = np.array([[0.0], [1.0], [3.0], [4.0]])
    ds = tf.Dataset(x, [0, 0, 1, 1], np.array([[10.0], [2.0]]))
    p = tf.Params.aligned(np.stack([np.eye(1), -np.eye(1)]), [[1.0], [1.0]], [[-0.5], [3.5]])
    assert tf.separation_report(p, ds).holds
    r = tf.simulate(p, ds, 30.0, wrt="aligned", method="events", train="biases", n_records=10)
    assert r.status == "failed" and "layer 1, coordinate 0 reaches a point of cluster 1" in r.message
    # layer 1: N = 4, n = 1: t = 10 - 9.5 exp(-s/4) hits 1 at s1 = 4 ln(9.5/9); n = 2:
    # t = 10 - 9 exp(-(s-s1)/2) hits 3 at s1 + 2 ln(9/7).
    s_wall = 4 * math.log(9.5 / 9) + 2 * math.log(9 / 7)
    assert_close(r.t[-1], s_wall, 1e-13)
    assert_close(r.thresholds[-1, 0, 0], 3.0, 1e-13)
    assert r.n_records >= 2


def test_events_need_aligned_input_cost_and_train():
    params, ds = one_layer_problem()
    with pytest.raises(ValueError, match="wrt='aligned'"):
        tf.simulate(params, ds, 1.0, method="events")
    with pytest.raises(ValueError, match="train='all' or 'biases'"):
        tf.simulate(params, ds, 1.0, wrt="aligned", method="events", train="weights")
    with pytest.raises(ValueError, match="record_truncation_times=True needs method='events'"):
        tf.simulate(params, ds, 1.0, wrt="aligned", record_truncation_times=True)
    with pytest.raises(ValueError, match="record_truncation_times must be True or False"):
        tf.simulate(params, ds, 1.0, wrt="aligned", method="events", record_truncation_times="yes")
    out = params.with_output(np.eye(3), np.zeros(3))
    ods = tf.Dataset(ds.points, ds.labels, ds.targets)
    with pytest.raises(ValueError, match="input cost"):
        tf.simulate(out, ods, 1.0, kind="output", wrt="aligned", method="events")
    p3, ds3 = one_layer_problem(Q=3)
    two = tf.Params.aligned(np.stack([p3.frames[0]] * 2), np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="L = Q"):
        tf.simulate(two, ds3, 1.0, wrt="aligned", method="events")


def test_events_cost_tol_stops_at_a_record(tmp_path):
    ds = one_coordinate_dataset([0.0, 0.5, 1.0], [0, 0, 0], [2.0])
    p = tf.Params.aligned(np.eye(1)[None], [[1.0]], [[0.0]])
    r = tf.simulate(p, ds, 100.0, wrt="aligned", method="events", n_records=40, cost_tol=1e-6,
                    record_truncation_times=True)
    assert r.status == "cost_tol" and r.cost[-1] <= 1e-6 < r.cost[-2]
    back = tf.load_result(r.save(tmp_path / "ev"))
    assert np.array_equal(back.truncation_times, r.truncation_times)
    with pytest.raises(AttributeError, match="record_truncation_times=True"):
        tf.simulate(p, ds, 1.0, wrt="aligned", n_records=2).truncation_times


def test_events_report_a_later_layer_reaching_an_earlier_clusters_images():
    """Layer 1 carries cluster 0 up towards 10; layer 2 (frame -1) lifts its threshold
    towards cluster 1's target and meets cluster 0's images (at -max(x, t1)) from below:
    the records show layer 2 truncating cluster 0, and the run says so ("failed")."""
    x = np.array([[0.0], [1.0], [20.0], [21.0]])
    ds = tf.Dataset(x, [0, 0, 1, 1], np.array([[10.0], [5.0]]))
    p = tf.Params.aligned(np.stack([np.eye(1), -np.eye(1)]), [[1.0], [1.0]], [[-0.5], [20.5]])
    assert tf.separation_report(p, ds).holds
    r = tf.simulate(p, ds, 40.0, wrt="aligned", method="events", train="biases", n_records=30)
    assert r.status == "failed"
    assert "layer 2 truncates points of cluster 0" in r.message and "not exact" in r.message
    frac = r.coordinate_truncated_fraction[:, 1, 0, 0]
    assert frac[0] == 0 and frac[-1] > 0


def test_events_report_the_earliest_break_before_a_wall():
    """Layer 2 meets cluster 0's images (between t = 0.60 and 0.65) before layer 1 reaches
    cluster 1's points (t = 0.85): the earlier break is the one reported."""
    x = np.array([0.0, 0.5, 1.0, 3.0, 3.5, 4.0])[:, None]
    ds = tf.Dataset(x, [0, 0, 0, 1, 1, 1], np.array([[10.0], [-5.0]]))
    p = tf.Params.aligned(np.stack([np.eye(1), -np.eye(1)]), [[1.0], [1.0]], [[-0.2], [3.8]])
    r = tf.simulate(p, ds, 50.0, wrt="aligned", method="events", train="biases",
                    record_times=np.arange(0, 1.0, 0.05))
    assert r.status == "failed" and "layer 2 truncates points of cluster 0" in r.message
    assert "0.65" in r.message


def test_events_record_t_end_and_keep_the_output_layer():
    params, ds = one_layer_problem()
    with_out = params.with_output(np.eye(3)[:2], np.zeros(2))
    r = tf.simulate(with_out, ds, 5.0, wrt="aligned", method="events", record_times=[0.5, 1.0])
    assert np.array_equal(r.t, [0.0, 0.5, 1.0, 5.0]) and r.status == "t_end"
    assert r.final.has_output and np.array_equal(r.final.out_weight, with_out.out_weight)
    assert r.config["record_truncation_times"] is False
    with pytest.raises(ValueError, match="max_evals does not apply to method='events'"):
        tf.simulate(params, ds, 1.0, wrt="aligned", method="events", max_evals=10)


def test_separation_between_records_is_proved_by_the_bound():
    """In the separated problem the images of cluster 0 stay far above layer 2's
    thresholds: the bounding-box argument proves separation between records, so no
    SeparationWarning is issued."""
    params, ds = separated_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeparationWarning)
        r = tf.simulate(params, ds, 10.0, wrt="aligned", method="events", n_records=3)
    assert r.status == "t_end"
