"""truncflow's cost as a PyTorch function and module (optional: ``pip install torch``).

Only this module imports torch; ``import truncflow`` does not. ::

    import torch
    import truncflow as tf
    from truncflow.torch import TruncflowCost

    model = TruncflowCost(params, dataset, kind="input", wrt="layers")  # nn.Parameters W_l, b_l
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(100):
        opt.zero_grad()
        loss = model()                  # 0-dim tensor: the cost C (MODEL.md section 4)
        loss.backward()                 # .grad: truncflow's exact generalized gradient
        opt.step()
    model.params()                      # the current truncflow.Params

    c = truncflow.torch.cost(W, b, dataset)      # W (L, M, M), b (L, M) tensors, cumulative form
    c.backward()

The forward pass runs truncflow's kernels once (:class:`truncflow.Objective`'s
``value_and_grad``: cost and gradient in one sweep over the points) and keeps the
gradient; the backward pass multiplies it by the incoming gradient. The gradient is
the generalized gradient of MODEL.md section 5 (``sigma'(0) = 0``, a point exactly on a
hyperplane counts as truncated), the one PyTorch autograd computes with ``torch.relu``;
it has no derivative of its own: a double backward (``create_graph=True``, Hessians,
gradient penalties through this cost) is refused with a :class:`RuntimeError` that says so.

Tensors and devices:
  - CPU tensors with a :class:`truncflow.Dataset` (or a Dask dataset): float64 tensors are
    read through ``.numpy()`` (a view, no copy) into the objective's flat parameter vector
    (L*M*M + L*M [+ P*M + P] numbers) and the gradient comes back as ``torch.from_numpy``
    views. Other floating dtypes (float32, ...) are read as float64; the cost and each
    gradient come back in the dtype of the tensors (the computation is float64 throughout;
    ``precision="float32"`` picks truncflow's float32 sweep).
  - CUDA tensors with a dataset on a GPU (``dataset.to("cuda")``, a
    :class:`truncflow.DeviceDataset`): the points stay on the device and every pass runs
    there; only the parameters (a few hundred numbers) come to the host and the gradient
    goes back to the tensors' device, as in every truncflow pass on a GPU.
  - A CUDA tensor with a dataset that is not on a GPU, or a CPU tensor with one that is,
    is refused (ValueError naming both places).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ._validate import choice
from .backends import capabilities_of
from .compute import COST_KINDS, PRECISIONS
from .objective import Objective
from .params import Params

__all__ = ["cost", "TruncflowCost", "DOUBLE_BACKWARD"]

#: The parametrizations a tensor of this module may hold (``wrt``).
FORMS = ("cumulative", "layers")

#: The message of the RuntimeError a double backward raises.
DOUBLE_BACKWARD = ("truncflow.torch: the cost's gradient is truncflow's exact generalized gradient, computed by "
                   "truncflow's kernels, not by autograd; it cannot be differentiated again: double backward "
                   "(backward or autograd.grad with create_graph=True, Hessians, gradient penalties through this "
                   "cost) is not supported")

_NAMES = ("weights", "biases", "out_weight", "out_bias")


# ---------------------------------------------------------------- tensors <-> the flat vector
def _shapes(objective: Objective) -> list[tuple[int, ...]]:
    """Shapes of the tensors of ``objective``'s vector: weights, biases [, out_weight, out_bias]."""
    p = objective.params
    L, M = p.n_layers, p.width
    shapes = [(L, M, M), (L, M)]
    if objective.kind == "output":
        shapes += [(p.out_dim, M), (p.out_dim,)]
    return shapes


def _placement(objective: Objective, tensors) -> torch.device:
    """The one device of ``tensors``, after checking that it is where the dataset's points are."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError("truncflow.torch: the parameter tensors are on different devices "
                         f"({', '.join(sorted(str(d) for d in devices))}): put them on one")
    device = devices.pop()
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"truncflow.torch: parameters on device {device} are not supported (only cpu, with a "
                         f"truncflow.Dataset, and cuda, with dataset.to('cuda'))")
    caps = capabilities_of(objective.dataset)
    on_gpu = caps is not None and caps.name == "CUDA"
    if device.type == "cuda" and not on_gpu:
        where = caps.where if caps is not None else "here"
        raise ValueError(f"truncflow.torch: the parameters are CUDA tensors ({device}) but the dataset's points are "
                         f"{where} ({type(objective.dataset).__name__}): move the dataset to the GPU with "
                         f"dataset.to('cuda'), or the tensors to the CPU (module.to('cpu'))")
    if device.type == "cpu" and on_gpu:
        raise ValueError("truncflow.torch: the dataset's points are on a GPU (DeviceDataset) but the parameters are "
                         "CPU tensors: move them to the GPU (module.to('cuda'), tensor.cuda()), or the dataset "
                         "here with dataset.to('cpu')")
    return device


def _check(objective: Objective, tensors) -> None:
    shapes = _shapes(objective)
    if len(tensors) != len(shapes):
        raise ValueError(f"truncflow.torch: the {objective.kind} cost takes {len(shapes)} tensors "
                         f"({', '.join(_NAMES[:len(shapes)])}), got {len(tensors)}")
    names = _NAMES[:len(tensors)]
    for name, t, shape in zip(names, tensors, shapes):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"truncflow.torch: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"truncflow.torch: {name} must be a real floating tensor, got dtype {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"truncflow.torch: {name} has shape {tuple(t.shape)}, expected {shape} "
                             f"(L={objective.params.n_layers} layers of width M={objective.params.width})")


def _flatten(objective: Objective, tensors, device: torch.device) -> np.ndarray:
    """The objective's float64 vector of the tensors' values (one copy of the parameters into it)."""
    x = np.empty(objective.size)
    a = 0
    for t in tensors:
        b = a + t.numel()
        v = t.detach()
        if device.type != "cpu":
            # the parameters only (L*M*M + ... numbers), through torch's own copy, which orders
            # itself after the work queued on the tensor's stream; the points stay on the device
            v = v.to("cpu")
        if v.dtype not in (torch.float64, torch.float32, torch.float16):
            v = v.to(torch.float64)                 # bfloat16 and the like: NumPy has no such dtype
        x[a:b].reshape(t.shape)[...] = v.numpy()    # CPU: a view of the tensor's memory, no copy
        a = b
    return x


class _CostFunction(torch.autograd.Function):
    """cost(tensors) with truncflow's gradient: one pass over the points in forward."""

    @staticmethod
    def forward(ctx, objective: Objective, *tensors):
        device = _placement(objective, tensors)
        x = _flatten(objective, tensors, device)
        c, g = objective.value_and_grad(x, out=np.empty(objective.size))   # a fresh gradient per call
        ctx.gradient = g
        ctx.layout = [(t.shape, t.dtype) for t in tensors]
        ctx.device = device
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        return torch.tensor(c, dtype=dtype, device=device)

    @staticmethod
    def backward(ctx, grad_output):
        # create_graph=True runs the backward with grad mode on: refuse here, with the reason,
        # rather than hand back a gradient without history (once_differentiable's behaviour when
        # the incoming gradient has none), which fails later with an unrelated message
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD)
        return _backward(ctx, grad_output)


@once_differentiable
def _backward(ctx, grad_output):
    grads = [None]                     # the objective
    a = 0
    for i, (shape, dtype) in enumerate(ctx.layout):
        b = a + int(np.prod(shape, dtype=np.int64))
        if ctx.needs_input_grad[i + 1]:
            part = torch.from_numpy(ctx.gradient[a:b]).view(shape)        # a view, no copy
            if ctx.device.type != "cpu":
                part = part.to(ctx.device)
            grads.append((part * grad_output.to(torch.float64)).to(dtype))  # a new tensor
        else:
            grads.append(None)
        a = b
    return tuple(grads)


def _apply(objective: Objective, tensors) -> torch.Tensor:
    _check(objective, tensors)
    return _CostFunction.apply(objective, *tensors)


# ---------------------------------------------------------------------------- the function
def _host(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"truncflow.torch: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"truncflow.torch: {name} must be a real floating tensor, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.float64).numpy()


def cost(weights, biases, dataset, kind: str = "input", *, wrt: str = "cumulative", out_weight=None,
         out_bias=None, precision: str = "float64") -> torch.Tensor:
    """The cost (MODEL.md section 4) of the network held by tensors, as a 0-dim tensor.

    Its backward gives truncflow's exact generalized gradient (MODEL.md sections 5-7).

    Args:
        weights, biases: tensors (L, M, M) and (L, M): the cumulative ``W^(l), b^(l)``
            (``wrt="cumulative"``) or the layer ``W_l, b_l`` (``wrt="layers"``).
        dataset: a :class:`truncflow.Dataset` (CPU tensors) or one on a GPU
            (``dataset.to("cuda")``, CUDA tensors).
        kind: "input" or "output" cost; the output cost needs ``out_weight`` (P, M) and
            ``out_bias`` (P,) tensors too, the input cost neither.
        wrt: "cumulative" or "layers": the parametrization of ``weights`` and ``biases``.
        precision: "float64" or "float32": truncflow's sweep over the points (the tensors
            may have any floating dtype; the cost and gradients come back in theirs).
    Returns:
        a 0-dim tensor on the tensors' device, in their (promoted) dtype.
    Raises:
        ValueError: bad shapes, dtypes or arguments; tensors and dataset in different places;
            a singular cumulative weight.
    """
    choice(kind, "kind", COST_KINDS)
    choice(wrt, "wrt", FORMS)
    choice(precision, "precision", PRECISIONS)
    if kind == "output" and (out_weight is None or out_bias is None):
        raise ValueError("truncflow.torch.cost: the output cost (kind='output') needs out_weight (P, M) and "
                         "out_bias (P,) tensors")
    if kind == "input" and (out_weight is not None or out_bias is not None):
        raise ValueError("truncflow.torch.cost: out_weight and out_bias belong to the output cost: give "
                         "kind='output', or leave them out for the input cost")
    tensors = (weights, biases) + ((out_weight, out_bias) if kind == "output" else ())
    arrays = [_host(t, name) for t, name in zip(tensors, _NAMES)]
    build = Params.from_cumulative if wrt == "cumulative" else Params.from_layers
    params = build(*arrays)
    objective = Objective(params, dataset, kind=kind, wrt=wrt, precision=precision)
    return _apply(objective, tensors)


# ---------------------------------------------------------------------------- the module
class TruncflowCost(nn.Module):
    """The cost of a network on a dataset as an ``nn.Module`` whose parameters are the network's.

    Args:
        params: initial :class:`truncflow.Params` (with an output layer for the output cost).
        dataset: a :class:`truncflow.Dataset`, a Dask dataset, or one on a GPU
            (``dataset.to("cuda")``: the parameters are then created on the GPU).
        kind: "input" or "output" cost.
        wrt: "cumulative" (the parameters are ``W^(l), b^(l)``) or "layers" (``W_l, b_l``,
            ordinary training).
        precision: truncflow's sweep, "float64" or "float32".
        dtype: the parameters' dtype (float64 by default; float32 parameters are read as
            float64 and get float32 gradients).
        device: where the parameters live; by default "cuda" for a dataset on a GPU, else "cpu".

    Parameters (``nn.Parameter``): ``weights`` (L, M, M), ``biases`` (L, M) and, for the
    output cost, ``out_weight`` (P, M), ``out_bias`` (P,). ``forward()`` takes no input and
    returns the cost (0-dim); its backward fills their ``.grad`` with truncflow's exact
    gradient. Any ``torch.optim`` optimizer trains them; ``requires_grad_(False)`` on one
    freezes it. ``params()`` gives the current :class:`truncflow.Params`.
    """

    def __init__(self, params: Params, dataset, kind: str = "input", wrt: str = "cumulative", *,
                 precision: str = "float64", dtype: torch.dtype = torch.float64, device=None):
        super().__init__()
        choice(wrt, "wrt", FORMS)
        self.objective = Objective(params, dataset, kind=kind, wrt=wrt, precision=precision)
        p = self.objective.params
        if device is None:
            caps = capabilities_of(self.objective.dataset)
            device = "cuda" if caps is not None and caps.name == "CUDA" else "cpu"
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            import os
            sim = ("; Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) runs truncflow's kernels without a GPU, but "
                   "PyTorch cannot make CUDA tensors there" if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else "")
            raise ValueError(f"truncflow.torch: the parameters were to be made on device {device!r} (the dataset is "
                             f"on a GPU) but this PyTorch has no CUDA (torch.cuda.is_available() is False{sim}): "
                             f"install a CUDA build of PyTorch, or bring the dataset here with dataset.to('cpu')")
        values = (p.cum_weights, p.cum_biases) if wrt == "cumulative" else (p.weights, p.biases)
        if kind == "output":
            values += (p.out_weight, p.out_bias)
        for name, value in zip(_NAMES, values):
            setattr(self, name, nn.Parameter(torch.tensor(np.asarray(value), dtype=dtype, device=device)))

    @property
    def kind(self) -> str:
        return self.objective.kind

    @property
    def wrt(self) -> str:
        return self.objective.wrt

    @property
    def dataset(self):
        return self.objective.dataset

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in _NAMES[:len(_shapes(self.objective))])

    def forward(self) -> torch.Tensor:
        """The cost at the current parameters (0-dim tensor); backward gives truncflow's gradient."""
        return _apply(self.objective, self._tensors())

    def params(self) -> Params:
        """The current parameters as :class:`truncflow.Params` (the output layer of the initial
        params for the input cost). Raises ValueError for a singular cumulative weight."""
        tensors = self._tensors()
        _check(self.objective, tensors)
        return self.objective.unpack(_flatten(self.objective, tensors, tensors[0].device))

    def extra_repr(self) -> str:
        p = self.objective.params
        out = f", P={p.out_dim}" if self.kind == "output" else ""
        return (f"L={p.n_layers}, M={p.width}{out}, kind={self.kind!r}, wrt={self.wrt!r}, "
                f"precision={self.objective.precision!r}, N={self.objective.dataset.n_points}")
