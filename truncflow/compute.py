"""Public functions over all points: truncation, activation patterns, cost, gradient.

Thin layer: validates, prepares the kernels' arrays, calls one kernel, merges the
per-chunk partial results in a fixed order. No loop over points here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import threads
from ._validate import choice, integer, require_memory
from .backends import capabilities_of
from .data import Dataset, check_points
from .device import is_device_array, patterns_on_device, truncate_on_device
from .kernels import config
from .kernels.forward import patterns_kernel, truncate_kernel
from .kernels.flow import sum_chunks
from .kernels.network import layer_gradient, scale_gradient
from .params import Params
from .tiles import kernel_arrays, pad_to_width, padded_width, sweep_arrays, tile_arrays

__all__ = ["Gradient", "truncate", "activation_patterns", "cost", "gradient",
           "cumulative_to_layer_gradient", "aligned_scale_gradient", "require_finite_outputs",
           "require_partials_fit", "sweep_arrays", "tile_arrays", "kernel_arrays", "padded_width",
           "pad_to_width", "COST_KINDS", "PARAMETRIZATIONS", "PRECISIONS"]

COST_KINDS = ("input", "output")
PARAMETRIZATIONS = ("cumulative", "layers", "aligned")
#: Arithmetic of the per-point sweep. "float64": the exact contract of MODEL.md;
#: "float32": float32 arithmetic point by point (twice the SIMD lanes on a CPU, and the
#: fast precision of most GPUs), sums over points accumulated in float64 (on the CPU
#: after each tile of at most 256 points, summed in float32).
PRECISIONS = ("float64", "float32")


@dataclass(frozen=True, eq=False)
class Gradient:
    """A gradient of the cost, in the parametrization ``wrt`` names.

    Attributes (float64):
        weights    (L, M, M)  dC/dW^(l) (cumulative) or dC/dW_l (layers);
                   (L, M) dC/dlambda^(l) for "aligned" (the gradient restricted to the
                   aligned family W^(l) = diag(lambda^(l)) R^(l), frames fixed)
        biases     (L, M)     dC/db^(l) (cumulative, aligned) or dC/db_l (layers)
        out_weight (P, M) or None   dC/dW_out (output cost only)
        out_bias   (P,) or None     dC/db_out (output cost only)
        wrt        "cumulative", "layers" or "aligned"
    A per-cluster gradient carries a leading axis of length Q on every array.
    """

    weights: np.ndarray
    biases: np.ndarray
    out_weight: np.ndarray | None = None
    out_bias: np.ndarray | None = None
    wrt: str = "cumulative"

    def norm(self) -> float:
        """Euclidean norm over all components."""
        parts = [self.weights, self.biases, self.out_weight, self.out_bias]
        return float(np.sqrt(sum(np.sum(p * p) for p in parts if p is not None)))

    def cluster(self, q: int) -> "Gradient":
        """Cluster q's part of a per-cluster gradient."""
        pick = (lambda a: None if a is None else a[q])
        return Gradient(self.weights[q], self.biases[q], pick(self.out_weight), pick(self.out_bias), self.wrt)


# ------------------------------------------------------------------ helpers
# kernel_arrays, padded_width, pad_to_width, tile_arrays, sweep_arrays: truncflow.tiles (re-exported here)
def require_partials_fit(n_points: int, partial_bytes: int, what: str) -> int:
    """Chunk size for a pass whose chunks each keep ``partial_bytes`` of partial sums;
    refuses (ValueError, before the kernel allocates them) partial sums that do not fit
    in the memory available, e.g. a per-cluster pass over very many clusters."""
    chunk = config.chunk_size(n_points, partial_bytes)
    n_chunks = -(-int(n_points) // chunk)
    require_memory(n_chunks * int(partial_bytes), what)
    return chunk


def _largest(a) -> float:
    """max |a| over a float array (0.0 when empty), ignoring NaN, without RuntimeWarnings."""
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.nanmax(np.abs(a))) if not np.isnan(a).all() else float("nan")


def require_finite_outputs(params: Params, points, cost, grad: "Gradient | None" = None,
                           what: str | None = None, **arrays) -> None:
    """Raise ValueError when a reduced output (cost, gradient, other small arrays) is not finite.

    One ``isfinite`` over the small reduced outputs, nothing per point unless they are
    not finite; then the message names what overflowed and the sizes behind it, e.g.
    ``the forward pass overflowed: cost is inf; points or parameters too large
    (max |x| = 1e+160, max |W^(l)| = 1, max |b^(l)| = 0)``.

    Args:
        params: the network; points: (N, M) the data.
        cost: a float, a (Q,) array or None; grad: a :class:`Gradient` or None.
        what: the computation, for the message (default: "forward pass" when the cost is
            not finite, else "gradient"); arrays: other named outputs.
    """
    outputs = {} if cost is None else {"cost": np.asarray(cost)}
    if grad is not None:
        names = {"cumulative": ("dC/dW^(l)", "dC/db^(l)"), "layers": ("dC/dW_l", "dC/db_l"),
                 "aligned": ("dC/dlambda^(l)", "dC/db^(l)")}[grad.wrt]
        outputs.update({names[0]: grad.weights, names[1]: grad.biases,
                        "dC/dW_out": grad.out_weight, "dC/db_out": grad.out_bias})
    outputs.update(arrays)
    bad = [name for name, a in outputs.items() if a is not None and not np.isfinite(a).all()]
    if not bad:
        return
    first = bad[0]
    what = what or ("forward pass" if first == "cost" else "gradient")
    value = np.asarray(outputs[first])
    shown = float(value) if value.ndim == 0 else "not finite (" + ", ".join(
        sorted({str(v) for v in value[~np.isfinite(value)].ravel()[:2]})) + ")"
    largest_x = f"{_largest(points):.3g}" if isinstance(points, np.ndarray) else "not computed (points not here)"
    sizes = (f"max |x| = {largest_x}, max |W^(l)| = {_largest(params.cum_weights):.3g}, "
             f"max |b^(l)| = {_largest(params.cum_biases):.3g}")
    if params.has_output:
        sizes += f", max |W_out| = {_largest(params.out_weight):.3g}"
    also = f" (also {', '.join(bad[1:])})" if len(bad) > 1 else ""
    raise ValueError(f"the {what} overflowed: {first} is {shown}{also}; points or parameters too large "
                     f"for float64 ({sizes})")


def _require_params(params) -> Params:
    if not isinstance(params, Params):
        raise ValueError(f"params must be a truncflow.Params, got {type(params).__name__}")
    return params


def _require_dataset(dataset, params: Params, kind: str | None, *, distributed: bool = False) -> Dataset:
    """The dataset, checked against the network; its targets too unless ``kind`` is None.
    ``distributed``: a dataset whose points are elsewhere (a :class:`truncflow.DistributedDataset`,
    a :class:`truncflow.DeviceDataset`: its backend's capabilities say so) is accepted too."""
    caps = capabilities_of(dataset)
    if caps is None:
        raise ValueError(f"dataset must be a truncflow.Dataset, got {type(dataset).__name__}")
    if not caps.points_here and not distributed:
        raise ValueError(f"this function needs the points here, not {caps.where}: {caps.bring_here}")
    M = params.width
    if dataset.width != M:
        raise ValueError(f"dataset points have width {dataset.width} but the network has width M={M}")
    if kind is None:
        return dataset
    if kind == "input":
        if dataset.targets.shape[1] != M:
            raise ValueError(f"input cost needs targets of shape (Q, {M}); got {dataset.targets.shape}")
    else:
        if not params.has_output:
            raise ValueError("output cost needs an output layer: give out_weight and out_bias to Params")
        if dataset.targets.shape[1] != params.out_dim:
            raise ValueError(f"output cost needs targets of shape (Q, {params.out_dim}) to match the output "
                             f"layer; got {dataset.targets.shape}")
    return dataset


# -------------------------------------------------------------- public API
def truncate(params: Params, points, layers: int | None = None) -> np.ndarray:
    """Images ``x~^(layers)`` of the points after the first ``layers`` truncation maps.

    Args:
        params: the network.
        points: (N, M) float32 or float64, any layout; or on a GPU: any object with
            ``__cuda_array_interface__`` (a Numba device array, a CuPy array, a PyTorch
            CUDA tensor), read there without a copy.
        layers: 0..L (default L, all layers).
    Returns:
        (N, M) float64: a NumPy array, or a Numba device array for points on a GPU (the
        same bits: the GPU's forward sweep rounds as the CPU's does).
    Raises ValueError when an image overflows float64 (points or parameters too large).
    """
    params = _require_params(params)
    L = params.n_layers
    if layers is None:
        layers = L
    layers = integer(layers, "layers", low=0, high=L)
    if is_device_array(points):
        return truncate_on_device(params, points, layers)
    pts = check_points(points, params.width)
    cw, cb, et = kernel_arrays(params)
    threads.apply()
    images = truncate_kernel(pts, cw, cb, et, layers, config.chunk_size(pts.shape[0]))
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(images)            # one streaming reduction; locate only on failure
    if not np.isfinite(total) and not np.isfinite(images).all():
        require_finite_outputs(params, pts, None, what="truncation map", images=images)
    return images


def activation_patterns(params: Params, points) -> np.ndarray:
    """Bit-packed activation patterns, (N, L, ceil(M/64)) uint64.

    Bit ``k % 64`` of word ``k // 64`` is set when coordinate k of the layer is free,
    ``a_k = (W^(l) x~^(l-1) + b^(l))_k > 0``; a point on a hyperplane counts as truncated.
    Points on a GPU (``__cuda_array_interface__``) give a Numba device array, the same bits.
    """
    params = _require_params(params)
    if is_device_array(points):
        return patterns_on_device(params, points)
    pts = check_points(points, params.width)
    cw, cb, et = kernel_arrays(params)
    threads.apply()
    return patterns_kernel(pts, cw, cb, et, config.chunk_size(pts.shape[0]))


def _run_gradient_kernel(params: Params, dataset: Dataset, kind: str, per_cluster: bool, precision: str):
    arrays = sweep_arrays(tile_arrays(params, dataset.targets, kind), precision)
    n_slots = dataset.n_clusters if per_cluster else 1
    N, L, M = dataset.n_points, params.n_layers, params.width
    Mp, P = arrays[1].shape[1], arrays[5].shape[0]
    partial_bytes = 8 * n_slots * (1 + L * Mp * (Mp + 1) + P * (Mp + 1))
    chunk = require_partials_fit(N, partial_bytes, f"the gradient's partial sums ({n_slots} cluster slot(s) of "
                                                   f"{L} layers of width {M})")
    # one chunk: no parallel region
    parts = dataset.gradient_sums(arrays, kind == "output", n_slots, chunk)
    # Merge chunks in a fixed order, scale, drop the padding (the same code as the flow's
    # per-evaluation path, kernels.flow): the result does not depend on threads.
    sq, gw, gb, gow, gob = sum_chunks(*parts, N, M)
    if not per_cluster:
        sq, gw, gb, gow, gob = sq[0], gw[0], gb[0], gow[0], gob[0]
    out = (gow, gob) if kind == "output" else (None, None)
    return sq, Gradient(gw, gb, out[0], out[1], "cumulative")


def cost(params: Params, dataset: Dataset, kind: str = "input", *, per_cluster: bool = False,
         precision: str = "float64"):
    """The cost (MODEL.md section 4): ``1/(2N) sum_i |residual_i|^2``.

    ``kind="input"``: residual ``x~^(L)_i - y~_{c_i}`` with targets (Q, M);
    ``kind="output"``: residual ``F(x_i) - y_{c_i}`` with targets (Q, P).
    Returns a float, or (Q,) per-cluster costs summing to it when ``per_cluster``.
    (It runs the gradient pass: one streaming pass either way.) ``precision`` as for
    :func:`gradient`. Raises ValueError when the cost or its gradient overflows float64
    (see :func:`gradient`).
    """
    c, _ = gradient(params, dataset, kind, per_cluster=per_cluster, precision=precision)
    return c


def gradient(params: Params, dataset: Dataset, kind: str = "input", wrt: str = "cumulative",
             *, per_cluster: bool = False, precision: str = "float64"):
    """Cost and its exact generalized gradient (MODEL.md sections 5-7).

    Args:
        params, dataset: the network and the data.
        kind: "input" or "output" cost.
        wrt: "cumulative" for ``(dC/dW^(l), dC/db^(l))``, "layers" for ``(dC/dW_l, dC/db_l)``,
            or, for aligned params (:meth:`Params.aligned`), "aligned" for
            ``(dC/dlambda^(l), dC/db^(l))`` with ``dC/dlambda^(l) = diag(dC/dW^(l) R^(l)^T)``
            (MODEL.md section 9).
        per_cluster: split cost and gradient over the Q clusters (they sum to the totals).
        precision: "float64" (default: the exact contract) or "float32": the per-point sweep
            (truncation maps, kinks, residuals, backward products) in float32, the sums over
            points in float64 (on the CPU tile by tile, each tile of <= 256 points in
            float32). Where it runs follows the dataset: a CPU :class:`truncflow.Dataset`,
            or one moved to a GPU with ``dataset.to("cuda")``.
    Returns:
        ``(cost, grad)``: cost a float (or (Q,) array), grad a :class:`Gradient`; both finite.
    Raises:
        ValueError: bad arguments, or a cost or gradient that is not finite because the
            forward pass (or the gradient) overflowed float64: the message names what
            overflowed and the largest point and parameter magnitudes.
    """
    params = _require_params(params)
    choice(kind, "kind", COST_KINDS)
    choice(wrt, "wrt", PARAMETRIZATIONS)
    choice(precision, "precision", PRECISIONS)
    dataset = _require_dataset(dataset, params, kind, distributed=True)
    if wrt == "aligned" and not params.is_aligned:
        raise ValueError("wrt='aligned' needs aligned parameters: build them with Params.aligned")
    c, g = _run_gradient_kernel(params, dataset, kind, per_cluster, precision)
    require_finite_outputs(params, dataset.points, c, g)
    with np.errstate(over="ignore", invalid="ignore"):    # checked below
        if wrt == "aligned":
            g = Gradient(aligned_scale_gradient(params, g.weights), g.biases, g.out_weight, g.out_bias, "aligned")
        elif wrt == "layers":
            if per_cluster:
                parts = [cumulative_to_layer_gradient(params, g.cluster(q)) for q in range(dataset.n_clusters)]
                stack = lambda name: None if getattr(parts[0], name) is None else np.stack([getattr(p, name) for p in parts])
                g = Gradient(stack("weights"), stack("biases"), stack("out_weight"), stack("out_bias"), "layers")
            else:
                g = cumulative_to_layer_gradient(params, g)
    if wrt != "cumulative":
        require_finite_outputs(params, dataset.points, c, g, what=f"gradient in the {wrt} parametrization")
    if not per_cluster:
        c = float(c)
    return c, g


def aligned_scale_gradient(params: Params, weight_gradient: np.ndarray) -> np.ndarray:
    """``dC/dlambda^(l)_k = (dC/dW^(l) R^(l)^T)_kk`` from cumulative weight gradients (..., L, M, M)."""
    g = np.ascontiguousarray(weight_gradient, dtype=np.float64)
    lead = g.shape[:-3]
    flat = g.reshape((-1,) + g.shape[-3:])
    frames = np.ascontiguousarray(params.frames)
    return np.stack([scale_gradient(x, frames) for x in flat]).reshape(lead + g.shape[-3:-1])


def cumulative_to_layer_gradient(params: Params, grad: Gradient) -> Gradient:
    """Push a cumulative gradient through the parameter map (MODEL.md section 7), O(L M^3).

    Sweep l = L..1 with ``Gb = G^(L)``, ``Bb = B^(L)``:
    ``dC/dW_l = Gb W^(l-1)^T + Bb b^(l-1)^T``, ``dC/db_l = Bb``, then
    ``Gb <- G^(l-1) + W_l^T Gb``, ``Bb <- B^(l-1) + W_l^T Bb``.
    """
    # writable copies, as the flow's own calls pass them (one compiled specialization)
    gw, gb = layer_gradient(np.array(params.weights), np.array(params.cum_weights), np.array(params.cum_biases),
                            np.ascontiguousarray(grad.weights, dtype=np.float64),
                            np.ascontiguousarray(grad.biases, dtype=np.float64))
    return Gradient(gw, gb, grad.out_weight, grad.out_bias, "layers")
