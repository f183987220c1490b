"""The CUDA kernels (issue 13) against the CPU kernels and the NumPy reference.

Run on a GPU with ``pytest -m cuda``, or without one in Numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda`` (CI's fourth step). The simulator runs every
thread as a Python thread, so problems stay at hundreds of points. Skipped where
numba-cuda is not installed, or where there is neither a GPU nor the simulator.
"""
import pickle
import warnings

import numpy as np
import pytest

import truncflow as tf
from conftest import assert_close, make_problem
import reference as ref

pytest.importorskip("numba_cuda")
from numba import config as numba_config  # noqa: E402

pytestmark = [pytest.mark.cuda,
              # the simulator computes the pattern hashes' wrapping uint64 products in NumPy scalars
              pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning")]

if not numba_config.ENABLE_CUDASIM:
    from numba import cuda as _cuda
    if not _cuda.is_available():
        pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from numba import cuda  # noqa: E402


def on_device(problem, kind="input", points=None, **options):
    return problem.dataset(kind, points).to("cuda", **options)


def assert_gradients_close(g, g0, rtol=1e-12):
    for name in ("weights", "biases", "out_weight", "out_bias"):
        a, b = getattr(g, name), getattr(g0, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, rtol, name)


# ------------------------------------------------------------------ gradient
@pytest.mark.parametrize("kind", ["input", "output"])
@pytest.mark.parametrize("per_cluster", [False, True])
def test_gradient_matches_the_cpu(kind, per_cluster):
    pr = make_problem(1, L=3, M=5, N=150, Q=3, P=2)
    c, g = tf.gradient(pr.params, on_device(pr, kind), kind, per_cluster=per_cluster)
    c0, g0 = tf.gradient(pr.params, pr.dataset(kind), kind, per_cluster=per_cluster)
    assert_close(c, c0, 1e-12, "cost")
    assert_gradients_close(g, g0)


@pytest.mark.parametrize("wrt", ["layers", "aligned"])
def test_gradient_in_other_parametrizations(wrt):
    pr = make_problem(2, L=2, M=4, N=90, Q=2)
    params = pr.params
    if wrt == "aligned":
        rng = np.random.default_rng(0)
        frames = np.stack([np.linalg.qr(rng.standard_normal((4, 4)))[0] for _ in range(2)])
        params = tf.Params.aligned(frames, 1.0 + 0.1 * rng.random((2, 4)), 0.3 * rng.standard_normal((2, 4)))
    c, g = tf.gradient(params, on_device(pr), wrt=wrt)
    c0, g0 = tf.gradient(params, pr.dataset(), wrt=wrt)
    assert_close(c, c0, 1e-12, "cost")
    assert_gradients_close(g, g0)


def test_gradient_matches_the_numpy_reference():
    pr = make_problem(3, L=2, M=3, N=60, Q=2)
    c, g = tf.gradient(pr.params, on_device(pr))
    p = pr.params
    rc = ref.cost(p.cum_weights, p.cum_biases, pr.points, pr.labels, pr.targets_in)
    r = ref.grad_cumulative(p.cum_weights, p.cum_biases, pr.points, pr.labels, pr.targets_in)
    assert_close(c, rc.sum(), 1e-12, "cost")
    assert_close(g.weights, r["weights"].sum(axis=0), 1e-11, "dC/dW")
    assert_close(g.biases, r["biases"].sum(axis=0), 1e-11, "dC/db")


@pytest.mark.parametrize("M,L,N", [(1, 2, 100), (7, 2, 70), (66, 1, 40), (3, 2, 1)])
def test_widths_one_odd_and_beyond_64(M, L, N):
    """M = 1, M not a multiple of the register block (4), M > 64 (two pattern words); N = 1."""
    pr = make_problem(4, L=L, M=M, N=N, Q=2, scale=0.2)
    dev = on_device(pr)
    c, g = tf.gradient(pr.params, dev, per_cluster=True)
    c0, g0 = tf.gradient(pr.params, pr.dataset(), per_cluster=True)
    assert_close(c, c0, 1e-12, "cost")
    assert_gradients_close(g, g0)
    pts = cuda.to_device(pr.points)
    assert np.array_equal(tf.activation_patterns(pr.params, pts).copy_to_host(),
                          tf.activation_patterns(pr.params, pr.points))


def test_float32_points_are_read_as_they_are():
    pr = make_problem(5, L=2, M=4, N=80, Q=2)
    pts32 = pr.points.astype(np.float32)
    dev = on_device(pr, points=pts32)
    assert dev.dtype == np.float32
    c, g = tf.gradient(pr.params, dev)
    c0, g0 = tf.gradient(pr.params, pr.dataset(points=pts32))
    assert_close(c, c0, 1e-12, "cost")
    assert_gradients_close(g, g0)


def test_results_are_identical_from_run_to_run():
    pr = make_problem(6, L=2, M=4, N=200, Q=3)
    dev = on_device(pr)
    (c1, g1), (c2, g2) = tf.gradient(pr.params, dev, per_cluster=True), tf.gradient(pr.params, dev, per_cluster=True)
    assert np.array_equal(c1, c2) and np.array_equal(g1.weights, g2.weights) and np.array_equal(g1.biases, g2.biases)


# ------------------------------------------------------------------ kinks
def kink_problem():
    """Points of which many lie exactly on hyperplanes of layer 1 and 2 (a == 0 exactly).

    Layer 1: W = I, b = 0, so a = x: coordinates set to 0 are exactly on a hyperplane.
    Layer 2 is integer-valued, so its pre-activations of small-integer images are exact too.
    """
    rng = np.random.default_rng(7)
    M, N = 4, 120
    pts = rng.integers(-2, 3, size=(N, M)).astype(np.float64)
    W = np.stack([np.eye(M), np.eye(M) + np.diag(np.ones(M - 1), 1)])
    b = np.stack([np.zeros(M), np.array([0.0, -1.0, 1.0, 0.0])])
    params = tf.Params.from_layers(W, b)
    labels = np.arange(N) % 2
    return params, pts, labels, rng.standard_normal((2, M))


def test_points_exactly_on_hyperplanes_give_the_cpus_patterns_and_gradient():
    params, pts, labels, targets = kink_problem()
    a = ref.cumulative_preacts(params.cum_weights, params.cum_biases, pts)
    assert (a == 0).sum() > 100                  # the test data do sit on the kinks
    patterns = tf.activation_patterns(params, cuda.to_device(pts)).copy_to_host()
    assert np.array_equal(patterns, tf.activation_patterns(params, pts))
    assert np.array_equal(patterns, ref.patterns(params.cum_weights, params.cum_biases, pts))
    ds = tf.Dataset(pts, labels, targets)
    c, g = tf.gradient(params, ds.to("cuda"))
    c0, g0 = tf.gradient(params, ds)
    assert_close(c, c0, 1e-12, "cost")
    assert_gradients_close(g, g0)
    s, s0 = tf.cluster_statistics(params, ds.to("cuda")), tf.cluster_statistics(params, ds)
    assert np.array_equal(s.truncated_counts, s0.truncated_counts)


def test_the_kink_integrators_passes_match_the_cpu():
    # the frozen patterns, pre-activations and rates, dip and flip tests, points on hyperplanes:
    # the CPU's bit for bit; the frozen-pattern gradient to round-off, with the same flagged points
    from truncflow.engine.kinks.bits import set_bit
    from truncflow.kernels import config
    from truncflow.tiles import kernel_arrays, tile_arrays
    params, pts, labels, targets = kink_problem()
    ds = tf.Dataset(pts, labels, targets)
    kern = kernel_arrays(params)
    N, M, L = pts.shape[0], pts.shape[1], params.n_layers
    cpu, gpu = ds.frozen_points(kern, config.chunk_size(N)), ds.to("cuda").frozen_points(kern, config.chunk_size(N))
    assert np.array_equal(gpu.whole_pattern(), cpu.whole_pattern())
    changed = np.arange(0, N, 7)                 # frozen patterns that differ from the signs
    rng = np.random.default_rng(3)
    pats = np.stack([set_bit(cpu.pattern([i])[0], int(rng.integers(L)), int(rng.integers(M)),
                             bool(rng.integers(2))) for i in changed])
    for fp in (cpu, gpu):
        fp.set_pattern(changed, pats)
    assert np.array_equal(gpu.pattern([3, 7, 14]), cpu.pattern([3, 7, 14]))
    for kind in ("input", "output"):
        p = params if kind == "input" else tf.Params.from_layers(params.weights, params.biases,
                                                                 out_weight=rng.standard_normal((2, M)),
                                                                 out_bias=np.zeros(2))
        tiles = tile_arrays(p, targets if kind == "input" else rng.standard_normal((2, 2)), kind)
        (s0, flagged0), (s1, flagged1) = (fp.frozen_gradient(tiles, kind == "output", config.chunk_size(N))
                                          for fp in (cpu, gpu))
        assert flagged0.size > 0 and np.array_equal(flagged0, flagged1)
        for a, b in zip(s0, s1):
            assert_close(b.sum(0), a.sum(0), 1e-12, "frozen-pattern sums")
    tangent = tuple(rng.standard_normal(a.shape) for a in kern)
    (a0, d0), (a1, d1) = cpu.ends(kern, tangent), gpu.ends(kern, tangent)
    assert np.array_equal(a1.copy_to_host(), a0) and np.array_equal(d1.copy_to_host(), d0)
    later = tuple(t + 0.1 * rng.standard_normal(t.shape) for t in kern)
    e0, e1 = cpu.ends(later, tangent), gpu.ends(later, tangent)
    assert np.array_equal(gpu.dips((a1, d1), e1, 0.3, 0.5), cpu.dips((a0, d0), e0, 0.3, 0.5))
    assert np.array_equal(gpu.flips(kern, tangent), cpu.flips(kern, tangent))
    planes, extra = {(0, 1), (1, 2), (1, 0)}, [5, 9]
    z0, near0, rows0 = cpu.near_planes(kern, tangent, planes, extra, 64 * np.finfo(float).eps)
    z1, near1, rows1 = gpu.near_planes(kern, tangent, planes, extra, 64 * np.finfo(float).eps)
    assert z0 == z1 and all(np.array_equal(near0[q], near1[q]) for q in planes) and sum(map(len, near0.values()))
    assert rows0.keys() == rows1.keys() and all(np.array_equal(rows0[i], rows1[i]) for i in rows0)
    pts_gpu, lab_gpu, r = gpu.data([4, 2])
    assert np.array_equal(pts_gpu[r], pts[[4, 2]]) and np.array_equal(lab_gpu[r], labels[[4, 2]])


def test_a_kinks_flow_on_the_device_follows_the_cpu():
    pr = make_problem(14, L=2, M=3, N=60, Q=2)
    options = dict(method="kinks", wrt="layers", rtol=1e-6, atol=1e-8, n_records=3)
    r = tf.simulate(pr.params, on_device(pr), 0.02, **options)      # 20 evaluations, a crossing located
    r0 = tf.simulate(pr.params, pr.dataset(), 0.02, **options)
    assert r.status == r0.status == "t_end"
    assert r.config["kinks"]["corrected_crossings"] + r.config["kinks"]["events_located"] > 0
    assert_close(r.cost, r0.cost, 1e-9, "recorded costs")
    assert_close(r.cum_weights, r0.cum_weights, 1e-9, "recorded weights")


# ------------------------------------------------------------------ forward on device arrays
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_truncate_and_patterns_take_and_return_device_arrays(dtype):
    pr = make_problem(8, L=3, M=5, N=100, Q=2)
    pts = pr.points.astype(dtype)
    d = cuda.to_device(pts)
    for layers in range(4):
        out = tf.truncate(pr.params, d, layers)
        assert cuda.is_cuda_array(out) if hasattr(cuda, "is_cuda_array") else hasattr(out, "copy_to_host")
        assert np.array_equal(out.copy_to_host(), tf.truncate(pr.params, pts, layers)), layers
    assert np.array_equal(tf.activation_patterns(pr.params, d).copy_to_host(),
                          tf.activation_patterns(pr.params, pts))


def test_device_arrays_are_checked():
    pr = make_problem(9, L=2, M=3, N=10, Q=2)
    with pytest.raises(ValueError, match=r"shape \(10, 2\), expected \(N, 3\)"):
        tf.truncate(pr.params, cuda.to_device(np.ascontiguousarray(pr.points[:, :2])))
    bad = pr.points.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        tf.truncate(pr.params, cuda.to_device(bad))
    with pytest.raises(ValueError, match="NaN or inf"):
        tf.activation_patterns(pr.params, cuda.to_device(bad))


# ------------------------------------------------------------------ statistics and observables
def test_cluster_statistics_match_the_cpu():
    pr = make_problem(10, L=2, M=3, N=120, Q=3)
    s = tf.cluster_statistics(pr.params, on_device(pr), second_moments=True)
    s0 = tf.cluster_statistics(pr.params, pr.dataset(), second_moments=True)
    assert np.array_equal(s.truncated_counts, s0.truncated_counts)
    for name in ("free_sums", "constrained_sums", "free_second", "constrained_second", "cost_per_cluster"):
        assert_close(getattr(s, name), getattr(s0, name), 1e-12, name)
    assert_gradients_close(s.gradient, s0.gradient)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_observe_matches_the_cpu(kind):
    pr = make_problem(11, L=2, M=4, N=150, Q=3, P=2)
    o, o0 = tf.observe(pr.params, on_device(pr, kind), kind), tf.observe(pr.params, pr.dataset(kind), kind)
    assert np.array_equal(o.pattern_hash, o0.pattern_hash) and o.n_patterns == o0.n_patterns
    for name in ("truncated_fraction", "collapsed_fraction", "coordinate_truncated_fraction", "free_coordinates"):
        assert np.array_equal(getattr(o, name), getattr(o0, name)), name
    assert_close(o.cost_per_cluster, o0.cost_per_cluster, 1e-12, "cost")
    assert_close(o.spread, o0.spread, 1e-12, "spread", floor=1.0)
    assert_close(o.collapse_ratio, o0.collapse_ratio, 1e-12, "collapse ratio", floor=1.0)


# ------------------------------------------------------------------ streaming, and the same bits everywhere
def all_sums(params, dev, kind):
    """Every pass's results on one dataset: gradient (total, per cluster), statistics, observation."""
    c, g = tf.gradient(params, dev, kind)
    cq, gq = tf.gradient(params, dev, kind, per_cluster=True)
    st = tf.cluster_statistics(params, dev, kind)
    o = tf.observe(params, dev, kind)
    return [c, g.weights, g.biases, cq, gq.weights, gq.biases, st.truncated_counts, st.free_sums, st.constrained_sums, o.cost, o.pattern_hash] + \
        ([g.out_weight, g.out_bias] if kind == "output" else [])


@pytest.mark.parametrize("kind", ["output"])     # the chunks and batches do not depend on the cost kind
def test_streamed_batches_give_the_resident_bits(kind):
    """A batch is a whole number of chunks and writes their rows: every batch size gives the
    resident pass's bits, and the CPU's results to round-off."""
    pr = make_problem(12, L=2, M=4, N=230, Q=3, P=2)
    resident = on_device(pr, kind)
    want = all_sums(pr.params, resident, kind)
    for batch in (41, 150):            # 4 batches of one chunk (64 points here), 2 of two
        streamed = on_device(pr, kind, batch_points=batch)
        assert resident.resident and not streamed.resident and streamed.batch_points == batch
        got = all_sums(pr.params, streamed, kind)
        for a, b in zip(got, want):
            assert np.array_equal(a, b), batch
    c0, g0 = tf.gradient(pr.params, pr.dataset(kind), kind, per_cluster=True)
    assert_close(want[3], c0, 1e-12, "cost")
    assert_close(want[4], g0.weights, 1e-12, "dC/dW")
    assert np.array_equal(want[10], tf.observe(pr.params, pr.dataset(kind), kind).pattern_hash)


def test_the_bits_do_not_depend_on_the_blocks_launched(monkeypatch):
    """The partition into chunks depends on N only: launching 1 or 3 blocks (as GPUs with fewer
    or more multiprocessors would) gives the same bits in every pass."""
    from truncflow.kernels.cuda import launch
    pr = make_problem(13, L=2, M=5, N=200, Q=3, P=2)
    want = all_sums(pr.params, on_device(pr, "output"), "output")
    monkeypatch.setattr(launch, "BLOCKS_SIMULATED", 1)
    got = all_sums(pr.params, on_device(pr, "output"), "output")
    for a, b in zip(got, want):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["input", "output"])
def test_the_kernel_compiled_for_the_shape_agrees_with_the_generic_one(kind, monkeypatch):
    """``kernels.cuda.sweep`` (the shape's constants, registers, the block's GEMM) against the
    generic kernel it replaces for the gradient: the same cost and gradient to round-off, per
    cluster too, and the same flagged points in the frozen pass on points exactly on kinks."""
    from truncflow.kernels.cuda import sweep
    pr = make_problem(14, L=3, M=6, N=260, Q=3, P=2)
    dev = on_device(pr, kind)
    assert sweep.plan("float64", 6, 3, 2 if kind == "output" else 0, kind == "output", 1, False) is not None
    fast = [tf.gradient(pr.params, dev, kind, per_cluster=pc) for pc in (False, True)]
    monkeypatch.setattr(sweep, "plan", lambda *args: None)
    generic = [tf.gradient(pr.params, on_device(pr, kind), kind, per_cluster=pc) for pc in (False, True)]
    for (c, g), (c0, g0) in zip(fast, generic):
        assert_close(c, c0, 1e-13, "cost")
        assert_gradients_close(g, g0, 1e-13)


# ------------------------------------------------------------------ precision
def margin_problem(seed, M=4, N=150):
    """A problem whose points all keep |a| >= 0.05 from every hyperplane (float32 rounding
    cannot move a point across one), and its float64 gradient."""
    pr = make_problem(seed, L=2, M=M, N=3 * N, Q=2)
    p = pr.params
    a = ref.cumulative_preacts(p.cum_weights, p.cum_biases, pr.points)
    keep = np.flatnonzero(np.abs(a).min(axis=(0, 2)) >= 0.05)[:N]
    return p, tf.Dataset(pr.points[keep], pr.labels[keep], pr.targets_in)


def test_float32_precision_on_the_gpu_agrees_with_the_cpus_float32_and_holds_1e_5():
    params, ds = margin_problem(13)
    c64, g64 = tf.gradient(params, ds)
    c, g = tf.gradient(params, ds.to("cuda"), precision="float32")
    c32, g32 = tf.gradient(params, ds, precision="float32")
    # the same float32 sweep, summed in another order (float64 sums)
    assert_close(c, c32, 1e-6, "cost vs the CPU's float32")
    assert_close(g.weights, g32.weights, 1e-6, "dC/dW vs the CPU's float32")
    # float32 arithmetic per point: relative 1e-5 of the float64 result on this problem
    assert_close(c, c64, 1e-5, "cost vs float64")
    assert_close(g.weights, g64.weights, 1e-5, "dC/dW vs float64")
    assert_close(g.biases, g64.biases, 1e-5, "dC/db vs float64")
    assert c != c64                              # float32 was used


def test_float32_precision_of_the_output_cost_per_cluster():
    pr = make_problem(17, L=2, M=3, N=120, Q=3, P=2)
    ds = pr.dataset("output")
    c, g = tf.gradient(pr.params, ds.to("cuda"), "output", per_cluster=True, precision="float32")
    c32, g32 = tf.gradient(pr.params, ds, "output", per_cluster=True, precision="float32")
    assert_close(c, c32, 1e-6, "cost vs the CPU's float32")
    assert_gradients_close(g, g32, 1e-6)


# ------------------------------------------------------------------ flows
@pytest.mark.parametrize("method,options", [("rk45", {}), ("gd", {"lr": 0.1})])
def test_simulate_on_the_device_follows_the_cpu_flow(method, options):
    pr = make_problem(14, L=2, M=3, N=60, Q=2)
    t_end = 0.02 if method == "rk45" else 0.3           # 16 and 3 evaluations (the simulator: 0.4 s each)
    r = tf.simulate(pr.params, on_device(pr), t_end, method=method, n_records=3, **options)
    r0 = tf.simulate(pr.params, pr.dataset(), t_end, method=method, n_records=3, **options)
    assert r.status == r0.status == "t_end"
    assert np.array_equal(r.t, r0.t) if method == "gd" else len(r.t) == len(r0.t)
    assert_close(r.cost, r0.cost, 1e-10, "recorded costs")
    assert_close(r.cum_weights, r0.cum_weights, 1e-10, "recorded weights")


def test_simulate_refusals_name_the_device_dataset(tmp_path):
    pr = make_problem(15, L=1, M=2, N=20, Q=2)
    dev = on_device(pr)
    with pytest.raises(ValueError, match="method='events' needs the points here.*DeviceDataset"):
        tf.simulate(pr.params, dev, 0.1, method="events")
    streamed = pr.dataset().to("cuda", batch_points=8)
    with pytest.raises(ValueError, match="needs the points resident on the GPU"):
        tf.simulate(pr.params, streamed, 0.1, method="kinks")
    with pytest.raises(ValueError, match="checkpoint does not apply to a DeviceDataset"):
        tf.simulate(pr.params, dev, 0.1, checkpoint=tmp_path / "c.npz")
    with pytest.raises(ValueError, match="run each member with simulate"):
        tf.simulate_ensemble([pr.params, pr.params], dev, 0.1)


# ------------------------------------------------------------------ the dataset object
def test_device_dataset_round_trip_and_refusals():
    pr = make_problem(16, L=1, M=3, N=30, Q=2)
    ds = pr.dataset()
    dev = ds.to("cuda")
    assert (dev.n_points, dev.width, dev.n_clusters) == (30, 3, 2) and "resident" in repr(dev)
    back = dev.to("cpu")
    assert isinstance(back, tf.Dataset)
    assert np.array_equal(back.points, ds.points) and np.array_equal(back.labels, ds.labels)
    assert dev.to("cuda") is dev
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        ds.to("gpu")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(dev)
    pts, lab = dev.rows(np.array([0, 5, 29]))
    assert np.array_equal(pts, ds.points[[0, 5, 29]]) and np.array_equal(lab, ds.labels[[0, 5, 29]])
    other = dev.with_targets(np.ones((2, 3)))
    assert np.array_equal(other.targets, np.ones((2, 3))) and other.points is dev.points
    with pytest.raises(ValueError, match="targets have 3 rows but this dataset has Q = 2"):
        dev.with_targets(np.ones((3, 3)))


# ------------------------------------------------------------------ the benchmark script
def test_gpu_benchmark_script_runs(tmp_path):
    """bench/gpu.py end to end in the simulator (its timings mean nothing there): it stays ready
    for a GPU machine, and writes every section's results."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", str(script), "--simulate", "--no-torch",
                           "--no-tests", "--out-dir", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["simulated"] and {"device", "kernels", "bits", "transfer", "flow"} <= set(report)
    assert [r["precision"] for r in report["kernels"]] == ["float64", "float32"]
    assert report["bits"]["repeat_identical"] and report["bits"]["streamed_identical"]
    assert report["bits"]["rel_diff_vs_cpu"] < 1e-12


# ------------------------------------------------------------------ random shapes
@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_match_the_cpu(seed):
    """Random L, M, Q, N, P, sorted or shuffled labels: gradient, statistics with second
    moments and observables, against the CPU (the kernels' index arithmetic)."""
    rng = np.random.default_rng(100 + seed)
    L, M, Q, N, P = (int(rng.integers(1, 4)), int(rng.integers(1, 10)), int(rng.integers(1, 5)),
                     int(rng.integers(1, 90)), int(rng.integers(1, 4)))
    pr = make_problem(200 + seed, L=L, M=M, N=N, Q=Q, P=P)
    if seed % 2:
        order = np.argsort(pr.labels, kind="stable")
        pr.points, pr.labels = pr.points[order], pr.labels[order]
    kind = "output" if seed % 3 == 0 else "input"
    ds = pr.dataset(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tf.EmptyClusterWarning)
        dev = ds.to("cuda")
    c, g = tf.gradient(pr.params, dev, kind, per_cluster=True)
    c0, g0 = tf.gradient(pr.params, ds, kind, per_cluster=True)
    assert_close(c, c0, 1e-12, "cost", floor=1.0)
    assert_gradients_close(g, g0)
    s, s0 = (tf.cluster_statistics(pr.params, d, kind, second_moments=True) for d in (dev, ds))
    assert np.array_equal(s.truncated_counts, s0.truncated_counts)
    for name in ("free_sums", "constrained_sums", "free_second", "constrained_second"):
        assert_close(getattr(s, name), getattr(s0, name), 1e-12, name, floor=1.0)
    o, o0 = tf.observe(pr.params, dev, kind), tf.observe(pr.params, ds, kind)
    assert np.array_equal(o.pattern_hash, o0.pattern_hash)
    assert np.array_equal(o.coordinate_truncated_fraction, o0.coordinate_truncated_fraction, equal_nan=True)
