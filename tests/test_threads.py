"""Thread settings: the default is the process's share of the machine, set_threads is honoured
in every thread that calls truncflow, and results do not depend on the number of threads."""
import os
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest

import truncflow as tf
import truncflow.backends.local as local
import truncflow.compute as compute
from truncflow.threads import cpu_quota

from conftest import make_problem


@pytest.fixture(autouse=True)
def default_threads_after():
    yield
    tf.set_threads(None)


def threads_in_fresh_process(env_changes, affinity=None, first="truncflow"):
    """(truncflow.get_threads(), Numba's pool, threads a gradient kernel ran on) in a new interpreter
    that imports ``first`` first."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_changes)
    code = (f"import {first}\n"
            "import numba, numpy as np, truncflow as tf, truncflow.backends.local as c\n"
            "seen = []\n"
            "for name in ('gradient_kernel', 'gradient_kernel_serial'):\n"
            "    k = getattr(c, name)\n"
            "    setattr(c, name, lambda *a, k=k: (seen.append(numba.get_num_threads()), k(*a))[1])\n"
            "p = tf.Params.random(2, 2, seed=0)\n"
            "tf.gradient(p, tf.Dataset(np.ones((4, 2)), [0, 1, 0, 1], np.zeros((2, 2))))\n"
            "print(tf.get_threads(), numba.config.NUMBA_NUM_THREADS, seen[0])\n")
    pre = (lambda: os.sched_setaffinity(0, affinity)) if affinity is not None else None
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                         preexec_fn=pre)
    assert out.returncode == 0, out.stderr
    return tuple(int(v) for v in out.stdout.split())


def test_omp_num_threads_is_honoured():
    assert threads_in_fresh_process({"OMP_NUM_THREADS": "1"}) == (1, 1, 1)


def test_omp_num_threads_with_numba_imported_first():
    """Numba's pool is then already started at its own default; truncflow still runs on 1 thread."""
    got = threads_in_fresh_process({"OMP_NUM_THREADS": "1"}, first="numba")
    assert (got[0], got[2]) == (1, 1)


def test_numba_num_threads_is_honoured():
    assert threads_in_fresh_process({"NUMBA_NUM_THREADS": "1"}) == (1, 1, 1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and at least 2 CPUs")
def test_cpu_affinity_is_honoured():
    cpu = min(os.sched_getaffinity(0))
    assert threads_in_fresh_process({}, affinity={cpu}) == (1, 1, 1)


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(str(tmp_path)) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(str(tmp_path)) is None
    assert cpu_quota(str(tmp_path / "absent")) is None


def _kernel_threads(monkeypatch):
    """Record Numba's thread count at each call of the gradient kernel."""
    seen = []
    for name in ("gradient_kernel", "gradient_kernel_serial"):
        kernel = getattr(local, name)            # the local backend runs the gradient kernels
        monkeypatch.setattr(local, name, lambda *a, k=kernel: (seen.append(numba.get_num_threads()), k(*a))[1])
    return seen


def test_set_threads_inside_the_call_in_every_thread(monkeypatch):
    seen = _kernel_threads(monkeypatch)
    pr = make_problem(0, N=50)
    ds = pr.dataset()
    assert tf.set_threads(1) == 1 == tf.get_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)    # someone else changes this thread's count
    tf.gradient(pr.params, ds)
    other = threading.Thread(target=tf.gradient, args=(pr.params, ds))   # a new thread starts at Numba's pool
    other.start()
    other.join()
    tf.simulate(pr.params, ds, 0.01, method="gd", lr=0.005)
    assert seen and set(seen) == {1}
    tf.set_threads(None)
    seen.clear()
    tf.gradient(pr.params, ds)
    # the default is found once per process (a Dask LocalCluster made earlier in this process
    # sets OMP_NUM_THREADS=1 in it, which a fresh default_threads() would now read)
    assert seen == [tf.get_threads()] and tf.get_threads() == tf.threads._default_in_pool() <= numba.config.NUMBA_NUM_THREADS


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, "2", True])
def test_set_threads_refuses(bad):
    with pytest.raises(ValueError, match="threads must be"):
        tf.set_threads(bad)


def test_results_do_not_depend_on_threads():
    pr = make_problem(3, N=5000, M=3, L=3)     # 5 chunks of 1,024 points
    ds = pr.dataset()
    tf.set_threads(1)
    one = tf.gradient(pr.params, ds, wrt="layers")
    tf.set_threads(numba.config.NUMBA_NUM_THREADS)
    many = tf.gradient(pr.params, ds, wrt="layers")
    assert one[0] == many[0]
    for a, b in zip((one[1].weights, one[1].biases), (many[1].weights, many[1].biases)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_serial_gradient_kernel_equals_parallel(kind):
    """The same chunks summed in the same order: bit-identical, whatever the chunk count."""
    from truncflow.kernels.gradient import gradient_kernel, gradient_kernel_serial
    pr = make_problem(5, N=300, M=5, L=3, Q=3, P=2)
    ds = pr.dataset(kind)
    arrays = compute.tile_arrays(pr.params, ds.targets, kind)
    for n_slots, chunk in ((1, 37), (3, 300), (3, 64)):
        a = gradient_kernel(ds.points, ds.labels, *arrays, kind == "output", n_slots, chunk)
        b = gradient_kernel_serial(ds.points, ds.labels, *arrays, kind == "output", n_slots, chunk)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_one_chunk_never_enters_a_parallel_region(monkeypatch):
    def refuse(*a):
        raise AssertionError("parallel kernel called for a single chunk")
    monkeypatch.setattr(local, "gradient_kernel", refuse)
    pr = make_problem(1, N=16)
    c, g = tf.gradient(pr.params, pr.dataset())
    assert np.isfinite(c) and np.isfinite(g.weights).all()
