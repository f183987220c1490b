"""The Dask backend (issue 14): the same results, bit for bit, on a cluster of worker processes.

Runs with Dask installed (``pip install ".[distributed]"``; CI's third step), on a
``LocalCluster`` of 2 worker processes x 1 thread. Every comparison is equality,
not closeness: the workers run the same kernels on the same chunks and the client
adds the chunks in the same order as one process.
"""
import os
import signal
import time
import warnings

import numpy as np
import pytest

import truncflow as tf

pytestmark = pytest.mark.dask


distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=50)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def data(N, M=3, Q=3, dtype=np.float64, seed=0, empty_tail=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, M)).astype(dtype)
    lab = rng.integers(0, Q, N)
    if empty_tail:          # cluster Q-1 only in the first 300 points: absent from later partitions
        lab[300:] = rng.integers(0, Q - 1, N - 300)
    return x, lab, rng.standard_normal((Q, M))


def same(a, b):
    assert type(a) is type(b) or isinstance(a, np.ndarray)
    if isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert np.array_equal(a, b, equal_nan=True)
    else:
        assert a == b or (np.isnan(a) and np.isnan(b))


def same_gradient(g, h):
    for name in ("weights", "biases", "out_weight", "out_bias"):
        a, b = getattr(g, name), getattr(h, name)
        assert (a is None) == (b is None)
        if a is not None:
            same(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradient_cost_statistics_observe_are_bit_identical(client, dtype):
    N = 2 * 1024 + 37               # not a multiple of the chunk: a short last partition
    x, lab, tgt = data(N, dtype=dtype, empty_tail=True)
    local = tf.Dataset(x, lab, tgt)
    dist = tf.distribute(x, lab, tgt, client, partition_rows=1024)
    assert dist.n_partitions == 3 and np.array_equal(dist.counts, local.counts)
    p = tf.Params.random(2, 3, seed=1, out_dim=2)
    out = tf.Dataset(x, lab, np.ones((3, 2)))
    dist_out = dist.with_targets(np.ones((3, 2)))
    for wrt in ("cumulative", "layers"):
        for per_cluster in (False, True):
            c1, g1 = tf.gradient(p, local, wrt=wrt, per_cluster=per_cluster)
            c2, g2 = tf.gradient(p, dist, wrt=wrt, per_cluster=per_cluster)
            same(c1, c2)
            same_gradient(g1, g2)
    c1, g1 = tf.gradient(p, out, "output")
    c2, g2 = tf.gradient(p, dist_out, "output")
    same(c1, c2)
    same_gradient(g1, g2)
    same(tf.cost(p, local), tf.cost(p, dist))
    s1 = tf.cluster_statistics(p, local, second_moments=True)
    s2 = tf.cluster_statistics(p, dist, second_moments=True)
    for name in ("counts", "truncated_counts", "free_sums", "constrained_sums", "free_second",
                 "constrained_second", "cost_per_cluster"):
        same(getattr(s1, name), getattr(s2, name))
    same_gradient(s1.gradient, s2.gradient)
    o1, o2 = tf.observe(p, local), tf.observe(p, dist)
    for name in ("cost", "cost_per_cluster", "truncated_fraction", "collapsed_fraction", "spread",
                 "collapse_ratio", "free_coordinates", "n_patterns"):
        same(getattr(o1, name), getattr(o2, name))
    assert np.array_equal(o2.pattern_hash.to_dask().compute(), o1.pattern_hash)


@pytest.mark.parametrize("method,options", [("rk45", dict(rtol=1e-4)), ("gd", dict(lr=0.02, cost_tol=1e-3))])
def test_simulate_trajectories_are_bit_identical(client, method, options):
    x, lab, tgt = data(2500, dtype=np.float32, seed=3)
    local = tf.Dataset(x, lab, tgt)
    dist = local.distribute(client, partition_rows=1024)
    p = tf.Params.random(2, 3, seed=6)            # rk45: 67 evaluations, points cross hyperplanes
    r1 = tf.simulate(p, local, 0.6, method=method, wrt="layers", n_records=6, **options)
    r2 = tf.simulate(p, dist, 0.6, method=method, wrt="layers", n_records=6, **options)
    assert r1.status == r2.status == "t_end"
    assert set(r1.series) == set(r2.series)
    for name in r1.series:
        same(r1.series[name], r2.series[name])
    for name in ("sample_points", "sample_labels"):
        same(r1.arrays[name], r2.arrays[name])
    assert r2.series["pattern_changes"][-1] > 0          # the flow moved points across hyperplanes


def kinks_problem(seed):
    """A problem of bench/kinks_robustness.py whose flow slides (points held on hyperplanes)."""
    import sys
    from pathlib import Path
    sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
    from kinks_robustness import random_problem
    return random_problem(seed)


def test_kinks_trajectories_are_bit_identical(client):
    # bulk-corrected crossings over three partitions (float32 points), then a flow that slides
    x, lab, tgt = data(2500, dtype=np.float32, seed=3)
    local = tf.Dataset(x, lab, tgt)
    p = tf.Params.random(2, 3, seed=6)
    runs = [(p, local, local.distribute(client, partition_rows=1024), 0.6,
             dict(wrt="layers", rtol=1e-4, atol=1e-6))]
    p, ds, kind, wrt = kinks_problem(2)        # 638 evaluations, two coordinates slide
    runs.append((p, ds, ds.distribute(client), 2.5, dict(kind=kind, wrt=wrt, rtol=1e-8, atol=1e-10)))
    for p, local, dist, t_end, options in runs:
        r1 = tf.simulate(p, local, t_end, method="kinks", n_records=6, **options)
        r2 = tf.simulate(p, dist, t_end, method="kinks", n_records=6, **options)
        assert r1.status == r2.status == "t_end"
        assert r1.config["kinks"] == r2.config["kinks"]
        for name in r1.series:
            same(r1.series[name], r2.series[name])
    assert r1.config["kinks"]["sliding_entries"] > 0 and r1.series["sliding_points"].any()


def test_a_dask_array_from_a_npy_file_and_a_memory_mapped_npy(client, tmp_path):
    x, lab, tgt = data(3000, seed=5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lab.npy", lab)
    p = tf.Params.random(2, 3, seed=6)
    want = tf.gradient(p, tf.Dataset(x, lab, tgt))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    from_file = da.from_array(np.load(tmp_path / "x.npy", mmap_mode="r"), chunks=(700, 3))
    for points, labels in ((mapped, lab), (from_file, da.from_array(lab, chunks=900))):
        got = tf.gradient(p, tf.distribute(points, labels, tgt, client))
        same(want[0], got[0])
        same_gradient(want[1], got[1])


def test_bad_data_is_refused_with_the_row(client):
    x, lab, tgt = data(3000)
    x[2500, 1] = np.nan
    with pytest.raises(ValueError, match="partition starting at row 2048"):
        tf.distribute(x, lab, tgt, client, partition_rows=1024)
    x, lab, tgt = data(3000)
    lab[1500] = 7
    with pytest.raises(ValueError, match=r"label 7 out of range \(labels\[476\]\).*\[0, 3\).*row 1024"):
        tf.distribute(x, lab, tgt, client, partition_rows=1024)
    with pytest.raises(ValueError, match="multiple of the chunk size 1024"):
        tf.distribute(x, lab, tgt, client, partition_rows=1000)
    with pytest.raises(ValueError, match="distributed.Client"):
        tf.distribute(x, lab, tgt, "tcp://nowhere:1")
    dist = tf.distribute(*data(1500), client)
    p = tf.Params.random(2, 3, seed=0)
    with pytest.raises(ValueError, match="method='events' needs the points here"):
        tf.simulate(p, dist, 1.0, method="events")
    with pytest.raises(ValueError, match="checkpoint does not apply"):
        tf.simulate(p, dist, 1.0, checkpoint="x.npz")
    with pytest.raises(ValueError, match="simulate_ensemble"):
        tf.simulate_ensemble([p, p], dist, 1.0, method="gd", lr=0.1)
    with pytest.raises(ValueError, match="gather"):
        tf.separation_report(p, dist)


@pytest.mark.parametrize("options", [dict(method="gd", lr=0.02), dict(method="kinks", rtol=1e-4, atol=1e-6)],
                         ids=["gd", "kinks"])
def test_a_worker_killed_mid_flow_costs_a_recomputation_not_the_run(client, options):
    # kinks: the frozen patterns on the killed worker are computed again from the changes made
    x, lab, tgt = data(4096, seed=7)
    p = tf.Params.random(2, 3, seed=8)
    options = dict(options, wrt="layers", n_records=5)
    want = tf.simulate(p, tf.Dataset(x, lab, tgt), 0.4, **options)
    dist = tf.distribute(x, lab, tgt, client, partition_rows=1024)
    killed = []

    def kill_one(t, cost):
        if len(killed) == 0 and t >= 0.1:
            pids = client.run(os.getpid)                 # {worker address: pid}
            address, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(address)

    got = tf.simulate(p, dist, 0.4, callback=kill_one, **options)
    assert killed, "no worker was killed"
    assert got.status == "t_end", got.message
    for name in want.series:
        same(want.series[name], got.series[name])
    deadline = time.monotonic() + 60                     # the nanny restarts the worker
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)


JOB = """
seed = 0
[data]
source = "gaussian"
n_points = 3000
centers = [[-2.0, -2.0], [2.0, 2.0]]
targets = "centers"
[network]
init = "random"
layers = 2
[flow]
method = "gd"
lr = 0.05
t_end = 0.5
"""


def test_command_line_on_a_scheduler_and_info(client, tmp_path, capsys):
    from truncflow.cli import main
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    assert main(["run", str(job), "--out", str(tmp_path / "here"), "-q"]) == 0
    address = client.scheduler.address
    assert main(["run", str(job), "--out", str(tmp_path / "there"), "-q", "--scheduler", address]) == 0
    here, there = tf.load_result(tmp_path / "here" / "result.npz"), tf.load_result(tmp_path / "there" / "result.npz")
    for name in here.series:
        same(here.series[name], there.series[name])
    capsys.readouterr()
    assert main(["info", "--scheduler", address]) == 0
    out = capsys.readouterr().out
    assert "2 worker(s)" in out and out.count("1 thread(s)") == 2
    job.write_text(JOB + "[cluster]\nlocal = 2\nscheduler = 'tcp://x:1'\n")
    assert main(["run", str(job), "--out", str(tmp_path / "bad"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "either scheduler" in err and len(err.strip().splitlines()) == 1


def test_a_cluster_that_cannot_recover_stops_the_run_with_its_records(client, tmp_path):
    x, lab, tgt = data(4096, seed=9)
    np.save(tmp_path / "x.npy", x)
    dist = tf.distribute(np.load(tmp_path / "x.npy", mmap_mode="r"), lab, tgt, client, partition_rows=1024,
                         timeout=20.0)
    gone = []

    def lose_the_source(t, cost):        # the file goes, then the workers (their nannies restart them
        if not gone and t >= 0.05:       # empty): the partitions cannot be read again
            (tmp_path / "x.npy").unlink()
            for address, pid in client.run(os.getpid).items():
                os.kill(pid, signal.SIGKILL)
                gone.append(address)

    r = tf.simulate(tf.Params.random(2, 3, seed=8), dist, 0.4, method="gd", lr=0.02, callback=lose_the_source,
                    n_records=5)
    assert gone
    assert r.status == "failed" and "Dask cluster could not finish" in r.message, r.message
    assert r.t[0] == 0.0 and r.t[-1] >= 0.04        # the records made before (the last state cannot be observed)
    deadline = time.monotonic() + 60                     # the nanny restarts the worker
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
