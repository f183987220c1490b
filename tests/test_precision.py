"""precision="float32" on the CPU: float32 arithmetic point by point, float64 sums over points.

The accuracy the tests hold is stated against the float64 result, on problems where no
point lies within round-off of a hyperplane (|a| >= 0.05 for every pre-activation; 0.002
at M = 66), so
that float32 rounding cannot move a point across a kink.
"""
import numpy as np
import pytest

import truncflow as tf
from conftest import assert_close, make_problem
import reference as ref

#: Relative accuracy of a float32 sweep against float64 on these problems (float32's unit
#: round-off is 6e-8; a few layers of products and residuals that cancel cost two orders).
FLOAT32_RTOL = 1e-5


def margin_problem(seed, L=2, M=4, N=300, Q=2, P=None, margin=0.05, candidates=3):
    """N points, out of candidates * N random ones, that keep |a| >= margin from every hyperplane."""
    pr = make_problem(seed, L=L, M=M, N=candidates * N, Q=Q, P=P)
    p = pr.params
    a = ref.cumulative_preacts(p.cum_weights, p.cum_biases, pr.points)
    keep = np.flatnonzero(np.abs(a).min(axis=(0, 2)) >= margin)[:N]
    assert keep.size == N
    targets = pr.targets_in if P is None else pr.targets_out
    return p, tf.Dataset(pr.points[keep], pr.labels[keep], targets)


@pytest.mark.parametrize("M,P", [(4, None), (4, 2), (1, None), (66, None)])
@pytest.mark.long  # compiles the gradient kernels in float32 arithmetic
def test_float32_gradient_holds_1e_5_of_float64(M, P):
    wide = M > 64
    params, ds = margin_problem(1, M=M, P=P, L=1 if wide else 2, N=40 if wide else 300,
                                margin=0.002 if wide else 0.05, candidates=20 if wide else 3)
    kind = "input" if P is None else "output"
    for per_cluster in (False, True):
        c64, g64 = tf.gradient(params, ds, kind, per_cluster=per_cluster)
        c32, g32 = tf.gradient(params, ds, kind, per_cluster=per_cluster, precision="float32")
        assert_close(c32, c64, FLOAT32_RTOL, "cost")
        for name in ("weights", "biases", "out_weight", "out_bias"):
            if getattr(g64, name) is not None:
                assert_close(getattr(g32, name), getattr(g64, name), FLOAT32_RTOL, name)
                assert getattr(g32, name).dtype == np.float64        # sums stay float64
        assert not np.array_equal(g32.weights, g64.weights)          # float32 was used


@pytest.mark.long  # compiles the flow kernels in float32 arithmetic
def test_float32_flows_follow_the_float64_flow():
    params, ds = margin_problem(2, N=200)
    for method, options in (("rk45", {}), ("gd", {"lr": 0.05})):
        r64 = tf.simulate(params, ds, 0.2, method=method, n_records=3, **options)
        r32 = tf.simulate(params, ds, 0.2, method=method, n_records=3, precision="float32", **options)
        assert r32.status == r64.status == "t_end"
        assert r32.config["precision"] == "float32" and r64.config["precision"] == "float64"
        assert_close(r32.cost[-1], r64.cost[-1], 1e-4, f"{method} final cost")


def test_precision_refusals():
    params, ds = margin_problem(3, N=50)
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        tf.gradient(params, ds, precision="float16")
    with pytest.raises(ValueError, match="applies to method 'rk45' or 'gd'"):
        tf.simulate(params, ds, 0.1, method="kinks", precision="float32")


@pytest.mark.long  # compiles the kinks integrator's kernels for float32 points
def test_kinks_on_float32_points_is_the_run_on_the_same_points_in_float64():
    """method="kinks" refuses precision="float32" (saying why) and takes float32 points: they are
    widened exactly, so the run is that of the same values as float64 points, bit for bit."""
    rng = np.random.default_rng(5)
    x32 = rng.standard_normal((40, 2)).astype(np.float32)
    params = tf.Params.random(2, 2, scale=0.5, bias_scale=0.5, seed=1)
    ds32 = tf.Dataset(x32, np.arange(40) % 2, rng.standard_normal((2, 2)))
    ds64 = tf.Dataset(x32.astype(np.float64), ds32.labels, ds32.targets)
    kw = dict(wrt="layers", method="kinks", rtol=1e-8, atol=1e-10, n_records=9)
    r32, r64 = tf.simulate(params, ds32, 2.0, **kw), tf.simulate(params, ds64, 2.0, **kw)
    assert r32.status == r64.status == "t_end" and r32.config["points_dtype"] == "float32"
    assert r32.config["kinks"]["events_located"] + r32.config["kinks"]["corrected_crossings"] >= 1
    for name in r64.series:
        assert np.array_equal(r32.series[name], r64.series[name]), name
    with pytest.raises(ValueError, match="pre-activations, which a float32 sweep rounds"):
        tf.simulate(params, ds32, 2.0, precision="float32", **kw)
