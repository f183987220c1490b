"""JAX bridge: truncflow's cost as a differentiable JAX function (issue 25 item 3).

::

    import jax
    jax.config.update("jax_enable_x64", True)          # float64 in and out (else float32)
    import truncflow.jax as tfj

    c = tfj.cost(weights, biases, dataset)             # W^(l) (L, M, M), b^(l) (L, M): input cost
    g = jax.grad(tfj.cost, argnums=(0, 1))(weights, biases, dataset)
    step = jax.jit(lambda w, b: jax.value_and_grad(tfj.cost, (0, 1))(w, b, dataset))

The cost and its gradient are computed by truncflow (:class:`truncflow.Objective`, the
same bits as :func:`truncflow.gradient`) on the host, through ``jax.pure_callback``; a
custom VJP gives JAX the exact generalized gradient of MODEL.md section 5. It works
eagerly and under ``jax.jit``, ``jax.grad`` / ``jax.value_and_grad`` and ``jax.vmap``
(one host call per batch member), on the CPU; the dataset may be anywhere truncflow
puts it (here, a Dask cluster, a GPU: the callback runs on the host and calls it). The
dataset is a Python object, not traced: close over it (``jax.jit`` of a lambda) or pass
it as a static argument. Only first derivatives: the VJP is not itself differentiable.

The convention at the kink. truncflow uses ``sigma'(0) = 0`` (a point exactly on a
hyperplane counts as truncated). ``jax.nn.relu`` has the same convention: it is a
``custom_jvp`` whose derivative at 0 is 0 (checked with JAX 0.10.2:
``jax.grad(jax.nn.relu)(0.0) == 0.0``, and 1.0 at 1.0, 0.0 at -1.0), so a model written
with ``jax.nn.relu`` gets the same gradient as this bridge, points on hyperplanes
included. ``jnp.maximum(a, 0)`` does not: its derivative at a tie is 1/2.

Importing :mod:`truncflow` does not import JAX; this module does (``pip install
"truncflow[jax]"``).
"""
from __future__ import annotations

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:                     # pragma: no cover - exercised without jax only
    raise ImportError("truncflow.jax needs JAX: pip install \"truncflow[jax]\" (or pip install jax)") from e

from ._validate import choice
from .compute import COST_KINDS, PRECISIONS
from .objective import Objective
from .params import Params

__all__ = ["cost", "FORMS"]

#: What ``weights`` and ``biases`` are: cumulative ``W^(l), b^(l)`` or layer ``W_l, b_l``.
FORMS = ("cumulative", "layers")


def _shape_of(a, name: str) -> tuple[tuple, np.dtype]:
    shape = tuple(int(d) for d in np.shape(a))
    dtype = np.dtype(a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {dtype}")
    return shape, dtype


def _objective(shapes, dataset, kind: str, form: str, precision: str) -> Objective:
    """An Objective for these shapes (its initial params only fix the shapes: identity
    weights, zero biases, a zero output layer)."""
    (L, M, _), P = shapes[0], (shapes[2][0] if kind == "output" else None)
    eye = np.broadcast_to(np.eye(M), (L, M, M)).copy()
    out = (np.zeros((P, M)), np.zeros(P)) if kind == "output" else (None, None)
    make = Params.from_cumulative if form == "cumulative" else Params.from_layers
    return Objective(make(eye, np.zeros((L, M)), *out), dataset, kind=kind, wrt=form, precision=precision)


def cost(weights, biases, dataset, kind: str = "input", *, form: str = "cumulative", out_weight=None,
         out_bias=None, precision: str = "float64"):
    """The cost (MODEL.md section 4) as a JAX scalar, differentiable in every array argument.

    Args:
        weights: (L, M, M) array: cumulative weights ``W^(l)`` (``form="cumulative"``) or
            layer weights ``W_l`` (``form="layers"``).
        biases: (L, M) array: ``b^(l)`` or ``b_l``.
        dataset: a :class:`truncflow.Dataset` (or one on a Dask cluster or a GPU): static,
            not traced.
        kind: "input" (targets (Q, M)) or "output" (targets (Q, P): give ``out_weight``
            (P, M) and ``out_bias`` (P,), the ordinary output layer ``W_out``, ``b_out``).
        form: "cumulative" or "layers", what ``weights`` and ``biases`` are.
        out_weight, out_bias: the output layer, for ``kind="output"`` only.
        precision: "float64" or "float32", the arithmetic of truncflow's per-point sweep
            (:func:`truncflow.gradient`).
    Returns:
        A scalar JAX array of the dtype of ``weights`` (float64 with
        ``jax_enable_x64``; truncflow computes in float64 either way and rounds the result).
        Its VJP is the exact generalized gradient (``sigma'(0) = 0``).
    Raises:
        ValueError: at trace time, for shapes that do not fit each other or the dataset,
            a bad ``kind``, ``form`` or ``precision``, or a missing (or, for the input
            cost, unexpected) output layer. A network truncflow cannot evaluate (a singular
            or ill-conditioned cumulative weight, an overflow) raises in the host callback,
            which JAX reports as a runtime error carrying truncflow's message.
    """
    choice(kind, "kind", COST_KINDS)
    choice(form, "form", FORMS)
    choice(precision, "precision", PRECISIONS)
    leaves = [weights, biases]
    names = ["weights", "biases"]
    if kind == "output":
        if out_weight is None or out_bias is None:
            raise ValueError("kind='output' needs the output layer: give out_weight (P, M) and out_bias (P,)")
        leaves += [out_weight, out_bias]
        names += ["out_weight", "out_bias"]
    elif out_weight is not None or out_bias is not None:
        raise ValueError("out_weight and out_bias are for kind='output'; the input cost does not use them")
    described = [_shape_of(a, n) for a, n in zip(leaves, names)]
    shapes = [s for s, _ in described]
    w = shapes[0]
    if len(w) != 3 or w[1] != w[2]:
        raise ValueError(f"weights must have shape (L, M, M), got {w}")
    L, M = w[0], w[1]
    if shapes[1] != (L, M):
        raise ValueError(f"biases must have shape (L, M) = {(L, M)} to match weights {w}, got {shapes[1]}")
    if kind == "output":
        ow, ob = shapes[2], shapes[3]
        if len(ow) != 2 or ow[1] != M:
            raise ValueError(f"out_weight must have shape (P, {M}), got {ow}")
        if ob != (ow[0],):
            raise ValueError(f"out_bias must have shape ({ow[0]},) to match out_weight {ow}, got {ob}")
    objective = _objective(shapes, dataset, kind, form, precision)
    # what JAX makes of them (float64 becomes float32 unless jax_enable_x64)
    leaf_dtypes = tuple(np.dtype(jax.dtypes.canonicalize_dtype(d)) for _, d in described)
    return _bridge(objective, tuple(shapes), leaf_dtypes)(*leaves)


def _bridge(objective: Objective, shapes: tuple, leaf_dtypes: tuple):
    """The custom-VJP function of the leaves (weights, biases[, out_weight, out_bias]): the
    cost in their common dtype, each cotangent in its leaf's dtype."""
    dtype = jnp.result_type(*leaf_dtypes)
    sizes = [int(np.prod(s)) for s in shapes]
    bounds = np.cumsum([0] + sizes)
    scalar = jax.ShapeDtypeStruct((), dtype)
    grads = tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes)

    def vector(leaves) -> np.ndarray:
        x = np.empty(objective.size)
        for a, lo, hi in zip(leaves, bounds[:-1], bounds[1:]):
            x[lo:hi] = np.ravel(np.asarray(a, dtype=np.float64))
        return x

    def host_value(*leaves):
        return np.asarray(objective.value(vector(leaves)), dtype=dtype)

    def host_value_and_grad(*leaves):
        c, g = objective.value_and_grad(vector(leaves))
        return (np.asarray(c, dtype=dtype),
                tuple(g[lo:hi].reshape(s).astype(dtype) for lo, hi, s in zip(bounds[:-1], bounds[1:], shapes)))

    @jax.custom_vjp
    def f(*leaves):
        return jax.pure_callback(host_value, scalar, *leaves, vmap_method="sequential")

    def f_fwd(*leaves):
        c, g = jax.pure_callback(host_value_and_grad, (scalar, grads), *leaves, vmap_method="sequential")
        return c, g

    def f_bwd(g, ct):
        return tuple((ct * gi).astype(d) for gi, d in zip(g, leaf_dtypes))

    f.defvjp(f_fwd, f_bwd)
    return f
