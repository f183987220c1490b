"""MODEL.md section 5: the exact generalized gradient as a limit of smooth gradients, at
kinks of layers 1, 2 and 3.

Our convention: sigma'(0) = 0, a point on a hyperplane (a_k == 0) counts as truncated.
Replace sigma by a C^1 activation R_r in every layer and let autograd differentiate the
smooth cost (in the cumulative parametrization the smooth truncation map is
W^-1 (R_r(W z + b) - b)). Whether the smooth gradients tend to ours depends on the family:

* Polynomial family, equal to sigma outside (0, 1/r):
      R_r(a) = 0 (a <= 0),  (2 (r a)^2 - (r a)^3) / r (0 <= a <= 1/r),  a (a >= 1/r),
  C^1 (value and slope match at both ends) with R_r'(0) = 0. Once 1/r <= min{a > 0} over
  every pre-activation of the network, each layer of the smooth net returns exactly the
  values sigma returns, so every later pre-activation is exactly ours too (a kink of
  layer 2 or 3 stays at a == 0.0), and every slope is ours (1 where a > 0, R_r'(a) = 0
  where a <= 0, kinks included): the smooth gradient IS ours, up to round-off, at kinks of
  every layer. Below that r the smooth net's values differ, and so does its gradient.

* Shifted softplus S_r(a) = softplus(r a - sqrt r) / r: S_r -> sigma locally uniformly,
  S_r'(a) -> 1[a > 0] pointwise, S_r'(0) = sigmoid(-sqrt r) -> 0, but S_r is not sigma
  outside any shrinking interval: it shifts a free value by
  S_r(a) - a = -1/sqrt r + O(exp(-(r a - sqrt r)) / r), a truncated one by O(exp(-r|a|) / r),
  and a kink of layer 1 (which stays at a == 0 in the smooth net) by ~exp(-sqrt r) / r,
  with slope ~exp(-sqrt r). At kinks of layer 1 the error is therefore C / sqrt r.
  A kink of layer l >= 2, though, is moved: the shifts of layer l-1's free values move
  it to a = c / sqrt r + (exponentially small), with c = (W_l s_(l-1))_k, where
  s_1 = (c_1 - 1) 1[a_1 > 0] and c_1 = 0, recursively s_l = c_l - 1 on free coordinates,
  0 on truncated ones and max(c_l - 1, 0) on a kink. The smooth slope there is
  S_r'(c / sqrt r) = sigmoid(sqrt r (c - 1)), which tends to 1 if c > 1, to 0 if c < 1
  and to 1/2 if c == 1. So the limit counts the kink free (c > 1), truncated as we do
  (c < 1), or with slope 1/2 (c == 1): pointwise convergence of R_r' is not enough.
  The deep-kink problems below are built with c > 1 at every kink, where the limit is the
  gradient with that kink counted free; a two-layer network with c as a parameter checks
  the three cases. (MODEL.md says "depending on the sign of c"; it is the sign of c - 1.)

Exactness: every problem has permuted upper-triangular cumulative weights with diagonal
entries +-1, +-2, dyadic biases and dyadic points, so inverses, LU solves (no pivoting
arithmetic), forward passes and the bias moves that put points on hyperplanes are exact
in float64; the kinks are checked to be exactly 0.0 in NumPy (layer and cumulative
forms) and in torch's own forward passes (both parametrizations).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import truncflow as tf

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

from torch_reference import torch_gradient  # noqa: E402

KINDS = ("input", "output")
WRTS = ("cumulative", "layers")

# Output layer and targets shared by every problem (2 clusters, labels alternate).
OUT_WEIGHT = np.array([[-0.5, -0.25, 0.75], [0.25, -0.75, 0.5]])
OUT_BIAS = np.array([0.75, -1.0])
TARGETS = {"input": np.array([[0.5, -1.0, 0.25], [-0.75, 0.5, 1.0]]),
           "output": np.array([[1.0, -0.5], [-0.25, 0.75]])}

# One network per kink layer: cumulative weights W^(l) (permuted upper-triangular, so
# exactly invertible), cumulative biases b^(l) * 16, points * 32, and the kinks
# (point i, coordinate k): the layer bias b_l[k] is moved so that point i lies exactly on
# hyperplane k of layer l. Chosen so that the only exact ties are those kinks, every other
# pre-activation is at least 1/16 away from 0, a deep kink's point has free and truncated
# coordinates in the layers before it, and the convention matters (tested below).
NETWORKS = {
    1: dict(cum_weights=[[[-2.0, -1.5, 1.0], [0.0, 0.0, 2.0], [0.0, -1.0, 0.5]],
                         [[0.0, -1.0, 0.5], [0.0, 0.0, 1.0], [1.0, -1.5, 1.0]],
                         [[0.0, 2.0, 1.5], [0.0, 0.0, -2.0], [2.0, -1.0, 1.0]]],
            cum_biases16=[[2, 11, -1], [16, -5, 14], [3, 7, -9]],
            points32=[[12, 39, 50], [47, 60, -48], [36, -4, 24], [-29, -63, -54], [61, 51, -25]],
            kinks=[(0, 2), (2, 1), (3, 0)]),
    2: dict(cum_weights=[[[0.0, 0.0, 1.0], [1.0, 0.5, 0.5], [0.0, -2.0, -1.0]],
                         [[-2.0, -0.5, 1.0], [0.0, 0.0, -2.0], [0.0, 1.0, -1.5]],
                         [[-1.0, 0.5, -1.0], [0.0, 0.0, 1.0], [0.0, -1.0, 1.0]]],
            cum_biases16=[[6, 3, -15], [11, -15, 2], [-11, 14, 14]],
            points32=[[43, 0, -28], [41, 14, -25], [-22, 16, 63], [-41, -43, 16], [-55, 49, 28]],
            kinks=[(3, 1), (4, 2)]),
    3: dict(cum_weights=[[[2.0, 1.5, -0.5], [0.0, 0.0, -2.0], [0.0, -2.0, -1.5]],
                         [[0.0, 0.0, -2.0], [0.0, 2.0, 1.5], [-2.0, 1.0, -1.0]],
                         [[0.0, 0.0, -2.0], [1.0, -1.5, 1.0], [0.0, -2.0, -0.5]]],
            cum_biases16=[[-13, -3, 0], [-13, 6, -14], [12, -16, -11]],
            points32=[[25, -59, -10], [50, 50, -56], [-46, 63, -14], [-44, 62, -21], [-39, -26, -23]],
            kinks=[(1, 2), (2, 1)]),
}


@dataclass
class KinkProblem:
    layer: int                  # the layer whose hyperplanes carry the kinks (1-based)
    params: tf.Params
    points: np.ndarray
    labels: np.ndarray
    kinks: list                 # [(point, coordinate)] with a_layer[point, coordinate] == 0.0
    preacts: np.ndarray         # (L, N, M) exact pre-activations
    n_clusters: int = 2

    def dataset(self, kind):
        return tf.Dataset(self.points, self.labels, TARGETS[kind][:self.n_clusters])


def preactivations(params, x):
    """(L, N, M) pre-activations by the layer forward pass, checked equal (exactly) to
    the cumulative form a = W^(l) x~^(l-1) + b^(l), x~^(l) = A_l (sigma(a) - b^(l))."""
    h, z, out = x, x, []
    for l in range(params.n_layers):
        a = h @ params.weights[l].T + params.biases[l]
        a_cum = z @ params.cum_weights[l].T + params.cum_biases[l]
        assert np.array_equal(a, a_cum), f"layer {l + 1}: the forward passes are not exact"
        h = np.maximum(a, 0.0)
        z = (h - params.cum_biases[l]) @ params.inverses[l].T
        out.append(a)
    return np.stack(out)


def softplus_shift(params, preacts):
    """c of the module docstring, (L, N, M): S_r moves the pre-activations by c / sqrt r."""
    c = np.zeros_like(preacts)
    for l in range(1, len(preacts)):
        a, cp = preacts[l - 1], c[l - 1]
        s = np.where(a > 0, cp - 1.0, np.where(a == 0, np.maximum(cp - 1.0, 0.0), 0.0))
        c[l] = s @ params.weights[l].T
    return c


def kink_problem(layer):
    net = NETWORKS[layer]
    base = tf.Params.from_cumulative(np.array(net["cum_weights"]), np.array(net["cum_biases16"]) / 16)
    assert np.array_equal(base.cum_weights @ base.inverses, np.broadcast_to(np.eye(3), (3, 3, 3)))
    x = np.array(net["points32"]) / 32.0
    W, b = base.weights, base.biases.copy()
    for i, k in net["kinks"]:
        b[layer - 1, k] -= preactivations(tf.Params.from_layers(W, b), x[i:i + 1])[layer - 1, 0, k]
    params = tf.Params.from_layers(W, b, OUT_WEIGHT, OUT_BIAS)
    pre = preactivations(params, x)
    ties = {tuple(t) for t in np.argwhere(pre == 0.0)}
    assert ties == {(layer - 1, i, k) for i, k in net["kinks"]}, ties   # exact, and no other ties
    assert np.min(np.abs(pre[pre != 0.0])) >= 1 / 16
    for i, k in net["kinks"]:
        for l in range(layer - 1):      # a deep kink's point is partly free, partly truncated before it
            assert np.any(pre[l, i] > 0) and np.any(pre[l, i] < 0), (l, i)
    return KinkProblem(layer, params, x, np.arange(len(x)) % 2, net["kinks"], pre)


# ---- activations (torch) ------------------------------------------------------------

def poly_relu(r):
    """R_r: sigma outside (0, 1/r), C^1, R_r'(0) = 0."""
    def act(a):
        u = torch.clamp(r * a, 0.0, 1.0)
        return torch.where(a >= 1.0 / r, a, (2.0 * u * u - u * u * u) / r)
    return act


def shifted_softplus(r):
    # logaddexp(t, 0) = softplus(t), stable for |t| up to 1e8 here, with derivative sigmoid(t)
    return lambda a: torch.logaddexp(r * a - np.sqrt(r), torch.zeros_like(a)) / r


def relu_slope_at_0(s):
    """sigma with sigma'(0) = s: s = 0 is ours (and torch.relu's), s = 1 counts every tie free."""
    return lambda a: torch.where(a > 0, a, torch.where(a == 0, s * a, torch.zeros_like(a)))


# ---- comparisons ----------------------------------------------------------------------

def ours(prob, kind, wrt):
    _, g = tf.gradient(prob.params, prob.dataset(kind), kind, wrt)
    return [g.weights, g.biases] + ([g.out_weight, g.out_bias] if kind == "output" else [])


def smooth(prob, kind, wrt, act):
    ds = prob.dataset(kind)
    return torch_gradient(prob.params, ds.points, ds.labels, ds.targets, kind, wrt, act=act)[1]


def distance(a, b, scale):
    """max-norm distance of two gradients (lists of arrays), relative to ``scale``."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) / scale


def scale_of(g):
    return max(float(np.max(np.abs(x))) for x in g)


# ---- the problems ---------------------------------------------------------------------

@pytest.mark.parametrize("layer", [1, 2, 3])
def test_kinks_are_exact_in_torch_and_engine(layer):
    prob = kink_problem(layer)
    # torch's own forward passes see the same pre-activations, bit for bit, kinks at 0.0
    for kind in KINDS:
        for wrt in WRTS:
            seen = []
            record = lambda a: (seen.append(a.detach().numpy().copy()), torch.relu(a))[1]
            ds = prob.dataset(kind)
            torch_gradient(prob.params, ds.points, ds.labels, ds.targets, kind, wrt, act=record)
            assert np.array_equal(np.stack(seen), prob.preacts), (kind, wrt)
    # the engine counts the kinks truncated and every other coordinate by its sign
    pat = tf.activation_patterns(prob.params, prob.points)[..., 0]
    bits = np.sum((prob.preacts > 0).transpose(1, 0, 2) << np.arange(3, dtype=np.uint64), axis=2)
    assert np.array_equal(pat, bits)
    for i, k in prob.kinks:
        assert not (int(pat[i, layer - 1]) >> k) & 1
    if layer >= 2:   # the softplus moves every deep kink to the free side (c > 1)
        c = softplus_shift(prob.params, prob.preacts)
        assert all(c[layer - 1, i, k] >= 1.5 for i, k in prob.kinks), c[layer - 1]


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_the_convention_matters(layer, kind, wrt):
    prob = kink_problem(layer)
    g = ours(prob, kind, wrt)
    assert distance(smooth(prob, kind, wrt, torch.relu), g, scale_of(g)) <= 1e-12
    # counting the kinks free (sigma'(0) = 1) gives a clearly different gradient
    gap = distance(smooth(prob, kind, wrt, relu_slope_at_0(1.0)), g, scale_of(g))
    assert gap > 0.2, gap


# ---- polynomial family: exact beyond r = 1 / min{a > 0}, at kinks of every layer ----------

@pytest.mark.parametrize("r", [1.0, 16.0, 1e3])
def test_polynomial_family_is_c1_and_sigma_outside(r):
    a = torch.tensor([-1.0, -1e-3 / r, 0.0, 1e-9 / r, 0.5 / r, (1 - 1e-9) / r, 1.0 / r, 1.5 / r, 2.0],
                     requires_grad=True)
    y = poly_relu(r)(a)
    (dy,) = torch.autograd.grad(y.sum(), a)
    y, dy, a = y.detach().numpy(), dy.numpy(), a.detach().numpy()
    outside = (a <= 0) | (a >= 1.0 / r)
    assert np.array_equal(y[outside], np.maximum(a[outside], 0.0))                  # sigma outside (0, 1/r)
    assert np.array_equal(dy[outside], (a[outside] > 0).astype(float))              # slopes 0 / 1, R_r'(0) = 0
    assert abs(y[3]) < 1e-15 / r and abs(dy[3]) < 1e-8                              # continuous value and slope at 0+
    assert abs(y[5] - 1.0 / r) < 1e-8 / r and abs(dy[5] - 1.0) < 1e-8               # ... and at 1/r-
    assert np.isclose(y[4] * r, 0.375) and np.isclose(dy[4], 1.25)                  # u = 1/2: (2u^2 - u^3), 4u - 3u^2


@pytest.mark.parametrize("layer", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_polynomial_family_reaches_ours(layer, kind, wrt):
    prob = kink_problem(layer)
    g = ours(prob, kind, wrt)
    r0 = 1.0 / np.min(prob.preacts[prob.preacts > 0])
    rs = r0 * 2.0 ** np.arange(-6, 4)
    errs = np.array([distance(smooth(prob, kind, wrt, poly_relu(r)), g, scale_of(g)) for r in rs])
    # below r0 some pre-activation lies in (0, 1/r), where R_r differs from sigma: a
    # different gradient (not monotone in r there: which pre-activations lie in (0, 1/r),
    # and where, changes with r); from r0 on it is ours, to round-off
    assert np.all(errs[rs < r0] > 1e-6), errs
    assert np.all(errs[rs >= r0] <= 1e-12), errs


# ---- shifted softplus: ours at layer-1 kinks, the kink counted free at deeper ones ---------

SOFTPLUS_RS = (1e4, 1e6, 1e8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_softplus_converges_at_layer1_kinks(kind, wrt):
    prob = kink_problem(1)
    g = ours(prob, kind, wrt)
    errs = np.array([distance(smooth(prob, kind, wrt, shifted_softplus(r)), g, scale_of(g))
                     for r in SOFTPLUS_RS])
    # r^(-1/2): each factor 100 in r divides the error by about 10
    ratios = errs[1:] / errs[:-1]
    assert np.all((ratios > 0.05) & (ratios < 0.2)), errs
    assert errs[-1] <= 1e-3, errs


@pytest.mark.parametrize("layer", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_softplus_counts_deep_kinks_free(layer, kind, wrt):
    prob = kink_problem(layer)
    g = ours(prob, kind, wrt)
    free = smooth(prob, kind, wrt, relu_slope_at_0(1.0))   # only the deep kinks are ties
    sc = scale_of(g)
    sm = [smooth(prob, kind, wrt, shifted_softplus(r)) for r in SOFTPLUS_RS]
    to_ours = np.array([distance(s, g, sc) for s in sm])
    to_free = np.array([distance(s, free, sc) for s in sm])
    assert np.all(to_ours > 0.1), to_ours                  # no convergence to ours ...
    ratios = to_free[1:] / to_free[:-1]                    # ... but to the kink-free gradient, at r^(-1/2)
    assert np.all((ratios > 0.05) & (ratios < 0.2)), to_free
    assert to_free[-1] <= 1e-3, to_free


# ---- the criterion c > 1 / c < 1 / c == 1 on a two-layer network -------------------------

def two_layer(c):
    """One point, x = (1/2, -1, 1), one cluster; layer 1 is the identity: it keeps
    coordinates 0 and 2 and truncates 1. Layer 2's row 1, (0, 1, -c) with bias c, puts the
    point exactly on hyperplane 1 (a = 0 - c + c = 0), where the softplus shift is c (its
    free coordinate 2 enters with weight -c); row 0 keeps it free (a = 1 + 1 - 5/4), row 2
    truncates it (a = -2 + 1/2). W_2 is upper-triangular with diagonal (2, 1, -2): exact."""
    W2 = np.array([[2.0, 1.0, 1.0], [0.0, 1.0, -c], [0.0, 0.0, -2.0]])
    b2 = np.array([-1.25, c, 0.5])
    params = tf.Params.from_layers(np.stack([np.eye(3), W2]), np.stack([np.zeros(3), b2]),
                                   OUT_WEIGHT, OUT_BIAS)
    x = np.array([[0.5, -1.0, 1.0]])
    pre = preactivations(params, x)
    assert np.sign(pre[:, 0]).tolist() == [[1, -1, 1], [1, 0, -1]]     # the only tie: the kink
    assert softplus_shift(params, pre)[1, 0, 1] == c
    return KinkProblem(2, params, x, np.array([0]), [(0, 1)], pre, n_clusters=1)


@pytest.mark.parametrize("c,slope", [(-1.0, 0.0), (0.5, 0.0), (1.0, 0.5), (1.5, 1.0), (3.0, 1.0)])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", WRTS)
def test_softplus_limit_at_a_deep_kink_follows_c_minus_1(c, slope, kind, wrt):
    prob = two_layer(c)
    g = ours(prob, kind, wrt)
    sc = scale_of(g)
    limits = {s: smooth(prob, kind, wrt, relu_slope_at_0(s)) for s in (0.0, 0.5, 1.0)}
    assert distance(limits[0.0], g, sc) <= 1e-12
    assert distance(limits[0.0], limits[1.0], sc) > 0.1       # the convention matters
    sm = [smooth(prob, kind, wrt, shifted_softplus(r)) for r in SOFTPLUS_RS]
    to_limit = np.array([distance(s, limits[slope], sc) for s in sm])
    ratios = to_limit[1:] / to_limit[:-1]
    assert np.all((ratios > 0.05) & (ratios < 0.2)) and to_limit[-1] <= 1e-3, to_limit
    for other in set(limits) - {slope}:
        assert distance(sm[-1], limits[other], sc) > 0.05, other
