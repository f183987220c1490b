"""truncflow.torch: the cost as a torch.autograd.Function and an nn.Module (issue 25 item 2).

Its gradients against PyTorch autograd of tests/torch_reference.py's model (float64, 1e-12,
points exactly on hyperplanes included), training with torch.optim, the double backward
refused, the devices, and ``import truncflow`` without torch.
"""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import truncflow as tf

from conftest import assert_close, make_problem

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

import truncflow.torch as tft  # noqa: E402
from truncflow.torch import TruncflowCost  # noqa: E402
from torch_reference import layer1_kinks, torch_gradient  # noqa: E402

KINDS = ["input", "output"]
FORMS = ["cumulative", "layers"]
NAMES = ["weights", "biases", "out_weight", "out_bias"]


def leaves(params, kind, wrt, dtype=torch.float64):
    """Fresh leaf tensors (requires_grad) of the network in the parametrization wrt."""
    w, b = (params.cum_weights, params.cum_biases) if wrt == "cumulative" else (params.weights, params.biases)
    arrays = [w, b] + ([params.out_weight, params.out_bias] if kind == "output" else [])
    return [torch.tensor(np.array(a), dtype=dtype, requires_grad=True) for a in arrays]


def assert_matches_autograd(params, ds, kind, wrt, cost, grads, rtol=1e-12):
    """cost (a tensor) and grads (tensors) against autograd of torch_reference's model."""
    tc, tg = torch_gradient(params, ds.points, ds.labels, ds.targets, kind, wrt)
    floor = np.sqrt(2 * tc) * max(1.0, float(np.max(np.abs(ds.points))))
    assert cost.dim() == 0 and cost.dtype == torch.float64
    assert_close(cost.item(), tc, rtol, "cost")
    assert len(grads) == len(tg)
    for name, g, expected in zip(NAMES, grads, tg):
        assert g.dtype == torch.float64
        assert_close(g.numpy(), expected, rtol, f"{kind} {wrt} {name}", floor)


def both_ways(params, ds, kind, wrt):
    """(module, its cost, its grads) and (function's cost, its grads) after one backward each."""
    model = TruncflowCost(params, ds, kind, wrt)
    c = model()
    c.backward()
    mod = (c.detach(), [p.grad for p in model.parameters()])
    ts = leaves(params, kind, wrt)
    out = dict(out_weight=ts[2], out_bias=ts[3]) if kind == "output" else {}
    c2 = tft.cost(ts[0], ts[1], ds, kind, wrt=wrt, **out)
    c2.backward()
    return model, mod, (c2.detach(), [t.grad for t in ts])


# ------------------------------------------------------------------ gradients = autograd
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", FORMS)
@pytest.mark.parametrize("L,M,N", [(3, 4, 40), (2, 1, 20), (2, 66, 12), (3, 3, 1)], ids=["M4", "M1", "M66", "N1"])
def test_gradients_equal_autograd(L, M, N, kind, wrt):
    pr = make_problem(500 + 11 * L + M + N, L=L, M=M, N=N, Q=2, P=2)
    ds = pr.dataset(kind)
    model, (c, g), (c2, g2) = both_ways(pr.params, ds, kind, wrt)
    assert_matches_autograd(pr.params, ds, kind, wrt, c, g)
    assert_matches_autograd(pr.params, ds, kind, wrt, c2, g2)
    # and truncflow.gradient's numbers (the same bits at the module's own params)
    tc, tg = tf.gradient(model.params(), ds, kind, wrt)
    assert c.item() == tc
    for name, grad in zip(NAMES, g):
        assert np.array_equal(grad.numpy(), getattr(tg, name)), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", FORMS)
def test_points_exactly_on_hyperplanes(kind, wrt):
    """Half the points lie exactly on a layer-1 hyperplane (a_k == 0): truncated (sigma'(0) = 0),
    as torch.relu's autograd counts them; counting them free gives another gradient."""
    params, x, labels = layer1_kinks()
    targets = np.random.default_rng(4).standard_normal((2, 3 if kind == "input" else 2))
    ds = tf.Dataset(x, labels, targets)
    _, (c, g), (c2, g2) = both_ways(params, ds, kind, wrt)
    assert_matches_autograd(params, ds, kind, wrt, c, g)
    assert_matches_autograd(params, ds, kind, wrt, c2, g2)
    relu_free_at_0 = lambda a: torch.where(a >= 0, a, torch.zeros_like(a))
    _, other = torch_gradient(params, x, labels, targets, kind, wrt, act=relu_free_at_0)
    assert np.max(np.abs(g[0].numpy() - other[0])) > 1e-3 * np.max(np.abs(other[0]))


def test_incoming_gradient_scales_and_accumulates():
    pr = make_problem(7, L=2, M=3, N=30, Q=2)
    ds = pr.dataset("input")
    model = TruncflowCost(pr.params, ds, wrt="layers")
    c = model()
    c.backward(retain_graph=True)
    g1 = [p.grad.clone() for p in model.parameters()]
    c.backward()                                     # the same graph again: accumulates
    (3.0 * model() - 1.0).backward()                # through other autograd ops: times 3
    for p, g in zip(model.parameters(), g1):
        assert torch.equal(p.grad, 2.0 * g + 3.0 * g)
    g1[0][0, 0, 0] = 123.0                           # a gradient is no view of another's memory
    assert model.weights.grad[0, 0, 0] != 2.0 * 123.0 + 3.0 * 123.0


def test_frozen_tensor_gets_no_gradient():
    pr = make_problem(8, L=2, M=3, N=30, Q=2, P=2)
    model = TruncflowCost(pr.params, pr.dataset("output"), "output", "layers")
    model.weights.requires_grad_(False)
    model().backward()
    assert model.weights.grad is None
    assert all(p.grad is not None for p in (model.biases, model.out_weight, model.out_bias))
    w, b = leaves(pr.params, "input", "cumulative")
    c = tft.cost(w.detach(), b.detach(), pr.dataset("input"))
    assert not c.requires_grad and c.item() == tf.cost(pr.params, pr.dataset("input"))


# ------------------------------------------------------------------ dtypes, views, params()
@pytest.mark.parametrize("kind", KINDS)
def test_float32_tensors(kind):
    """float32 parameters are read as float64; cost and gradients come back as float32: the
    float64 results at the float32-rounded parameters, rounded."""
    pr = make_problem(9, L=2, M=3, N=40, Q=2, P=2)
    ds = pr.dataset(kind)
    model = TruncflowCost(pr.params, ds, kind, "layers", dtype=torch.float32)
    c = model()
    c.backward()
    assert c.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
    rounded = model.params()
    assert np.array_equal(rounded.weights, model.weights.detach().double().numpy())
    c64, g64 = tf.gradient(rounded, ds, kind, "layers")
    assert c.item() == np.float32(c64)
    for name, p in zip(NAMES, model.parameters()):
        assert np.array_equal(p.grad.numpy(), getattr(g64, name).astype(np.float32)), name
    # mixed dtypes: the cost in the promoted dtype, each gradient in its tensor's
    w, b = leaves(pr.params, "input", "layers")
    b32 = b.detach().float().requires_grad_()
    c = tft.cost(w, b32, pr.dataset("input"), wrt="layers")
    c.backward()
    assert c.dtype == torch.float64 and w.grad.dtype == torch.float64 and b32.grad.dtype == torch.float32


def test_the_flat_vector_of_the_tensors():
    """The tensors' values land in the objective's vector in its layout (weights, biases[,
    out_weight, out_bias]); a non-contiguous tensor (a transposed view) is read correctly."""
    pr = make_problem(10, L=2, M=3, N=20, Q=2, P=2)
    for kind in KINDS:
        model = TruncflowCost(pr.params, pr.dataset(kind), kind, "layers")
        x = tft._flatten(model.objective, model._tensors(), torch.device("cpu"))
        assert np.array_equal(x, model.objective.pack(pr.params))
    base = torch.tensor(np.ascontiguousarray(np.array(pr.params.cum_weights).transpose(0, 2, 1)))
    w = base.transpose(1, 2)
    assert not w.is_contiguous() and np.array_equal(w.numpy(), pr.params.cum_weights)
    c = tft.cost(w, torch.tensor(np.array(pr.params.cum_biases)), pr.dataset("input"))
    assert c.item() == tf.cost(tf.Params.from_cumulative(pr.params.cum_weights, pr.params.cum_biases),
                               pr.dataset("input"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("wrt", FORMS)
def test_params_follow_the_tensors(kind, wrt):
    pr = make_problem(11, L=2, M=3, N=20, Q=2, P=2)
    model = TruncflowCost(pr.params, pr.dataset(kind), kind, wrt)
    p0 = model.params()
    assert np.allclose(p0.cum_weights, pr.params.cum_weights, rtol=0, atol=1e-14)
    with torch.no_grad():
        model.biases += 0.25
    p1 = model.params()
    own = p1.cum_biases if wrt == "cumulative" else p1.biases
    assert np.array_equal(own, model.biases.detach().numpy())
    assert (p1.out_weight is None) == (pr.params.out_weight is None)
    assert model().item() == tf.cost(p1, pr.dataset(kind), kind)
    assert "kind=" in repr(model) and f"wrt={wrt!r}" in repr(model)


# ------------------------------------------------------------------ training with torch.optim
OPTIMIZERS = {
    "SGD": lambda ps: (torch.optim.SGD(ps, lr=0.2), None),
    "SGD+momentum": lambda ps: (torch.optim.SGD(ps, lr=0.1, momentum=0.9), None),
    "Adam": lambda ps: (torch.optim.Adam(ps, lr=1e-2), None),
    "Adam+scheduler": lambda ps: (lambda o: (o, torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5)))(
        torch.optim.Adam(ps, lr=2e-2)),
    "AdamW": lambda ps: (torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-3), None),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind,wrt", [("input", "cumulative"), ("output", "layers")])
def test_optimizers_train_it(name, kind, wrt):
    pr = make_problem(12, L=2, M=3, N=200, Q=3, P=2)
    model = TruncflowCost(pr.params, pr.dataset(kind), kind, wrt)
    start = [p.detach().clone() for p in model.parameters()]
    opt, sched = OPTIMIZERS[name](model.parameters())
    costs = []
    for _ in range(15):
        opt.zero_grad()
        c = model()
        c.backward()
        opt.step()
        if sched is not None:
            sched.step()
        costs.append(c.item())
    final = model().item()
    assert final < 0.9 * costs[0], (name, costs[0], final)
    for p, p0 in zip(model.parameters(), start):
        assert not torch.equal(p.detach(), p0)
    if sched is not None:
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-2 * 0.5 ** 3)    # halved after steps 5, 10, 15
    assert final == tf.cost(model.params(), pr.dataset(kind), kind)


def test_lbfgs_with_a_closure():
    pr = make_problem(13, L=2, M=3, N=200, Q=3)
    model = TruncflowCost(pr.params, pr.dataset("input"), wrt="layers")
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=10)

    def closure():
        opt.zero_grad()
        c = model()
        c.backward()
        return c

    c0 = model().item()
    opt.step(closure)
    assert model().item() < 0.9 * c0


# ------------------------------------------------------------------ refusals
@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_double_backward_is_refused_with_a_clear_message():
    pr = make_problem(14, L=2, M=3, N=20, Q=2)
    model = TruncflowCost(pr.params, pr.dataset("input"))
    with pytest.raises(RuntimeError, match=r"truncflow\.torch: .*cannot be differentiated again: double backward"):
        torch.autograd.grad(model(), list(model.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="truncflow"):
        model().backward(create_graph=True)
    w, b = leaves(pr.params, "input", "cumulative")
    with pytest.raises(RuntimeError, match="truncflow"):
        torch.autograd.functional.hessian(lambda w_: tft.cost(w_, b, pr.dataset("input")), w)
    model.zero_grad()
    model().backward()                              # the ordinary backward still works
    assert model.weights.grad is not None


def test_bad_tensors_and_arguments_are_refused():
    pr = make_problem(15, L=2, M=3, N=20, Q=2, P=2)
    ds = pr.dataset("input")
    w, b = leaves(pr.params, "input", "cumulative")
    with pytest.raises(ValueError, match=r"biases has shape \(2, 4\), expected \(2, 3\)"):
        tft._apply(TruncflowCost(pr.params, ds).objective, (w, torch.zeros(2, 4, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"the output cost takes 4 tensors \(weights, biases, out_weight, out_bias\), got 2"):
        tft._apply(TruncflowCost(pr.params, pr.dataset("output"), "output").objective, (w, b))
    with pytest.raises(ValueError, match="real floating tensor"):
        tft.cost(w, torch.zeros(2, 3, dtype=torch.int64), ds)
    with pytest.raises(ValueError, match="needs out_weight"):
        tft.cost(w, b, pr.dataset("output"), "output")
    with pytest.raises(ValueError, match="belong to the output cost"):
        tft.cost(w, b, ds, out_weight=torch.zeros(2, 3), out_bias=torch.zeros(2))
    with pytest.raises(ValueError, match="wrt"):
        TruncflowCost(pr.params, ds, wrt="aligned")
    with pytest.raises(ValueError, match="singular"):
        tft.cost(torch.zeros(2, 3, 3, dtype=torch.float64), b, ds)
    model = TruncflowCost(pr.params, ds)
    with torch.no_grad():
        model.weights[1] = 0.0                       # a singular W^(2) reached by training
    with pytest.raises(ValueError, match=r"W\^\(2\)"):
        model()


def test_devices_must_match_the_dataset():
    """A CUDA tensor with a dataset here, and a CPU tensor with a dataset on a GPU, are refused
    (the check itself, with stand-ins: this PyTorch has no CUDA)."""
    from truncflow.device import DeviceDataset
    pr = make_problem(16, L=2, M=3, N=20, Q=2)
    here = TruncflowCost(pr.params, pr.dataset("input")).objective
    gpu_tensor = SimpleNamespace(device=torch.device("cuda:0"))
    with pytest.raises(ValueError, match=r"CUDA tensors \(cuda:0\) but the dataset's points are here .*"
                                         r"dataset.to\('cuda'\)"):
        tft._placement(here, [gpu_tensor, gpu_tensor])
    on_gpu = SimpleNamespace(dataset=object.__new__(DeviceDataset))
    with pytest.raises(ValueError, match=r"points are on a GPU \(DeviceDataset\) but the parameters are CPU tensors"):
        tft._placement(on_gpu, [torch.zeros(1)])
    assert tft._placement(on_gpu, [gpu_tensor]) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="different devices"):
        tft._placement(here, [torch.zeros(1), gpu_tensor])
    with pytest.raises(ValueError, match="device meta"):
        tft._placement(here, [torch.zeros(1, device="meta")])


def _gpu_or_simulator():
    pytest.importorskip("numba_cuda")
    from numba import config as numba_config
    if not numba_config.ENABLE_CUDASIM:
        from numba import cuda
        if not cuda.is_available():
            pytest.skip("no CUDA GPU and NUMBA_ENABLE_CUDASIM is not set")
    return numba_config.ENABLE_CUDASIM


@pytest.mark.cuda
@pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_on_a_gpu_dataset(kind, monkeypatch):
    """With torch's CUDA: CUDA parameters on a DeviceDataset give the CPU module's gradient on
    the parameters' device. Under the simulator (no torch CUDA): the constructor says why it
    cannot make CUDA parameters, and the bridge's evaluation on the DeviceDataset (the device
    check stood in for) gives the CPU numbers."""
    simulated = _gpu_or_simulator()
    pr = make_problem(17, L=2, M=3, N=90, Q=2, P=2)
    ds = pr.dataset(kind)
    cpu = TruncflowCost(pr.params, ds, kind, "layers")
    cpu().backward()
    dev = ds.to("cuda")
    if torch.cuda.is_available() and not simulated:
        model = TruncflowCost(pr.params, dev, kind, "layers")
        assert model.weights.device.type == "cuda"
        c = model()
        c.backward()
        assert c.device.type == "cuda"
        assert_close(c.item(), cpu().item(), 1e-12, "cost")
        for p, q in zip(model.parameters(), cpu.parameters()):
            assert p.grad.device.type == "cuda"
            assert_close(p.grad.cpu().numpy(), q.grad.numpy(), 1e-12)
        with pytest.raises(ValueError, match="points are on a GPU"):
            TruncflowCost(pr.params, dev, kind, "layers", device="cpu")()
        return
    with pytest.raises(ValueError, match="this PyTorch has no CUDA"):
        TruncflowCost(pr.params, dev, kind, "layers")
    model = TruncflowCost(pr.params, dev, kind, "layers", device="cpu")
    with pytest.raises(ValueError, match="points are on a GPU"):
        model()
    monkeypatch.setattr(tft, "_placement", lambda objective, tensors: torch.device("cpu"))
    c = model()
    c.backward()
    assert_close(c.item(), cpu().item(), 1e-12, "cost")
    for p, q in zip(model.parameters(), cpu.parameters()):
        assert_close(p.grad.numpy(), q.grad.numpy(), 1e-12)


def test_import_truncflow_does_not_import_torch():
    code = ("import sys, numpy as np, truncflow as tf\n"
            "ds = tf.Dataset(np.zeros((4, 2)), [0, 1, 0, 1], np.ones((2, 2)))\n"
            "tf.gradient(tf.Params.random(2, 2, seed=0), ds)\n"
            "print('torch' in sys.modules)\n"
            "import truncflow.torch\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
