"""simulate(): the time integration engine (MODEL.md sections 8-9).

What is held to what:
- monotonicity of the cost along rk45 and gd, and the conservation laws of the flows
  (the input cost is invariant under a positive rescaling of one row of (W^(l), b^(l)));
- rk45 against an accurate DOP853 solution of the same right-hand side on problems where
  no point crosses a hyperplane (smooth RHS): order >= 5 with a fixed step, error falling
  with the tolerance; gd is first order there;
- gd against Euler steps taken by hand with truncflow.gradient;
- the aligned one-layer model with frozen weights against the exact event-driven
  solution of the threshold equation (MODEL.md section 9), written here;
- frozen parts, stopping rules, divergence, records, the result file, argument checks.

Small random problems often contain a sliding mode (a point held on a hyperplane from
both sides), where an adaptive Runge-Kutta method needs ever smaller steps. The seeds
below are ones without: every rk45 run has a max_evals guard and checks its status.
"""
from __future__ import annotations

import functools
import math
import time

import numba
import numpy as np
import pytest
from scipy.integrate import RK45, solve_ivp

import truncflow as tf
from truncflow.engine.rhs import FlowProblem

import reference as ref
from conftest import assert_close, make_problem

KINDS = ("input", "output")
WRTS = ("cumulative", "layers")
GUARD = 20000  # max_evals for runs that should end at t_end long before


@pytest.fixture(autouse=True, scope="module")
def _one_numba_thread():
    """Every problem here is far below one chunk of points, so one thread does all the work
    anyway; a single thread avoids waking a thread pool thousands of times on a busy machine."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


# ------------------------------------------------------------------ helpers
def flowing(params, wrt):
    """(weights, biases) of the parametrization that flows."""
    if wrt == "cumulative":
        return params.cum_weights, params.cum_biases
    return params.weights, params.biases


def conserved(params, kind, wrt):
    """(L, M) quantities the flow conserves.

    The input cost is invariant under (W^(l)_k, b^(l)_k) -> alpha (W^(l)_k, b^(l)_k) for one row k
    (the truncation map is), so its cumulative flow conserves |W^(l)_k|^2 + (b^(l)_k)^2. In layer
    form the same rescaling is (row k of W_l, b_l) * alpha with column k of W_{l+1} / alpha; with
    the output cost the output weight takes the place of W_{L+1} (ordinary ReLU balancedness).
    """
    w, b = flowing(params, wrt)
    q = (np.asarray(w) ** 2).sum(axis=2) + np.asarray(b) ** 2
    L = params.n_layers
    if wrt == "layers":
        for l in range(L - 1):
            q[l] -= (params.weights[l + 1] ** 2).sum(axis=0)
    if kind == "output":
        q[L - 1] -= (params.out_weight ** 2).sum(axis=0)
    return q


def state(params, kind, wrt):
    """The flat state vector of the flowing parametrization."""
    parts = list(flowing(params, wrt))
    if kind == "output":
        parts += [params.out_weight, params.out_bias]
    return np.concatenate([np.ravel(p) for p in parts])


def monotone_problem(kind):
    """Seed 0 of conftest.make_problem: 20 points, L=2, M=3; no sliding mode up to t = 1."""
    pr = make_problem(0, L=2, M=3, N=20, Q=2, P=2)
    return pr.params, pr.dataset(kind)


@functools.lru_cache(maxsize=None)
def rk45_run(kind, wrt):
    """A tight-tolerance rk45 run to t = 1 with the (t, cost) of every accepted step."""
    params, ds = monotone_problem(kind)
    steps = []
    r = tf.simulate(params, ds, 1.0, kind=kind, wrt=wrt, rtol=1e-9, atol=1e-11, max_evals=GUARD,
                    callback=lambda t, c: steps.append((t, c)))
    assert r.status == "t_end", r.message
    return r, np.array(steps)


def non_increasing(costs, scale):
    inc = np.diff(costs)
    assert inc.max() <= 1e-13 * scale, f"cost increased by {inc.max():.3e} at step {int(np.argmax(inc)) + 1}"


# --------------------------------------------------------- cost and invariants
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_rk45_cost_never_increases(kind, wrt):
    r, steps = rk45_run(kind, wrt)
    t, c = steps[:, 0], steps[:, 1]
    assert np.all(np.diff(t) > 0) and t[-1] == 1.0
    non_increasing(np.concatenate([[r.cost[0]], c]), r.cost[0])
    non_increasing(r.cost, r.cost[0])              # at the records (dense output) too
    assert r.cost[-1] < 0.9 * r.cost[0]
    assert r.pattern_changes.sum() > 0             # the run crossed hyperplanes


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_flow_conserves_row_norms(kind, wrt):
    r, _ = rk45_run(kind, wrt)
    q0 = conserved(r.params[0], kind, wrt)
    scale = np.abs(q0).max()
    for p in r.params[1:]:
        assert_close(conserved(p, kind, wrt), q0, 1e-7, "conserved row norms", floor=scale)
    # and the flow did move the rows
    w0, w1 = flowing(r.params[0], wrt)[0], flowing(r.final, wrt)[0]
    assert np.abs(np.asarray(w1) - w0).max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_gd_cost_never_increases(kind, wrt, seed):
    params = tf.Params.random(2, 3, scale=0.3, bias_scale=0.5, out_dim=2, seed=seed)
    rng = np.random.default_rng(100 + seed)
    pts = rng.standard_normal((20, 3))
    targets = rng.standard_normal((2, 3 if kind == "input" else 2))
    ds = tf.Dataset(pts, np.arange(20) % 2, targets)
    costs = []
    r = tf.simulate(params, ds, 1.0, kind=kind, wrt=wrt, method="gd", lr=5e-3,
                    callback=lambda t, c: costs.append(c))
    assert r.status == "t_end" and r.steps_accepted[-1] == 200
    non_increasing(np.concatenate([[r.cost[0]], costs]), r.cost[0])
    assert costs[-1] < 0.95 * r.cost[0]


# -------------------------------------------------------------- gd is Euler
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_gd_is_euler_by_hand(kind, wrt):
    pr = make_problem(2, L=3, M=3, N=15, Q=2, P=2)
    ds = pr.dataset(kind)
    lr, k = 0.05, 6
    times = [j * lr for j in range(1, k + 1)]
    r = tf.simulate(pr.params, ds, k * lr, kind=kind, wrt=wrt, method="gd", lr=lr, record_times=times)
    assert r.status == "t_end"
    assert np.array_equal(r.t, [0.0] + times)
    assert np.array_equal(r.steps_accepted, np.arange(k + 1))
    p = pr.params
    for j in range(1, k + 1):
        _, g = tf.gradient(p, ds, kind, wrt)
        w, b = flowing(p, wrt)
        w, b = w - lr * g.weights, b - lr * g.biases
        ow, ob = p.out_weight, p.out_bias
        if kind == "output":
            ow, ob = ow - lr * g.out_weight, ob - lr * g.out_bias
        build = tf.Params.from_cumulative if wrt == "cumulative" else tf.Params.from_layers
        p = build(w, b, ow, ob)
        got = r.params[j]
        for name in ("weights", "biases", "cum_weights", "cum_biases"):
            assert_close(getattr(got, name), getattr(p, name), 1e-12, f"step {j} {name}")
        if kind == "output":
            assert_close(got.out_weight, p.out_weight, 1e-12, f"step {j} out_weight")
            assert_close(got.out_bias, p.out_bias, 1e-12, f"step {j} out_bias")
    assert r.pattern_changes.sum() > 0 or kind == "output"


# ------------------------------------------------------ smooth problems: accuracy
def smooth_output_problem():
    """Output cost, every point free in every layer during the run (large positive biases,
    small points, targets near the initial outputs): the RHS is a polynomial."""
    rng = np.random.default_rng(3)
    L, M, P, Q, N = 2, 3, 2, 2, 12
    cw = np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    cb = np.full((L, M), 1.0)
    ow = rng.standard_normal((P, M)) / np.sqrt(M)
    ob = 0.1 * rng.standard_normal(P)
    params = tf.Params.from_cumulative(cw, cb, ow, ob)
    pts = 0.3 * rng.standard_normal((N, M))
    labels = np.arange(N) % Q
    F = (pts @ cw[-1].T + cb[-1]) @ ow.T + ob
    targets = np.array([F[labels == q].mean(axis=0) for q in range(Q)]) + 0.5 * rng.standard_normal((Q, P))
    return params, tf.Dataset(pts, labels, targets)


def smooth_input_problem():
    """Input cost, L=2, points truncated in some coordinates and free in others, all at least
    0.2 away from every hyperplane at the start; for t <= 0.2 none crosses."""
    rng = np.random.default_rng(1)
    L, M, Q = 2, 3, 2
    W = np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    b = 0.5 * rng.standard_normal((L, M))
    params = tf.Params.from_layers(W, b)
    pts = rng.standard_normal((150, M))
    a = ref.cumulative_preacts(params.cum_weights, params.cum_biases, pts)
    pts = pts[np.abs(a).min(axis=(0, 2)) > 0.2]
    return params, tf.Dataset(pts, np.arange(len(pts)) % Q, rng.standard_normal((Q, M)))


SMOOTH = {"output": (smooth_output_problem, 0.5), "input": (smooth_input_problem, 0.2)}


@functools.lru_cache(maxsize=None)
def smooth_case(kind, wrt):
    """(params, dataset, t_end, FlowProblem, dense DOP853 reference) with the smoothness checked."""
    make, t_end = SMOOTH[kind]
    params, ds = make()
    fp = FlowProblem(params, ds, kind=kind, wrt=wrt)
    sol = solve_ivp(lambda t, y: -fp.evaluate(y)[1], (0.0, t_end), fp.pack(params), method="DOP853",
                    rtol=1e-13, atol=1e-13, dense_output=True)
    assert sol.status == 0
    # precondition: no point crosses a hyperplane along the reference trajectory
    p0 = tf.activation_patterns(params, ds.points)
    trunc0 = tf.observe(params, ds, kind).coordinate_truncated_fraction
    assert 0 < trunc0.sum() or kind == "output"
    for s in np.linspace(0.0, t_end, 41):
        p = fp.unpack(sol.sol(s))
        a = ref.cumulative_preacts(p.cum_weights, p.cum_biases, np.asarray(ds.points))
        assert np.abs(a).min() > 0.02, f"a point comes close to a hyperplane at t={s}"
        assert np.array_equal(tf.activation_patterns(p, ds.points), p0)
    return params, ds, t_end, fp, sol.sol


SMOOTH_CASES = [(k, w) for k in KINDS for w in WRTS]


def _slopes(h, err):
    return np.diff(np.log(err)) / np.diff(np.log(h))


@pytest.mark.parametrize("kind,wrt", SMOOTH_CASES)
def test_rk45_fixed_step_order(kind, wrt):
    """With a fixed step (huge tolerances, max_step = first_step = h) the error at t_end
    falls at least like h^5, and the steps are exactly SciPy's Dormand-Prince steps."""
    params, ds, t_end, fp, sol = smooth_case(kind, wrt)
    y_end = sol(t_end)
    ns = {"output": (6, 12, 24), "input": (2, 4, 8)}[kind]
    hs, errs = [], []
    for n in ns:
        h = t_end / n
        r = tf.simulate(params, ds, t_end, kind=kind, wrt=wrt, rtol=1e10, atol=1e10, first_step=h, max_step=h,
                        record_times=[t_end])
        assert r.status == "t_end" and r.steps_rejected[-1] == 0
        assert n <= r.steps_accepted[-1] <= n + 1        # + a round-off sliver at the end
        y = state(r.final, kind, wrt)
        hs.append(h)
        errs.append(np.abs(y - y_end).max())
        # the same steps driven by hand through scipy.integrate.RK45
        solver = RK45(lambda t, v: -fp.evaluate(v)[1], 0.0, fp.pack(params), t_end, rtol=1e10, atol=1e10,
                      first_step=h, max_step=h)
        while solver.status == "running":
            solver.step()
        assert_close(y, solver.y, 1e-13, "engine vs scipy RK45")
    errs = np.array(errs)
    assert errs.min() > 1e-11, errs                      # still far above round-off
    slopes = _slopes(hs, errs)
    assert slopes.min() >= 4.5, f"observed orders {slopes}, errors {errs}"


@pytest.mark.parametrize("kind,wrt", SMOOTH_CASES)
def test_rk45_error_falls_with_tolerance(kind, wrt):
    params, ds, t_end, fp, sol = smooth_case(kind, wrt)
    times = [0.3 * t_end, 0.7 * t_end]
    errs = []
    for tol in (1e-6, 1e-8, 1e-10):
        r = tf.simulate(params, ds, t_end, kind=kind, wrt=wrt, rtol=tol, atol=tol, record_times=times)
        assert r.status == "t_end"
        assert np.array_equal(r.t, [0.0] + times + [t_end])        # record times honoured exactly
        err = max(np.abs(state(p, kind, wrt) - sol(t)).max() for p, t in zip(r.params, r.t))
        assert err <= 100 * tol, f"tol {tol}: error {err:.3e}"
        errs.append(err)
    assert errs[1] < errs[0] / 10 and errs[2] < errs[1] / 10, errs


@pytest.mark.parametrize("kind,wrt", SMOOTH_CASES)
def test_gd_is_first_order(kind, wrt):
    params, ds, t_end, fp, sol = smooth_case(kind, wrt)
    y_end = sol(t_end)
    lrs, errs = [], []
    for n in (100, 200, 400, 800):
        lr = t_end / n
        r = tf.simulate(params, ds, t_end, kind=kind, wrt=wrt, method="gd", lr=lr, record_times=[t_end])
        assert r.status == "t_end" and r.steps_accepted[-1] == n
        assert r.t[-1] == pytest.approx(t_end, rel=1e-12)
        lrs.append(lr)
        errs.append(np.abs(state(r.final, kind, wrt) - y_end).max())
    slope = np.polyfit(np.log(lrs), np.log(errs), 1)[0]
    assert abs(slope - 1) <= 0.1, f"slope {slope}, errors {errs}"
    assert np.all(np.abs(_slopes(lrs, errs) - 1) <= 0.1)


# --------------------------------------------------- train= and frozen_layers=
@pytest.mark.parametrize("method", ["rk45", "gd"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
@pytest.mark.parametrize("mode", ["biases", "weights", "frozen"])
def test_frozen_parts_stay_exactly(method, kind, wrt, mode):
    pr = make_problem(4, L=3, M=3, N=20, Q=2, P=2)
    ds = pr.dataset(kind)
    # exactness does not need t_end: a run stuck in a sliding mode may stop on max_evals
    opts = dict(rtol=1e-6, atol=1e-9, max_evals=1000) if method == "rk45" else dict(lr=0.01)
    train = mode if mode != "frozen" else "all"
    frozen = (2,) if mode == "frozen" else ()
    r = tf.simulate(pr.params, ds, 0.3, kind=kind, wrt=wrt, method=method, train=train, frozen_layers=frozen,
                    n_records=5, **opts)
    assert r.status in ("t_end", "max_evals"), r.message
    w0, b0 = (np.asarray(a) for a in flowing(pr.params, wrt))
    ws, bs = (r.cum_weights, r.cum_biases) if wrt == "cumulative" else (r.weights, r.biases)
    moved = lambda a, a0: np.abs(a[-1] - a0).max() > 1e-6
    if mode == "biases":
        assert np.all(ws == w0)
        assert moved(bs, b0)
        if kind == "output":
            assert np.all(r.out_weight == pr.params.out_weight)
            assert moved(r.out_bias, pr.params.out_bias)
    elif mode == "weights":
        assert np.all(bs == b0)
        assert moved(ws, w0)
        if kind == "output":
            assert np.all(r.out_bias == pr.params.out_bias)
            assert moved(r.out_weight, pr.params.out_weight)
    else:
        assert np.all(ws[:, 1] == w0[1]) and np.all(bs[:, 1] == b0[1])
        assert moved(ws[:, [0, 2]], w0[[0, 2]]) or moved(bs[:, [0, 2]], b0[[0, 2]])
        if kind == "output":
            assert moved(r.out_weight, pr.params.out_weight)
    assert r.config["train"] == train and r.config["frozen_layers"] == list(frozen)
    # the recorded gradient norm is that of the masked gradient, the flow's actual speed
    fp = FlowProblem(pr.params, ds, kind=kind, wrt=wrt, train=train, frozen_layers=frozen)
    _, g = fp.evaluate(fp.pack(r.final))
    assert r.grad_norm[-1] == pytest.approx(np.linalg.norm(g), rel=1e-10)
    _, g_all = tf.gradient(r.final, ds, kind, wrt)
    assert np.linalg.norm(g) < g_all.norm()


# ------------------------------------------------ aligned model (MODEL.md section 9)
def rotation(M, seed):
    """A random rotation (orthogonal, det +1)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((M, M)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def exact_threshold(t0, w, eta, lam, n_total, s_end):
    """Exact solution of dt/ds = -(1/lam^2) dC/dt, dC/dt = (1/N) sum_{i: w_i <= t} (t - eta_i).

    ``w`` (n,): the rotated coordinate of every point, ``eta`` (n,): its cluster's rotated
    target. Between events the truncated set (w_i <= t) is fixed and t relaxes exponentially
    toward t* = mean of eta over it at rate n/(lam^2 N); the next event is t reaching the next
    sorted w above (a point gets truncated) or the w it sits on below (that point is released).
    A threshold with nothing truncated does not move. Raises if the flow would enter a sliding
    mode (t* jumping to the other side at an event), which these tests avoid by design.

    Returns (t(s_end), event times, event directions +1 / -1).
    """
    order = np.argsort(w, kind="stable")
    w, eta = np.asarray(w, float)[order], np.asarray(eta, float)[order]
    n = int(np.searchsorted(w, t0, side="right"))     # w <= t: truncated
    t, s, times, dirs = float(t0), 0.0, [], []
    while n > 0:
        target = eta[:n].sum() / n
        if target == t:
            break
        rate = n / (lam ** 2 * n_total)
        up = target > t
        nxt = (w[n] if n < w.size else math.inf) if up else w[n - 1]
        reached = nxt < target if up else nxt > target
        ds_hit = math.log((t - target) / (nxt - target)) / rate if reached else math.inf
        if s + ds_hit >= s_end:
            return target + (t - target) * math.exp(-rate * (s_end - s)), times, dirs
        s += ds_hit
        t = float(nxt)
        times.append(s)
        dirs.append(1 if up else -1)
        n += 1 if up else -1
        if n > 0:
            new_target = eta[:n].sum() / n
            if (up and new_target < t) or (not up and new_target > t):
                raise RuntimeError(f"sliding mode at t = {t}, s = {s}")
    return t, times, dirs


def aligned_problem():
    """W = diag(lam) R, two clusters given in rotated coordinates w = R x:
    coordinate 0: both clusters overlap, the threshold starts among the lowest points with
    targets above every point: it rises, truncating points of both clusters;
    coordinate 1: it starts above every point, targets below: it falls, releasing points;
    coordinate 2: it starts below every point: nothing truncated, it must not move."""
    M = 3
    R = rotation(M, 1)
    lam = np.array([1.3, 0.7, 1.0])
    rng = np.random.default_rng(5)
    n0, n1 = 25, 20
    w0 = np.column_stack([rng.uniform(-1, 1, n0), rng.uniform(0.0, 2.0, n0), rng.uniform(1, 2, n0)])
    w1 = np.column_stack([rng.uniform(-0.5, 1.5, n1), rng.uniform(0.5, 2.5, n1), rng.uniform(1.5, 3, n1)])
    w = np.vstack([w0, w1])
    labels = np.repeat([0, 1], [n0, n1])
    t0 = np.array([-0.7, 2.2, 0.5])
    eta = np.array([[1.8, 0.3, 5.0], [2.5, 0.8, 4.0]])
    params = tf.Params.from_layers((lam[:, None] * R)[None], (-lam * t0)[None])
    ds = tf.Dataset(w @ R, labels, eta @ R)      # x_i = R^T w_i, targets R^T eta_c
    return params, ds, R, lam, w, labels, t0, eta


def exact_aligned_biases(s, lam, w, labels, t0, eta):
    out = []
    for k in range(len(lam)):
        t, _, _ = exact_threshold(t0[k], w[:, k], eta[labels, k], lam[k], len(w), s)
        out.append(-lam[k] * t)
    return np.array(out)


def test_exact_threshold_solver_covers_both_directions():
    params, ds, R, lam, w, labels, t0, eta = aligned_problem()
    dirs = [exact_threshold(t0[k], w[:, k], eta[labels, k], lam[k], len(w), 6.0)[2] for k in range(3)]
    assert len(dirs[0]) > 20 and set(dirs[0]) == {1}
    assert len(dirs[1]) > 20 and set(dirs[1]) == {-1}
    assert dirs[2] == []
    # the rising threshold truncates points of both clusters, which share coordinate 0
    t_end0 = exact_threshold(t0[0], w[:, 0], eta[labels, 0], lam[0], len(w), 6.0)[0]
    assert all(((w[:, 0] <= t_end0) & (labels == c)).any() for c in (0, 1))
    # single point, closed form: t* = eta, t(s) = eta + (t0 - eta) exp(-s / (lam^2 N))
    t, times, _ = exact_threshold(0.0, np.array([-1.0]), np.array([2.0]), 2.0, 5, 3.0)
    assert t == pytest.approx(2.0 - 2.0 * math.exp(-3.0 / 20.0), rel=1e-14) and times == []


@functools.lru_cache(maxsize=None)
def aligned_run(wrt):
    params, ds, *_ = aligned_problem()
    return tf.simulate(params, ds, 6.0, wrt=wrt, train="biases", method="rk45", rtol=1e-10, atol=1e-12,
                       record_times=[1.0, 2.0, 3.0, 4.5], max_evals=100000)


@pytest.mark.parametrize("wrt", WRTS)
def test_aligned_biases_only_matches_exact_solution(wrt):
    params, ds, R, lam, w, labels, t0, eta = aligned_problem()
    r = aligned_run(wrt)
    assert r.status == "t_end", r.message
    assert np.array_equal(r.t, [0.0, 1.0, 2.0, 3.0, 4.5, 6.0])
    assert np.all(r.cum_weights == params.cum_weights)
    for i in range(1, r.n_records):
        exact = exact_aligned_biases(r.t[i], lam, w, labels, t0, eta)
        err = np.abs(r.cum_biases[i, 0] - exact).max()
        assert err <= 1e-6, f"t = {r.t[i]}: max error {err:.3e} against the exact solution"
        # truncated fraction per cluster and coordinate: points with w_k <= t_k
        t_exact = -exact / lam
        for q in (0, 1):
            frac = (w[labels == q] <= t_exact).mean(axis=0)
            assert np.array_equal(r.coordinate_truncated_fraction[i, 0, q], frac)
    assert r.cum_biases[-1, 0, 2] == params.cum_biases[0, 2]     # nothing truncated: exactly still
    assert r.cost[-1] < 0.8 * r.cost[0]


def test_aligned_layers_equals_cumulative_for_one_layer():
    a, b = aligned_run("cumulative"), aligned_run("layers")
    assert_close(b.biases, a.cum_biases, 1e-12, "layer vs cumulative flow, L = 1")
    assert np.array_equal(a.t, b.t)


def test_aligned_full_flow_conserves_lambda_and_bias():
    """Weights and biases flowing: |W_k|^2 + b_k^2 (= lam_k^2 + b_k^2 at the start) is conserved,
    although the unrestricted flow turns W away from the aligned frame."""
    params, ds, R, lam, w, labels, t0, eta = aligned_problem()
    r = tf.simulate(params, ds, 0.3, train="all", rtol=1e-10, atol=1e-12, n_records=5, max_evals=GUARD)
    assert r.status == "t_end", r.message
    q0 = lam ** 2 + (lam * t0) ** 2
    for i in range(r.n_records):
        q = (r.cum_weights[i, 0] ** 2).sum(axis=1) + r.cum_biases[i, 0] ** 2
        assert_close(q, q0, 1e-9, f"record {i}")
    off = r.cum_weights[-1, 0] @ R.T
    assert np.abs(off - np.diag(np.diag(off))).max() > 1e-3      # it did leave the aligned family


# ------------------------------------------------------------- stopping rules
def stop_problem():
    return monotone_problem("output")


@functools.lru_cache(maxsize=None)
def full_run(method):
    params, ds = stop_problem()
    opts = dict(rtol=1e-8, atol=1e-10) if method == "rk45" else dict(lr=0.01)
    return tf.simulate(params, ds, 1.0, kind="output", method=method, max_evals=GUARD, **opts), opts


def run_with(method, **rules):
    params, ds = stop_problem()
    _, opts = full_run(method)
    steps = []
    user_cb = rules.pop("callback", None)

    def cb(t, c):
        steps.append((t, c))
        if user_cb:
            user_cb(t, c)
    r = tf.simulate(params, ds, 1.0, kind="output", method=method, callback=cb, **opts, **rules)
    return r, np.array(steps)


def check_final_record(r, steps):
    """The last record is the state the run stopped at."""
    assert r.t[-1] == steps[-1, 0]
    assert r.cost[-1] == pytest.approx(steps[-1, 1], rel=1e-13)
    params, ds = stop_problem()
    assert r.cost[-1] == pytest.approx(tf.cost(r.final, ds, "output"), rel=1e-12)
    assert np.all(np.diff(r.t) > 0)


@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_stop_at_t_end(method):
    r, _ = full_run(method)
    assert r.status == "t_end" and r.success and r.message == "reached t_end"
    if method == "rk45":
        assert r.t[-1] == 1.0
    else:
        assert r.t[-1] == pytest.approx(1.0, rel=1e-12) and r.steps_accepted[-1] == 100


@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_stop_on_cost_tol(method):
    full, _ = full_run(method)
    tol = math.sqrt(full.cost[0] * full.cost[-1])
    r, steps = run_with(method, cost_tol=tol)
    assert r.status == "cost_tol" and r.success
    assert "cost_tol" in r.message
    assert r.cost[-1] <= tol and np.all(steps[:-1, 1] > tol)
    assert 0 < r.t[-1] < 1.0
    check_final_record(r, steps)


@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_stop_on_grad_tol(method):
    full, _ = full_run(method)
    assert full.grad_norm[-1] < 0.5 * full.grad_norm[0]
    tol = 0.5 * (full.grad_norm[0] + full.grad_norm[-1])
    r, steps = run_with(method, grad_tol=tol)
    assert r.status == "grad_tol" and r.success
    assert r.grad_norm[-1] <= tol and np.all(r.grad_norm[:-1] > tol)
    assert 0 < r.t[-1] < 1.0
    check_final_record(r, steps)


@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_stop_on_max_evals(method):
    r, steps = run_with(method, max_evals=40)
    assert r.status == "max_evals" and not r.success
    assert r.evaluations[-1] >= 40
    if method == "gd":      # one evaluation at the start, then one per step: stops after step 39
        assert r.evaluations[-1] == 40 and r.steps_accepted[-1] == 39
    else:                   # stops after the step that reached the limit (6 evaluations per attempt)
        assert r.evaluations[-1] < 40 + 6 * 8
    assert 0 < r.t[-1] < 1.0
    check_final_record(r, steps)


@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_stop_on_max_time(method):
    r, steps = run_with(method, max_time=0.5, callback=lambda t, c: time.sleep(0.1))
    assert r.status == "max_time" and not r.success
    assert "wall-clock" in r.message
    assert 0 < r.t[-1] < 1.0 and len(steps) >= 2
    check_final_record(r, steps)


# ----------------------------------------------------------------- divergence
@pytest.mark.parametrize("wrt", WRTS)
def test_divergence_keeps_records(wrt, tmp_path):
    pr = make_problem(0, L=2, M=3, N=20, Q=2, P=2)
    ds = pr.dataset("output")
    lr = 10.0
    r = tf.simulate(pr.params, ds, 1e4, kind="output", wrt=wrt, method="gd", lr=lr,
                    record_times=lr * np.arange(1, 100))
    assert r.status == "diverged" and not r.success
    assert "diverged" in r.message and "singular" in r.message
    assert r.n_records >= 2
    assert np.all(np.isfinite(r.cost)) and np.all(np.isfinite(r.grad_norm))
    assert np.all(np.isfinite(r.cum_weights))
    assert np.array_equal(r.t, lr * np.arange(r.n_records))
    back = tf.load_result(r.save(tmp_path / "diverged"))
    assert back.status == "diverged" and back.message == r.message and not back.success
    for k, v in r.series.items():
        assert np.array_equal(back.series[k], v), k


# -------------------------------------------------------------------- records
@pytest.mark.parametrize("kind,wrt", [("input", "cumulative"), ("output", "layers")])
def test_records(kind, wrt):
    r, _ = rk45_run(kind, wrt)
    params, ds = monotone_problem(kind)
    L, M, Q = 2, 3, 2
    P = params.out_dim or 0      # the output layer is recorded whenever the params have one
    T = r.n_records
    # default schedule: 0, then n_records - 1 = 49 log-spaced times up to t_end
    assert T == 50 and r.t[0] == 0 and r.t[-1] == 1.0 and np.all(np.diff(r.t) > 0)
    assert np.array_equal(r.t[1:], np.geomspace(1e-3, 1.0, 49))
    shapes = {"t": (T,), "cost": (T,), "cost_per_cluster": (T, Q), "grad_norm": (T,),
              "truncated_fraction": (T, L, Q), "collapsed_fraction": (T, L, Q),
              "coordinate_truncated_fraction": (T, L, Q, M), "free_coordinates": (T, L, Q),
              "spread": (T, L, Q), "collapse_ratio": (T, L), "n_patterns": (T,), "pattern_changes": (T,),
              "steps_accepted": (T,), "steps_rejected": (T,), "evaluations": (T,),
              "weights": (T, L, M, M), "biases": (T, L, M), "cum_weights": (T, L, M, M), "cum_biases": (T, L, M),
              "out_weight": (T, P, M), "out_bias": (T, P), "sliding_points": (T, L, Q)}
    assert set(r.series) == set(shapes)
    assert not r.sliding_points.any()          # only method="kinks" holds points in sliding modes
    for k, s in shapes.items():
        assert r.series[k].shape == s, k
    assert_close(r.cost_per_cluster.sum(axis=1), r.cost, 1e-13, "cost per cluster")
    assert_close(r.free_coordinates, M - r.coordinate_truncated_fraction.sum(axis=3), 1e-15, "free coordinates")
    assert np.all(r.spread >= 0) and np.all(r.collapse_ratio >= 0)
    assert np.all(r.collapsed_fraction <= r.truncated_fraction)
    assert r.pattern_changes[0] == 0 and np.all(r.pattern_changes >= 0)
    for c in ("steps_accepted", "steps_rejected", "evaluations"):
        assert r.series[c][0] >= 0 and np.all(np.diff(r.series[c]) >= 0), c
    assert r.evaluations[-1] >= 6 * (r.steps_accepted[-1] + r.steps_rejected[-1])
    fp = FlowProblem(params, ds, kind=kind, wrt=wrt)
    recorded = r.params
    prev = None
    for i, p in enumerate(recorded):
        for name in ("weights", "biases", "cum_weights", "cum_biases"):
            assert np.array_equal(getattr(p, name), r.series[name][i]), name
        assert_close(p.inverses, np.linalg.inv(p.cum_weights), 1e-10, "inverses")
        c, g = fp.evaluate(fp.pack(p))
        assert r.cost[i] == pytest.approx(c, rel=1e-12)
        assert r.grad_norm[i] == pytest.approx(np.linalg.norm(g), rel=1e-10)
        obs = tf.observe(p, ds, kind)
        assert np.array_equal(obs.truncated_fraction, r.truncated_fraction[i])
        assert r.n_patterns[i] == obs.n_patterns
        pats = tf.activation_patterns(p, ds.points).reshape(ds.n_points, -1)
        if prev is not None:
            assert r.pattern_changes[i] == np.count_nonzero((pats != prev).any(axis=1))
        prev = pats
    fin = r.final
    for name in ("weights", "biases", "cum_weights", "cum_biases", "out_weight", "out_bias"):
        a, b = getattr(fin, name), getattr(recorded[-1], name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert np.array_equal(fin.out_weight, params.out_weight) or kind == "output"


def test_record_times_rk45_and_gd():
    params, ds = monotone_problem("input")
    r = tf.simulate(params, ds, 1.0, rtol=1e-6, atol=1e-9, record_times=[0.6, 0.05, 0.2, 0.2], max_evals=GUARD)
    assert np.array_equal(r.t, [0.0, 0.05, 0.2, 0.6, 1.0])
    r = tf.simulate(params, ds, 1.0, rtol=1e-6, atol=1e-9, record_times=[0.0, 0.5, 1.0], max_evals=GUARD)
    assert np.array_equal(r.t, [0.0, 0.5, 1.0])
    # gd: the first iterate at or after each requested time, and the last iterate
    lr = 0.03
    r = tf.simulate(params, ds, 1.0, method="gd", lr=lr, record_times=[0.1, 0.5])
    assert np.array_equal(r.steps_accepted, [0, 4, 17, 34])
    assert_close(r.t, lr * np.array([0, 4, 17, 34]), 1e-15, "gd record times")


# ------------------------------------------------------------------ the file
def test_save_load_round_trip(tmp_path):
    params, ds = monotone_problem("output")
    r = tf.simulate(params, ds, 0.2, kind="output", wrt="layers", train="weights", frozen_layers=[1],
                    rtol=1e-6, n_records=7, config={"seed": 1234, "label": "round trip", "sizes": [1, 2]})
    assert r.config["seed"] == 1234 and r.config["label"] == "round trip"
    assert r.config["wrt"] == "layers" and r.config["t_end"] == 0.2
    path = r.save(tmp_path / "run")
    assert path.name == "run.npz" and path.is_file()
    back = tf.load_result(path)
    assert set(back.series) == set(r.series)
    for k, v in r.series.items():
        assert back.series[k].dtype == v.dtype and np.array_equal(back.series[k], v), k
    assert (back.status, back.message, back.success) == (r.status, r.message, r.success)
    assert back.config == r.config
    assert back.versions == r.versions and back.versions["truncflow"] == tf.__version__
    for a, b in zip(back.params, r.params):
        assert np.array_equal(a.cum_weights, b.cum_weights) and np.array_equal(a.out_weight, b.out_weight)
    with pytest.raises(ValueError, match="not found"):
        tf.load_result(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", t=np.zeros(3))
    with pytest.raises(ValueError, match="not a truncflow result"):
        tf.load_result(tmp_path / "other.npz")


@pytest.mark.long  # compiles the flow kernels for float32 points
def test_float32_points_run_like_float64():
    pr = make_problem(0, L=2, M=3, N=20, Q=2, P=2)
    pts32 = pr.points.astype(np.float32)
    runs = [tf.simulate(pr.params, pr.dataset("input", points=p), 0.2, method="gd", lr=0.01, n_records=5)
            for p in (pts32, pts32.astype(np.float64))]
    assert runs[0].config["points_dtype"] == "float32" and runs[1].config["points_dtype"] == "float64"
    assert np.array_equal(runs[0].t, runs[1].t)
    for name in ("cost", "cum_weights", "cum_biases"):
        assert_close(runs[0].series[name], runs[1].series[name], 1e-10, name)


# ------------------------------------------------------------- bad arguments
BAD = [
    (dict(t_end=0.0), "t_end"),
    (dict(t_end=-1.0), "t_end"),
    (dict(t_end=math.inf), "t_end"),
    (dict(t_end=math.nan), "t_end"),
    (dict(rtol=0.0), "rtol"),
    (dict(rtol=-1e-6), "rtol"),
    (dict(atol=0.0), "atol"),
    (dict(method="gd"), "lr"),
    (dict(method="gd", lr=0.0), "lr"),
    (dict(method="gd", lr=-0.1), "lr"),
    (dict(method="euler"), "method"),
    (dict(train="everything"), "train"),
    (dict(kind="hidden"), "kind"),
    (dict(wrt="both"), "wrt"),
    (dict(frozen_layers=[0]), "frozen_layers"),
    (dict(frozen_layers=[3]), "frozen_layers"),
    (dict(frozen_layers=["1"]), "frozen_layers"),
    (dict(record_times=[-0.1]), "record_times"),
    (dict(record_times=[0.5, 1.5]), "record_times"),
    (dict(record_times=[math.nan]), "record_times"),
    (dict(record_times=[]), "record_times"),
    (dict(train="biases", frozen_layers=[1, 2]), "frozen"),
    (dict(train="weights", frozen_layers=[1, 2]), "frozen"),
    (dict(n_records=1), "n_records"),
    (dict(max_evals=0), "max_evals"),
    (dict(cost_tol=-1.0), "cost_tol"),
    (dict(grad_tol=0.0), "grad_tol"),
    (dict(max_time=-1.0), "max_time"),
    (dict(first_step=0.0), "first_step"),
    (dict(callback=3), "callback"),
    (dict(config={"not json": object()}), "config"),
]


@pytest.mark.parametrize("kwargs,match", BAD, ids=[f"{m}-{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_arguments(kwargs, match):
    params, ds = monotone_problem("input")
    kwargs = dict(kwargs)
    t_end = kwargs.pop("t_end", 1.0)
    with pytest.raises(ValueError, match=match):
        tf.simulate(params, ds, t_end, **kwargs)


def test_first_step_beyond_t_end_is_refused():
    params, ds = monotone_problem("input")
    with pytest.raises(ValueError, match="first_step"):
        tf.simulate(params, ds, 1.0, first_step=10.0)


def test_output_layer_alone_may_train():
    """train="biases" with every hidden layer frozen still moves the output bias (output cost)."""
    params, ds = monotone_problem("output")
    r = tf.simulate(params, ds, 0.1, kind="output", method="gd", lr=0.01, train="biases", frozen_layers=[1, 2])
    assert np.all(r.cum_weights == params.cum_weights) and np.all(r.cum_biases == params.cum_biases)
    assert np.all(r.out_weight == params.out_weight)
    assert np.abs(r.out_bias[-1] - params.out_bias).max() > 1e-4
