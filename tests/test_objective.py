"""truncflow.Objective (issue 25 item 1): the cost as a function of one float64 vector.

Its values and gradients are those of ``truncflow.gradient`` at ``unpack(x)``, bit for
bit (the same kernels); frozen parts give zero entries; ``out`` receives the gradient;
two threads give the bits of serial calls; scipy's L-BFGS-B returns a perturbed
hand-built minimizer to cost 0. The Dask test runs on a LocalCluster (``-m dask``), the
GPU test on a GPU or in Numba's simulator (``NUMBA_ENABLE_CUDASIM=1 -m cuda``).
"""
from __future__ import annotations

import threading
import tracemalloc
import warnings

import numpy as np
import pytest
import scipy.optimize

import truncflow as tf
from conftest import assert_close, make_problem
from test_minimizers import radial_dataset
from truncflow.objective import Objective

KINDS = ("input", "output")
WRTS = ("cumulative", "layers")
TRAINS = ("all", "weights", "biases")


def problem(seed=0, L=2, M=3, N=40, Q=2, P=2, dtype=np.float64):
    pr = make_problem(seed, L=L, M=M, N=N, Q=Q, P=P)
    return pr, pr.params, (lambda kind: pr.dataset(kind, pr.points.astype(dtype)))


def expected_vector(obj, params, dataset):
    """tf.gradient's cost and gradient as the objective's vector, frozen parts zeroed."""
    c, g = tf.gradient(params, dataset, obj.kind, obj.wrt, precision=obj.precision)
    parts = [g.weights, g.biases] + ([g.out_weight, g.out_bias] if obj.kind == "output" else [])
    trains = [obj.train in ("all", "weights"), obj.train in ("all", "biases")] * (len(parts) // 2)
    return c, np.concatenate([np.ravel(p) * (1.0 if t else 0.0) for p, t in zip(parts, trains)]), trains, parts


# ----------------------------------------------------------------- equality with tf.gradient
@pytest.mark.parametrize("train", TRAINS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
@pytest.mark.parametrize("shape", [dict(M=1, N=30), dict(M=3, N=40), dict(M=66, N=5, L=2)],
                         ids=["M1", "M3", "M66"])
def test_value_and_grad_is_tf_gradient(wrt, kind, train, shape):
    pr, params, data = problem(seed=shape["M"], **shape)
    ds = data(kind)
    obj = Objective(params, ds, kind=kind, wrt=wrt, train=train)
    n_w = params.n_layers * params.width ** 2
    assert obj.size == n_w + params.n_layers * params.width + (
        params.out_dim * (params.width + 1) if kind == "output" else 0)
    rng = np.random.default_rng(1)
    x = obj.pack(params) + 0.01 * rng.standard_normal(obj.size)
    moved = obj.unpack(x)
    c, g = obj.value_and_grad(x)
    c0, g0, trains, parts = expected_vector(obj, moved, ds)
    assert type(c) is float and c == c0
    assert g.shape == (obj.size,) and g.dtype == np.float64
    assert np.array_equal(g, g0)
    assert obj.value(x) == c0
    # frozen parts: exactly zero; trained parts: not all zero
    k = 0
    for part, trained in zip(parts, trains):
        seg = g[k:k + part.size]
        assert np.any(seg != 0) if trained else np.all(seg == 0)
        k += part.size


@pytest.mark.long      # compiles the float32 kernel variants (docs/TESTING.md)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_points_and_float32_sweep(kind):
    pr, params, data = problem(seed=4, M=4, N=50, dtype=np.float32)
    ds = data(kind)
    assert ds.points.dtype == np.float32
    for precision in ("float64", "float32"):
        obj = Objective(params, ds, kind=kind, wrt="layers", precision=precision)
        x = obj.pack(params)
        c, g = obj.value_and_grad(x)
        c0, g0, _, _ = expected_vector(obj, params, ds)
        assert c == c0 and np.array_equal(g, g0)


def test_several_chunks_use_the_parallel_path():
    pr, params, data = problem(seed=5, M=3, N=2600)      # > 1024 points a chunk: three chunks
    ds = data("input")
    obj = Objective(params, ds, wrt="layers")
    assert not obj.lock_free
    x = obj.pack(params)
    c, g = obj.value_and_grad(x)
    c0, g0, _, _ = expected_vector(obj, params, ds)
    assert c == c0 and np.array_equal(g, g0)


# --------------------------------------------------------------------------- pack / unpack
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_pack_unpack(kind, wrt):
    pr, params, data = problem(seed=6, P=3)
    obj = Objective(params, data(kind), kind=kind, wrt=wrt)
    assert obj.params is params and obj.size == obj.pack(params).size
    x = obj.pack(params)
    assert x.dtype == np.float64 and x.flags.c_contiguous and x.flags.writeable
    back = obj.unpack(x)
    if wrt == "cumulative":
        assert np.array_equal(back.cum_weights, params.cum_weights)
        assert np.array_equal(back.cum_biases, params.cum_biases)
    else:
        assert np.array_equal(back.weights, params.weights) and np.array_equal(back.biases, params.biases)
    assert np.array_equal(back.out_weight, params.out_weight) and np.array_equal(back.out_bias, params.out_bias)
    assert_close(obj.pack(back), x, 1e-14, "pack(unpack(x))")
    # the input cost does not move the output layer: unpack keeps the initial one
    other = make_problem(7, L=2, M=3, N=1, P=3).params
    assert_close(obj.unpack(obj.pack(other)).cum_weights, other.cum_weights, 1e-13, "other params")


def test_pack_refuses_other_shapes():
    pr, params, data = problem(seed=8, L=2, M=3, P=2)
    obj = Objective(params, data("output"), kind="output")
    with pytest.raises(ValueError, match="L=3 layers"):
        obj.pack(make_problem(1, L=3, M=3, N=1, P=2).params)
    with pytest.raises(ValueError, match="output dimension"):
        obj.pack(make_problem(1, L=2, M=3, N=1, P=1).params)
    with pytest.raises(ValueError, match="output dimension None"):
        obj.pack(make_problem(1, L=2, M=3, N=1).params)
    with pytest.raises(ValueError, match="truncflow.Params"):
        obj.pack(np.zeros(obj.size))


def test_unpack_refuses_a_singular_network():
    pr, params, data = problem(seed=9, P=None)
    obj = Objective(params, data("input"))
    x = obj.pack(params)
    x[:9] = 0.0                                      # W^(1) = 0
    with pytest.raises(ValueError):
        obj.unpack(x)
    with pytest.raises(ValueError):
        obj.value_and_grad(x)


# ---------------------------------------------------------------------------- x and out
def test_bad_x_is_refused():
    pr, params, data = problem(seed=10, P=None)
    obj = Objective(params, data("input"))
    x = obj.pack(params)
    with pytest.raises(ValueError, match=rf"shape \({obj.size},\)"):
        obj.value(x[:-1])
    with pytest.raises(ValueError, match=rf"shape \({obj.size},\)"):
        obj.value_and_grad(x.reshape(1, -1))
    for bad in (np.nan, np.inf, -np.inf):
        for i in (0, 3, obj.size - 1):
            y = x.copy()
            y[i] = bad
            with pytest.raises(ValueError, match=f"finite.*index {i}"):
                obj.value_and_grad(y)
    big = Objective(make_problem(1, L=2, M=70, N=3).params, make_problem(1, L=2, M=70, N=3).dataset("input"))
    for i in range(0, big.size, 997):
        y = big.pack(big.params)
        y[i] = np.nan if i % 2 else -np.inf
        with pytest.raises(ValueError, match=f"finite.*index {i}"):
            big.value(y)
    with pytest.raises(ValueError, match="real"):
        obj.value(x.astype(complex))
    with pytest.raises(ValueError, match="real"):
        obj.value(["a"] * obj.size)
    # huge but finite entries pass the check
    y = x.copy()
    y[-1] = 1e300
    assert obj._vector(y) is y
    # other real layouts and types are converted
    x = x.astype(np.float32).astype(np.float64)
    assert obj.value(list(x)) == obj.value(x) == obj.value(x.astype(np.float32))
    assert obj.value(np.asfortranarray(np.stack([x, x]))[0]) == obj.value(x)


def test_out_receives_the_gradient():
    pr, params, data = problem(seed=11)
    obj = Objective(params, data("output"), kind="output", wrt="layers")
    x = obj.pack(params)
    c, g = obj.value_and_grad(x)
    buf = np.full(obj.size, np.nan)
    c2, g2 = obj.value_and_grad(x, out=buf)
    assert g2 is buf and c2 == c and np.array_equal(buf, g)
    y = x.copy()                                   # out may be x itself
    c3, g3 = obj.value_and_grad(y, out=y)
    assert g3 is y and c3 == c and np.array_equal(y, g)
    for bad, match in [(np.zeros(obj.size, np.float32), "float64"), (np.zeros(obj.size + 1), "shape"),
                       (np.zeros((obj.size, 1)), "shape"), (np.zeros(2 * obj.size)[::2], "C-contiguous"),
                       (list(np.zeros(obj.size)), "NumPy array")]:
        with pytest.raises(ValueError, match=match):
            obj.value_and_grad(x, out=bad)
    ro = np.zeros(obj.size)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        obj.value_and_grad(x, out=ro)


def test_out_allocates_nothing_beyond_the_kernel():
    """With ``out``, a call's peak of traced memory (NumPy's and the compiled kernel's
    allocations) is the kernel's own (``FlowProblem.evaluate``) plus a few Python objects:
    no gradient-sized array is made here."""
    pr, params, data = problem(seed=12, L=2, M=40, N=20, P=None)
    obj = Objective(params, data("input"))
    x, buf = obj.pack(params), np.empty(obj.size)
    obj.value_and_grad(x, out=buf)                   # compile, warm up

    def peak(call):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            call()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    kernel = peak(lambda: obj._problem.evaluate(x))
    assert obj.size * 8 > 25_000
    assert peak(lambda: obj.value_and_grad(x, out=buf)) < kernel + 1_000


def test_bad_arguments():
    pr, params, data = problem(seed=13)
    with pytest.raises(ValueError, match="kind"):
        Objective(params, data("input"), kind="middle")
    with pytest.raises(ValueError, match="wrt"):
        Objective(params, data("input"), wrt="cum")
    with pytest.raises(ValueError, match="train"):
        Objective(params, data("input"), train="none")
    with pytest.raises(ValueError, match="precision"):
        Objective(params, data("input"), precision="float16")
    with pytest.raises(ValueError, match="truncflow.Params"):
        Objective(None, data("input"))


# ------------------------------------------------------------------------------ threads
@pytest.mark.parametrize("case", ["one chunk", "three chunks", pytest.param("float32", marks=pytest.mark.long)])
def test_two_threads_give_the_serial_bits(case):
    N = 2600 if case == "three chunks" else 60
    pr, params, data = problem(seed=14, M=3, N=N)
    obj = Objective(params, data("output"), kind="output", wrt="layers",
                    precision="float32" if case == "float32" else "float64")
    assert obj.lock_free == (case == "one chunk")
    rng = np.random.default_rng(2)
    xs = [obj.pack(params) + 0.05 * rng.standard_normal(obj.size) for _ in range(40)]
    serial = [obj.value_and_grad(x) for x in xs]
    got = [[None] * len(xs) for _ in range(2)]
    start = threading.Barrier(2)

    def work(t):
        buf = np.empty(obj.size)
        start.wait()
        for i in range(len(xs)) if t == 0 else reversed(range(len(xs))):
            c, g = obj.value_and_grad(xs[i], out=buf)
            got[t][i] = (c, g.copy())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(2):
        for (c, g), (c0, g0) in zip(got[t], serial):
            assert c == c0 and np.array_equal(g, g0)


# ------------------------------------------------------------------------------ L-BFGS-B
@pytest.mark.parametrize("Q,M", [(2, 2), (3, 3)])
@pytest.mark.parametrize("wrt", WRTS)
def test_lbfgs_returns_to_the_cone_minimizer(Q, M, wrt):
    ds = radial_dataset(Q, M)
    start = tf.cone_minimizer(ds)
    obj = Objective(start, ds, wrt=wrt)
    assert obj.value(obj.pack(start)) < 1e-20
    x0 = obj.pack(start) + 1e-3 * np.random.default_rng(Q).standard_normal(obj.size)
    assert obj.value(x0) > 1e-7
    res = scipy.optimize.minimize(obj.value_and_grad, x0, jac=True, method="L-BFGS-B",
                                  options=dict(maxiter=2000, ftol=0.0, gtol=1e-14))
    assert res.fun < 1e-10, res
    assert tf.cost(obj.unpack(res.x), ds) == obj.value(res.x) < 1e-10


# ----------------------------------------------------------------------------- placements
@pytest.fixture(scope="module")
def client():
    dist = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = dist.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=50)
    c = dist.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.dask
@pytest.mark.parametrize("kind", KINDS)
def test_on_dask_the_same_bits(client, kind):
    pr, params, data = problem(seed=15, M=3, N=2500)
    ds = data(kind)
    dist = tf.distribute(ds.points, ds.labels, ds.targets, client, partition_rows=1024)
    here = Objective(params, ds, kind=kind, wrt="layers", train="weights")
    there = Objective(params, dist, kind=kind, wrt="layers", train="weights")
    assert there.dataset is dist and not there.lock_free
    x = here.pack(params) + 0.01 * np.random.default_rng(0).standard_normal(here.size)
    c, g = here.value_and_grad(x)
    buf = np.empty(there.size)
    c2, g2 = there.value_and_grad(x, out=buf)
    assert c2 == c and g2 is buf and np.array_equal(buf, g)
    assert there.value(x) == c


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_on_a_gpu_the_same_numbers(kind):
    pytest.importorskip("numba_cuda")
    from numba import config as numba_config
    if not numba_config.ENABLE_CUDASIM:
        from numba import cuda
        if not cuda.is_available():
            pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set")
    pr, params, data = problem(seed=16, L=2, M=3, N=90, Q=2)
    ds = data(kind)
    here = Objective(params, ds, kind=kind, wrt="layers")
    there = Objective(params, ds.to("cuda"), kind=kind, wrt="layers")
    assert not there.lock_free
    x = here.pack(params) + 0.01 * np.random.default_rng(1).standard_normal(here.size)
    c, g = here.value_and_grad(x)
    c2, g2 = there.value_and_grad(x, out=np.empty(there.size))
    assert_close(c2, c, 1e-12, "cost")
    assert_close(g2, g, 1e-12, "gradient")
