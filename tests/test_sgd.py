"""Stochastic gradient descent, ``simulate(method="sgd")`` (issue 25 item 4).

The minibatch cost is the mean over the batch (the full cost is the mean over all N
points), so a batch gradient is an unbiased estimate of the full one and the batches of
an epoch, weighted by their sizes, add up to it exactly; ``batch_size = N`` without
replacement is gradient descent, bit for bit; the batches are a function of the seed and
the step, and each step runs on the batch's rows gathered here, so the iterates are the
same bits on one process, a Dask cluster and a GPU.
"""
import os
import signal
import warnings

import numpy as np
import pytest

import truncflow as tf
from conftest import assert_close, make_problem
from truncflow.config import ConfigError, parse_config
from truncflow.engine.rhs import FlowProblem
from truncflow.engine.sgd import BatchGradient, Minibatches, check_sgd_options

#: Every per-record series but the evaluation counter (sgd counts its batch passes too).
def assert_same_records(a, b, skip=("evaluations",)):
    assert a.status == b.status
    assert a.series.keys() == b.series.keys()
    for name in a.series:
        if name not in skip:
            assert np.array_equal(a.series[name], b.series[name], equal_nan=True), name
    for name in ("sample_points", "sample_labels"):
        assert np.array_equal(a.arrays[name], b.arrays[name]), name


def problem(kind="input", N=300, seed=11, dtype=np.float64):
    prob = make_problem(seed, L=2, M=3, N=N, Q=3, P=2 if kind == "output" else None)
    ds = prob.dataset(kind)
    if dtype != np.float64:
        ds = tf.Dataset(ds.points.astype(dtype), ds.labels, ds.targets)
    return prob.params, ds


# ------------------------------------------------------------------ gd equivalence
@pytest.mark.parametrize("kind,wrt", [("input", "cumulative"), ("input", "layers"), ("output", "cumulative"),
                                      ("output", "layers")])
def test_full_batch_without_replacement_is_gd_bit_for_bit(kind, wrt):
    params, ds = problem(kind)
    kw = dict(kind=kind, wrt=wrt, lr=0.05, n_records=8)
    gd = tf.simulate(params, ds, 2.0, method="gd", **kw)
    sgd = tf.simulate(params, ds, 2.0, method="sgd", batch_size=ds.n_points, seed=5, **kw)
    assert gd.status == "t_end" and gd.steps_accepted[-1] == 40
    assert_same_records(sgd, gd)
    assert sgd.config["method"] == "sgd" and sgd.config["batch_size"] == ds.n_points


@pytest.mark.parametrize("dtype,precision", [(np.float64, "float64"),      # float32 variants compile: long
                                             pytest.param(np.float32, "float64", marks=pytest.mark.long),
                                             pytest.param(np.float32, "float32", marks=pytest.mark.long)])
def test_full_batch_is_gd_over_several_chunks_and_in_float32(dtype, precision):
    """N = 3000 points: three chunks (the parallel kernels, not the one-chunk path)."""
    params, ds = problem("input", N=3000, seed=4, dtype=dtype)
    kw = dict(lr=0.1, n_records=4, precision=precision)
    gd = tf.simulate(params, ds, 0.5, method="gd", **kw)
    assert_same_records(tf.simulate(params, ds, 0.5, method="sgd", batch_size=3000, **kw), gd)


# ------------------------------------------------------------------ the estimator
@pytest.mark.parametrize("kind", ["input", "output"])
def test_mean_of_an_epochs_batch_gradients_is_the_full_gradient(kind):
    params, ds = problem(kind, N=240)
    full = FlowProblem(params, ds, kind=kind, wrt="layers")
    y = full.pack(params)
    c, g = full.evaluate(y)
    batch = BatchGradient(full)
    for batch_size, seed in ((24, 0), (24, 7), (1, 3), (240, 0)):
        mb = Minibatches(240, batch_size, seed=seed)
        assert mb.n_batches == 240 // batch_size
        for epoch in (0, 3):
            ks = range(epoch * mb.n_batches, (epoch + 1) * mb.n_batches)
            idx = [mb.indices(k) for k in ks]
            assert np.array_equal(np.sort(np.concatenate(idx)), np.arange(240))     # a partition
            assert all(np.all(np.diff(i) > 0) for i in idx)                           # each sorted
            parts = [batch(y, i) for i in idx]
            assert_close(np.mean([p[1] for p in parts], axis=0), g, 1e-12, f"mean gradient, b={batch_size}")
            assert_close(np.mean([p[0] for p in parts]), c, 1e-12, "mean cost")
    # N not a multiple of the batch size: the last batch is smaller; weighted by size they add up
    mb = Minibatches(240, 25, seed=1)
    sizes = [mb.indices(k).size for k in range(mb.n_batches)]
    assert mb.n_batches == 10 and sizes == [25] * 9 + [15]
    total = sum(n / 240 * batch(y, mb.indices(k))[1] for k, n in enumerate(sizes))
    assert_close(total, g, 1e-12, "size-weighted sum of the batch gradients")


def test_batch_gradient_is_the_gradient_of_the_batchs_points():
    params, ds = problem("input", N=200)
    full = FlowProblem(params, ds, wrt="cumulative")
    idx = Minibatches(200, 17, seed=2).indices(5)
    c, g, _ = BatchGradient(full)(full.pack(params), idx)
    sub = tf.Dataset(ds.points[idx], ds.labels[idx], ds.targets)
    c0, g0 = tf.gradient(params, sub, wrt="cumulative")
    assert_close(c, c0, 1e-13, "batch cost")
    assert_close(g, np.concatenate([g0.weights.ravel(), g0.biases.ravel()]), 1e-13, "batch gradient")


@pytest.mark.parametrize("N", [1, 2, 3, 5, 17, 64, 1000, 4099])
def test_epoch_permutations_are_bijections_that_depend_on_seed_and_epoch(N):
    orders = {}
    for seed in (0, 1):
        mb = Minibatches(N, max(1, N // 3), seed=seed)
        for e in (0, 1):
            p = mb.permute(e, np.arange(N, dtype=np.uint64))
            assert np.array_equal(np.sort(p), np.arange(N))
            orders[seed, e] = tuple(p)
    if N >= 17:
        assert len(set(orders.values())) == 4


def test_large_n_batches_cost_only_their_size():
    mb = Minibatches(10**12, 64, seed=0)          # no permutation array of 10^12 indices
    i = mb.indices(123456789)
    assert i.size == 64 and i.min() >= 0 and i.max() < 10**12 and np.all(np.diff(i) > 0)
    assert np.array_equal(i, Minibatches(10**12, 64, seed=0).indices(123456789))


def test_batches_with_replacement():
    mb = Minibatches(50, 40, replacement=True, seed=3)
    batches = [mb.indices(k) for k in range(20)]
    assert all(b.size == 40 and b.min() >= 0 and b.max() < 50 and np.all(np.diff(b) >= 0) for b in batches)
    assert any(np.any(np.diff(b) == 0) for b in batches)          # a point drawn twice
    assert np.array_equal(batches[7], Minibatches(50, 40, replacement=True, seed=3).indices(7))
    assert Minibatches(50, 80, replacement=True).indices(0).size == 80     # more than N: allowed


# ------------------------------------------------------------------ runs
def test_same_seed_same_run_other_seed_other_run_and_replacement_differs():
    params, ds = problem()
    kw = dict(method="sgd", lr=0.05, batch_size=16, n_records=6)
    a = tf.simulate(params, ds, 1.0, seed=3, **kw)
    assert a.status == "t_end" and a.steps_accepted[-1] == 20
    assert_same_records(tf.simulate(params, ds, 1.0, seed=3, **kw), a, skip=())
    b = tf.simulate(params, ds, 1.0, seed=4, **kw)
    assert not np.array_equal(a.cost[1:], b.cost[1:])
    c = tf.simulate(params, ds, 1.0, seed=3, replacement=True, **kw)
    assert c.status == "t_end" and not np.array_equal(a.cost[1:], c.cost[1:])
    assert tf.simulate(params, ds, 1.0, seed=3, **{**kw, "batch_size": 500}, replacement=True).status == "t_end"
    # each batch pass and each record pass counts as an evaluation
    assert a.evaluations[-1] == 20 + a.n_records


def test_a_last_step_past_t_end_saves_and_loads(tmp_path):
    params, ds = problem()
    r = tf.simulate(params, ds, 1.0, method="sgd", lr=0.3, batch_size=50, n_records=3)
    assert r.status == "t_end" and r.t[-1] == 4 * 0.3 > 1.0          # as gd: ceil(t_end / lr) steps
    back = tf.load_result(r.save(tmp_path / "r.npz"))
    assert np.array_equal(back.t, r.t) and back.config["batch_size"] == 50 and back.config["seed"] == 0


def test_heavy_ball_momentum_replayed_by_hand():
    params, ds = problem(N=120)
    lr, mu, b = 0.05, 0.6, 10
    r = tf.simulate(params, ds, 1.0, method="sgd", lr=lr, batch_size=b, seed=9, momentum=mu,
                    record_times=[3 * lr, 14 * lr])
    r0 = tf.simulate(params, ds, 1.0, method="sgd", lr=lr, batch_size=b, seed=9, record_times=[3 * lr, 14 * lr])
    assert not np.array_equal(r.cost, r0.cost)
    full = FlowProblem(params, ds)
    batch, batches = BatchGradient(full), Minibatches(120, b, seed=9)
    y, v = full.pack(params), 0.0
    for k in range(14):
        _, g, _ = batch(y, batches.indices(k))
        v = mu * v + g if k else g
        y = y - lr * v
        if k + 1 in (3, 14):
            row = {3: 1, 14: 2}[k + 1]
            p = full.unpack(y)
            assert np.array_equal(r.cum_weights[row], p.cum_weights) and np.array_equal(r.cum_biases[row],
                                                                                       p.cum_biases)
            assert r.cost[row] == tf.cost(p, ds)


def test_stopping_rules_and_a_run_that_diverges():
    params, ds = problem()
    r = tf.simulate(params, ds, 5.0, method="sgd", lr=0.05, batch_size=8, max_evals=30)
    assert r.status == "max_evals" and r.evaluations[-1] >= 30
    c0 = tf.cost(params, ds)
    r = tf.simulate(params, ds, 5.0, method="sgd", lr=0.05, batch_size=8, cost_tol=0.9 * c0, n_records=100)
    assert r.status == "cost_tol" and r.cost[-1] <= 0.9 * c0 and r.cost[-2] > 0.9 * c0
    params, ds = problem("output")
    bad = tf.simulate(params, ds, 200.0, kind="output", method="sgd", lr=2.0, batch_size=4, n_records=3)
    assert bad.status == "diverged" and "at t = 20 (after 10 steps)" in bad.message and "singular" in bad.message
    assert np.all(np.isfinite(bad.cost)) and bad.t[-1] < 20


def test_checkpoint_resume_is_bit_identical(tmp_path):
    params, ds = problem("output")
    kw = dict(kind="output", method="sgd", lr=0.05, batch_size=32, seed=2, momentum=0.3, n_records=12)
    whole = tf.simulate(params, ds, 2.0, **kw)
    ck = tmp_path / "run.ckpt"
    first = tf.simulate(params, ds, 2.0, checkpoint=ck, checkpoint_every=3600, max_evals=17, **kw)
    assert first.status == "max_evals" and ck.is_file()
    with pytest.raises(ValueError, match="options differ.*seed"):
        tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, **{**kw, "seed": 3})
    with pytest.raises(ValueError, match="options differ.*batch_size"):
        tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, **{**kw, "batch_size": 31})
    second = tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, max_evals=29, **kw)
    assert second.status == "max_evals" and second.t[-1] > first.t[-1]
    done = tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, **kw)
    assert_same_records(done, whole, skip=())
    assert not ck.exists()


def test_a_checkpoint_without_its_velocity_is_refused(tmp_path):
    params, ds = problem()
    kw = dict(method="sgd", lr=0.05, batch_size=32)
    ck = tmp_path / "run.ckpt"
    tf.simulate(params, ds, 2.0, checkpoint=ck, max_evals=10, **kw)
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files if k != "v"}
    np.savez(ck.with_suffix(".npz"), **arrays)
    ck.with_suffix(".npz").replace(ck)
    with pytest.raises(ValueError, match="damaged: it lacks the array 'v'"):
        tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, **kw)


def test_a_signal_stops_it_between_steps_and_the_checkpoint_continues_it(tmp_path):
    params, ds = problem()
    kw = dict(method="sgd", lr=0.01, batch_size=16, seed=1)
    seen = []

    def callback(t, cost):
        seen.append(t)
        if len(seen) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    ck = tmp_path / "run.ckpt"
    r = tf.simulate(params, ds, 1.0, callback=callback, checkpoint=ck, checkpoint_every=3600, **kw)
    assert r.status == "interrupted" and "SIGTERM" in r.message
    assert r.t[-1] == seen[-1] and r.steps_accepted[-1] == 7
    assert r.cost[-1] == pytest.approx(tf.cost(r.final, ds), rel=1e-13)
    done = tf.simulate(params, ds, 1.0, checkpoint=ck, resume=True, **kw)
    assert_same_records(done, tf.simulate(params, ds, 1.0, **kw), skip=())


def test_ensembles_and_sweeps_equal_single_runs():
    params, ds = problem()
    members = [params, make_problem(12, L=2, M=3, N=300, Q=3).params]
    kw = dict(method="sgd", lr=0.05, batch_size=20, seed=6, n_records=5)
    got = tf.simulate_ensemble(members, ds, 1.0, workers=1, **kw)
    for b, p in enumerate(members):
        assert_same_records(got[b], tf.simulate(p, ds, 1.0, **kw), skip=())
    from truncflow.sweep import run_sweep
    cfg = parse_config(job_text() + '[sweep]\n"flow.seed" = [0, 1]\n"flow.batch_size" = [8, 30]\n')
    results = run_sweep(cfg, say=lambda *a: None)
    assert len(results) == 4
    assert {(m.simulate_kwargs["seed"], m.simulate_kwargs["batch_size"]) for m in cfg.members} == \
        {(0, 8), (0, 30), (1, 8), (1, 30)}
    for m, r in zip(cfg.members, results):
        kw = {k: v for k, v in m.simulate_kwargs.items()}
        alone = tf.simulate(m.params, m.dataset, **kw)
        assert_same_records(r, alone, skip=())


# ------------------------------------------------------------------ options
def test_bad_options_are_refused_clearly():
    params, ds = problem(N=50)
    run = lambda **kw: tf.simulate(params, ds, 1.0, **{"method": "sgd", "lr": 0.1, "batch_size": 10, **kw})
    with pytest.raises(ValueError, match="method='sgd' needs a learning rate"):
        tf.simulate(params, ds, 1.0, method="sgd", batch_size=10)
    with pytest.raises(ValueError, match="method='sgd' needs a batch size"):
        tf.simulate(params, ds, 1.0, method="sgd", lr=0.1)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        run(batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 2.5"):
        run(batch_size=2.5)
    with pytest.raises(ValueError, match="batch_size=51 exceeds the N = 50 points.*replacement=True"):
        run(batch_size=51)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got -0.1"):
        run(momentum=-0.1)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 1.0"):
        run(momentum=1.0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        run(seed=-1)
    with pytest.raises(ValueError, match="replacement must be True or False"):
        run(replacement="yes")
    with pytest.raises(ValueError, match="batch_size, momentum apply to method='sgd' only, not 'gd'"):
        tf.simulate(params, ds, 1.0, method="gd", lr=0.1, batch_size=10, momentum=0.5)
    assert check_sgd_options(50, 50, False, None, 0) == dict(batch_size=50, replacement=False, seed=0, momentum=0.0)


def job_text(flow=""):
    return f"""
seed = 4
[data]
source = "gaussian"
n_points = 60
centers = [[0.0, 0.0], [3.0, 3.0]]
targets = "centers"
[network]
layers = 1
init = "identity"
[flow]
method = "sgd"
t_end = 1.0
lr = 0.05
batch_size = 8
{flow}
[record]
n_records = 5
"""


def test_configuration_keys():
    kw = parse_config(job_text()).simulate_kwargs
    assert (kw["method"], kw["lr"], kw["batch_size"], kw["replacement"], kw["seed"], kw["momentum"]) == \
        ("sgd", 0.05, 8, False, 4, 0.0)          # the seed defaults to the job's
    kw = parse_config(job_text("seed = 9\nreplacement = true\nmomentum = 0.5")).simulate_kwargs
    assert (kw["seed"], kw["replacement"], kw["momentum"]) == (9, True, 0.5)
    for flow, message in (("momentum = 1.0", "[flow] momentum: must be below 1"),
                          ("momentum = -0.5", "[flow] momentum: must be >= 0"),
                          ("replacement = 1", "[flow] replacement: must be true or false"),
                          ("seed = -2", "[flow] seed:")):
        with pytest.raises(ConfigError) as info:
            parse_config(job_text(flow))
        assert message in str(info.value), str(info.value)
    with pytest.raises(ConfigError, match=r"\[flow\] batch_size=61 exceeds the N = 60 points"):
        parse_config(job_text().replace("batch_size = 8", "batch_size = 61"))
    with pytest.raises(ConfigError, match=r'\[flow\] batch_size: is required for method = "sgd"'):
        parse_config(job_text().replace("batch_size = 8", ""))
    with pytest.raises(ConfigError, match=r'\[flow\] lr: is required for method = "sgd"'):
        parse_config(job_text().replace("lr = 0.05", ""))
    with pytest.raises(ConfigError, match=r"\[flow\] batch_size: applies only to method = 'sgd', not 'gd'"):
        parse_config(job_text().replace('"sgd"', '"gd"'))


def test_command_line_runs_an_sgd_job(tmp_path, capsys):
    from truncflow.cli import main
    job = tmp_path / "sgd.toml"
    job.write_text(job_text("momentum = 0.2"))
    assert main(["run", str(job), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    r = tf.load_result(tmp_path / "out" / "result.npz")
    assert r.status == "t_end" and r.config["method"] == "sgd" and r.config["batch_size"] == 8
    cfg = parse_config(job_text("momentum = 0.2"))
    alone = tf.simulate(cfg.params, cfg.dataset, **cfg.simulate_kwargs)
    assert np.array_equal(r.cost, alone.cost) and np.array_equal(r.cum_weights, alone.cum_weights)


# ------------------------------------------------------------------ placements
@pytest.mark.dask
def test_on_a_dask_cluster_the_run_is_bit_identical():
    distributed = pytest.importorskip("distributed")
    params, ds = problem("input", N=2500, seed=3, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=50)
    with cluster, distributed.Client(cluster) as client:
        dist = ds.distribute(client, partition_rows=1024)
        for options in (dict(batch_size=64, seed=1, momentum=0.5), dict(batch_size=300, replacement=True)):
            kw = dict(method="sgd", lr=0.05, wrt="layers", n_records=4, **options)
            r1 = tf.simulate(params, ds, 0.5, **kw)
            r2 = tf.simulate(params, dist, 0.5, **kw)
            assert r1.status == r2.status == "t_end"
            assert_same_records(r2, r1, skip=())


@pytest.mark.cuda
def test_on_a_gpu_the_iterates_are_bit_identical():
    pytest.importorskip("numba_cuda")
    from numba import config as numba_config
    if not numba_config.ENABLE_CUDASIM:
        from numba import cuda
        if not cuda.is_available():
            pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set")
    pr = make_problem(14, L=2, M=3, N=60, Q=2)
    kw = dict(method="sgd", lr=0.1, batch_size=12, seed=2, momentum=0.4, n_records=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = tf.simulate(pr.params, pr.dataset().to("cuda"), 0.5, **kw)
    r0 = tf.simulate(pr.params, pr.dataset(), 0.5, **kw)
    assert r.status == r0.status == "t_end"
    for name in ("t", "steps_accepted", "weights", "biases", "cum_weights", "cum_biases"):
        assert np.array_equal(r.series[name], r0.series[name]), name       # the same iterates
    assert_close(r.cost, r0.cost, 1e-10, "recorded costs (full passes on the GPU)")
