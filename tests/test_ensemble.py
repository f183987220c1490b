"""Small problems fast and many flows at once (issue 12).

- FlowProblem.evaluate (the compiled per-evaluation path) gives the same bits as the
  public gradient of the unpacked parameters, in every parametrization and cost;
- the network's parameter maps in Numba agree with a NumPy reference;
- compiled gradient descent equals the Python step loop bit for bit, stops included;
- every member of simulate_ensemble equals its single run bit for bit, on each path.
"""
import numpy as np
import pytest

import truncflow as tf
from truncflow.engine import ensemble, integrate
from truncflow.engine.kinks import KinkOptions
from truncflow.engine.rhs import FlowProblem
from truncflow.kernels import network

from conftest import make_problem
from problems import rotation


def same_result(a, b):
    assert a.status == b.status and a.message == b.message
    assert sorted(a.series) == sorted(b.series)
    for k in a.series:
        assert np.array_equal(a.series[k], b.series[k]), k


# ------------------------------------------------------------ the parameter maps
@pytest.mark.parametrize("M", [1, 3, 66])
def test_network_maps_match_numpy(M):
    rng = np.random.default_rng(M)
    L = 3
    w = np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    b = rng.standard_normal((L, M))
    cw, cb = network.cumulative_from_layers(w, b)
    ref_w, ref_b = [w[0]], [b[0]]
    for l in range(1, L):
        ref_w.append(w[l] @ ref_w[-1])
        ref_b.append(w[l] @ ref_b[-1] + b[l])
    np.testing.assert_allclose(cw, ref_w, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cb, ref_b, rtol=1e-13, atol=1e-13)
    inv, cond = network.invert_stack(cw)
    np.testing.assert_allclose(inv, np.linalg.inv(cw), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(cond, [np.linalg.cond(c, 1) for c in cw], rtol=1e-10)
    w2, b2 = network.layers_from_cumulative(cw, cb, inv)
    np.testing.assert_allclose(w2, w, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b2, b, rtol=1e-11, atol=1e-12)
    # the pull-back of a cumulative gradient (MODEL.md section 7) against the NumPy sweep
    gw, gb = rng.standard_normal((L, M, M)), rng.standard_normal((L, M))
    lw, lb = network.layer_gradient(w, cw, cb, gw, gb)
    G, Bv = gw[-1].copy(), gb[-1].copy()
    for l in range(L - 1, -1, -1):
        prev_w, prev_b = (cw[l - 1], cb[l - 1]) if l else (np.eye(M), np.zeros(M))
        np.testing.assert_allclose(lw[l], G @ prev_w.T + np.outer(Bv, prev_b), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lb[l], Bv, rtol=1e-12, atol=1e-12)
        if l:
            G, Bv = gw[l - 1] + w[l].T @ G, gb[l - 1] + w[l].T @ Bv


def test_an_exactly_singular_matrix_has_infinite_condition():
    cw = np.array([[[1.0, 2.0], [2.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]]])
    inv, cond = network.invert_stack(cw)
    assert np.isinf(cond[0]) and np.isinf(cond[1]) and cond[2] == pytest.approx(1.5)


# ------------------------------------------------------ the per-evaluation path
CASES = [  # (L, M, N, kind, wrt, P): M = 1, M not a multiple of the block, M > 64, several chunks
    (2, 2, 16, "input", "layers", None),
    (2, 2, 16, "input", "cumulative", None),
    (1, 1, 7, "output", "cumulative", 2),
    (3, 5, 3000, "output", "layers", 3),
    (2, 66, 40, "input", "cumulative", None),
    (2, 3, 2500, "input", "layers", None),
]


@pytest.mark.parametrize("L,M,N,kind,wrt,P", CASES)
@pytest.mark.parametrize("dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.long)])  # long: float32 kernels
def test_evaluate_is_the_public_gradient_bit_for_bit(L, M, N, kind, wrt, P, dtype):
    pr = make_problem(11, L=L, M=M, N=N, Q=3, P=P)
    ds = pr.dataset(kind, pr.points.astype(dtype))
    problem = FlowProblem(pr.params, ds, kind=kind, wrt=wrt, frozen_layers=(1,) if L > 1 else ())
    y = problem.pack(pr.params) * (1 + 1e-3 * np.random.default_rng(0).standard_normal(problem.size))
    c, g = problem.evaluate(y)
    c_ref, grad = tf.gradient(problem.unpack(y), ds, kind, wrt)
    assert c == c_ref
    assert np.array_equal(g, problem.gradient_vector(grad))
    assert problem.serial == (N <= 1024)


def test_evaluate_aligned_and_points_on_hyperplanes():
    M = 3
    frames = np.stack([np.eye(M), np.eye(M)[[2, 0, 1]]])      # exact: a_k = lambda_k x_k + b_k
    p = tf.Params.aligned(frames, np.full((2, M), 1.3), np.array([[0.0, -0.2, 0.3], [0.0, 0.1, 0.0]]))
    x = np.random.default_rng(0).standard_normal((30, M))
    x[:5, 0] = 0.0                                  # on the hyperplane a_1 = 0 of layer 1 (exactly)
    ds = tf.Dataset(x, np.arange(30) % 2, np.ones((2, M)))
    problem = FlowProblem(p, ds, wrt="aligned")
    y = problem.pack(p)
    c, g = problem.evaluate(y)
    c_ref, grad = tf.gradient(problem.unpack(y), ds, wrt="aligned")
    assert c == c_ref and np.array_equal(g, problem.gradient_vector(grad))


def test_a_state_that_cannot_be_evaluated_raises_the_public_error():
    pr = make_problem(3, L=2, M=2, N=20)
    problem = FlowProblem(pr.params, pr.dataset(), wrt="cumulative")
    y = problem.pack(pr.params)
    y[:4] = [1.0, 2.0, 2.0, 4.0]                     # W^(1) singular
    with pytest.raises(ValueError, match="singular"):
        problem.evaluate(y)
    aligned = tf.Params.aligned(np.stack([rotation(2, 1)]), np.ones((1, 2)), np.zeros((1, 2)))
    problem = FlowProblem(aligned, pr.dataset(), wrt="aligned")
    y = problem.pack(aligned)
    y[0] = -1.0                                        # a negative scale
    with pytest.raises(ValueError, match="scales must be positive"):
        problem.evaluate(y)


# ------------------------------------------------------ compiled gradient descent
def python_steps(monkeypatch):
    monkeypatch.setattr(integrate._GdLoop, "_advance", integrate._GdLoop._advance_python)


@pytest.mark.parametrize("extra", [{}, {"cost_tol": 0.3}, {"grad_tol": 0.5}, {"max_evals": 77},
                                   {"lr": 3.0, "t_end": 200.0}])
def test_compiled_descent_is_the_python_loop_bit_for_bit(extra, monkeypatch):
    pr = make_problem(5, L=2, M=3, N=50, Q=2, P=2)
    options = {**dict(method="gd", lr=0.01, kind="output", wrt="layers", n_records=12, t_end=2.0), **extra}
    with np.errstate(all="ignore"):
        fast = tf.simulate(pr.params, pr.dataset("output"), **options)
        python_steps(monkeypatch)
        slow = tf.simulate(pr.params, pr.dataset("output"), **options)
    same_result(fast, slow)
    expected = {"cost_tol": "cost_tol", "grad_tol": "grad_tol", "max_evals": "max_evals", "lr": "diverged"}
    assert fast.status == expected.get(next(iter(extra), None), "t_end")


# --------------------------------------------------------------------- ensembles
def members(B, L=2, M=2, seeds=None):
    return [tf.Params.random(L, M, seed=s, out_dim=2) for s in (seeds or range(B))]


def single_runs(params, datasets, t_end, **options):
    return [tf.simulate(p, d, t_end, **options, config={"member": b}) for b, (p, d) in
            enumerate(zip(params, datasets))]


@pytest.mark.parametrize("kind,wrt", [("input", "layers"), ("output", "cumulative")])
@pytest.mark.long  # compiles the ensemble kernels (descend_many, observe_many)
def test_gradient_descent_ensemble_equals_single_runs(kind, wrt):
    rng = np.random.default_rng(1)
    x, lab = rng.standard_normal((64, 2)), rng.integers(0, 3, 64)
    P = 2
    datasets = [tf.Dataset(x, lab, rng.standard_normal((3, 2 if kind == "input" else P))) for _ in range(5)]
    params = members(5)
    options = dict(method="gd", lr=0.02, kind=kind, wrt=wrt, n_records=9, cost_tol=0.05)
    results = tf.simulate_ensemble(params, datasets, 3.0, **options)
    for got, want in zip(results, single_runs(params, datasets, 3.0, **options)):
        same_result(got, want)
        assert got.config["member"] == want.config["member"]
    assert len({r.status for r in results}) >= 1 and all(r.status in ("t_end", "cost_tol") for r in results)


def test_rk45_ensemble_equals_single_runs_in_this_process_and_in_workers(monkeypatch):
    rng = np.random.default_rng(2)
    ds = tf.Dataset(rng.standard_normal((40, 2)), rng.integers(0, 2, 40), rng.standard_normal((2, 2)))
    params = members(4, seeds=[0, 2, 3, 5])      # (seed 1 slides on a kink: rk45 takes 10^5 steps there)
    options = dict(wrt="layers", rtol=1e-5, record_times=[0.1, 0.4])
    want = single_runs(params, [ds] * 4, 0.4, **options)
    for got, w in zip(tf.simulate_ensemble(params, ds, 0.4, workers=1, **options), want):
        same_result(got, w)
    monkeypatch.setattr(ensemble, "PROCESSES_AFTER", 0.0)        # the rest go to two worker processes
    for got, w in zip(tf.simulate_ensemble(params, ds, 0.4, workers=2, **options), want):
        same_result(got, w)


def _kinks_ensemble_equals_single_runs(monkeypatch, workers):
    """method="kinks" members (crossings located, a sliding mode, kink options passed on) equal
    their single runs bit for bit, counts and sliding intervals included."""
    rng = np.random.default_rng(1)
    ds = tf.Dataset(rng.standard_normal((24, 2)), np.arange(24) % 2, rng.standard_normal((2, 2)))
    params = [tf.Params.random(2, 2, scale=0.5, bias_scale=0.5, seed=s) for s in (1, 3, 4)]
    options = dict(wrt="layers", method="kinks", rtol=1e-7, atol=1e-9, record_times=[0.5, 2.0],
                   kink_options=KinkOptions(nodes=7))
    want = single_runs(params, [ds] * 3, 2.0, **options)
    assert sum(r.config["kinks"]["events_located"] + r.config["kinks"]["corrected_crossings"] for r in want) >= 3
    monkeypatch.setattr(ensemble, "PROCESSES_AFTER", 0.0 if workers > 1 else 1e9)
    for got, w in zip(tf.simulate_ensemble(params, ds, 2.0, workers=workers, **options), want):
        same_result(got, w)
        assert got.config["kinks"] == w.config["kinks"]
        assert np.array_equal(got.arrays["sliding_intervals"], w.arrays["sliding_intervals"])


def test_kinks_ensemble_equals_single_runs_in_this_process(monkeypatch):
    _kinks_ensemble_equals_single_runs(monkeypatch, 1)


@pytest.mark.long
def test_kinks_ensemble_equals_single_runs_in_worker_processes(monkeypatch):
    """The same in two worker processes (long: each compiles the kink integrator's kernels)."""
    _kinks_ensemble_equals_single_runs(monkeypatch, 2)


def test_ensemble_refusals():
    pr = make_problem(0, L=2, M=2, N=10)
    ds = pr.dataset()
    with pytest.raises(ValueError, match="sequence of Params"):
        tf.simulate_ensemble(pr.params, ds, 1.0)
    with pytest.raises(ValueError, match="at least one member"):
        tf.simulate_ensemble([], ds, 1.0)
    with pytest.raises(ValueError, match=r"params\[1\].*same"):
        tf.simulate_ensemble([pr.params, tf.Params.random(3, 2)], ds, 1.0)
    with pytest.raises(ValueError, match="2 datasets for 1 members"):
        tf.simulate_ensemble([pr.params], [ds, ds], 1.0)
    other = tf.Dataset(pr.points[:5], pr.labels[:5], pr.targets_in)
    with pytest.raises(ValueError, match=r"dataset\[1\].*one shape"):
        tf.simulate_ensemble([pr.params, pr.params], [ds, other], 1.0)
    with pytest.raises(ValueError, match="checkpoint"):
        tf.simulate_ensemble([pr.params], ds, 1.0, checkpoint="x.npz")
    with pytest.raises(ValueError, match="unknown option.*'step'"):
        tf.simulate_ensemble([pr.params], ds, 1.0, step=3)
    with pytest.raises(ValueError, match="member 0: method='gd' needs a learning rate"):
        tf.simulate_ensemble([pr.params], ds, 1.0, method="gd")
    with pytest.raises(ValueError, match="workers"):
        tf.simulate_ensemble([pr.params], ds, 1.0, method="rk45", workers=0)


@pytest.mark.parametrize("wrt", ["layers", "cumulative", "aligned"])
def test_unpack_builds_the_params_the_constructors_build(wrt):
    M = 3
    if wrt == "aligned":
        p = tf.Params.aligned(np.stack([rotation(M, 1), rotation(M, 2)]), np.full((2, M), 1.3),
                              np.array([[0.1, -0.2, 0.3], [0.0, 0.1, -0.1]]))
    else:
        p = make_problem(4, L=2, M=M, N=5).params
    ds = tf.Dataset(np.zeros((5, M)), np.zeros(5, dtype=int), np.zeros((1, M)))
    problem = FlowProblem(p, ds, wrt=wrt)
    y = problem.pack(p) * (1 + 1e-3 * np.random.default_rng(1).standard_normal(problem.size))
    got = problem.unpack(y)
    w, b = problem._split(y)[:2]
    want = {"layers": lambda: tf.Params.from_layers(w, b), "cumulative": lambda: tf.Params.from_cumulative(w, b),
            "aligned": lambda: tf.Params.aligned(p.frames, w, b)}[wrt]()
    for name in ("weights", "biases", "cum_weights", "cum_biases", "inverses"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
        assert not getattr(got, name).flags.writeable
    assert got.is_aligned == (wrt == "aligned")


@pytest.mark.long  # its SIGINT comes 0.5 s in: the ensemble kernels must be compiled (by the long tests above)
def test_a_signal_stops_every_member_with_what_it_recorded():
    import os
    import signal
    import threading
    rng = np.random.default_rng(3)
    ds = tf.Dataset(rng.standard_normal((32, 2)), rng.integers(0, 2, 32), rng.standard_normal((2, 2)))
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        results = tf.simulate_ensemble(members(3), ds, 1e5, method="gd", lr=1e-3, n_records=5)
    finally:
        timer.cancel()
    for r in results:
        assert r.status == "interrupted" and "SIGINT" in r.message
        assert r.n_records >= 2 and 0 < r.t[-1] < 1e5          # the records so far and the last state


@pytest.mark.long  # compiles the ensemble kernels for float32 points
def test_ensemble_of_aligned_members_float32_points_and_one_that_diverges():
    rng = np.random.default_rng(4)
    M = 2
    x = rng.standard_normal((48, M)).astype(np.float32)
    ds = tf.Dataset(x, rng.integers(0, 2, 48), rng.standard_normal((2, M)))
    params = [tf.Params.aligned(np.stack([rotation(M, s), rotation(M, s + 7)]), np.full((2, M), 1.0 + 0.1 * s),
                                0.3 * rng.standard_normal((2, M))) for s in range(3)]
    params.append(tf.Params.aligned(np.stack([rotation(M, 1), rotation(M, 8)]), np.full((2, M), 1e-3),
                                    np.zeros((2, M))))                     # scales near 0: it diverges
    options = dict(method="gd", lr=0.5, wrt="aligned", n_records=7)
    with np.errstate(all="ignore"):
        got = tf.simulate_ensemble(params, ds, 40.0, **options)
        want = single_runs(params, [ds] * 4, 40.0, **options)
    for g, w in zip(got, want):
        same_result(g, w)
    assert got[-1].status == "diverged" and all(r.status == "t_end" for r in got[:-1]), [r.message for r in got]
