"""The flow's right-hand side: parameters <-> flat state vector, parametrizations, frozen parts.

The state vector of a flow holds, in this order, the weights (L*M*M), the biases
(L*M) and, for the output cost, the output weight (P*M) and bias (P) of the chosen
parametrization ("cumulative": W^(l), b^(l); "layers": W_l, b_l; "aligned": the
scales lambda^(l) (L*M) and biases b^(l) of W^(l) = diag(lambda^(l)) R^(l), frames
fixed). Frozen components stay in the vector with a zero derivative.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .._validate import choice, integer
from ..compute import (COST_KINDS, PARAMETRIZATIONS, PRECISIONS, Gradient, _require_dataset, _require_params,
                       gradient, padded_width, require_partials_fit, sweep_arrays)
from ..data import Dataset
from ..kernels import flow
from ..params import MAX_CONDITION, Params

TRAIN_OPTIONS = ("all", "weights", "biases")

#: The frames argument of the flow kernels for a run that has none: read-only like Params'
#: frames, so the compiled rk45 chain is one specialization for both.
_NO_FRAMES = np.zeros((1, 1, 1))
_NO_FRAMES.setflags(write=False)

__all__ = ["FlowProblem", "TRAIN_OPTIONS"]


@dataclass
class FlowProblem:
    """``dy/ds = -mask * grad C(y)`` for one dataset, cost and parametrization.

    Args:
        params: the initial parameters (fixes L, M and whether there is an output layer).
        dataset: the data.
        kind: "input" or "output" cost.
        wrt: "cumulative", "layers" or "aligned" (aligned params only): the parameters that flow.
        train: "all", "weights" or "biases": which of them move (output layer included);
            for "aligned", "weights" means the scales lambda.
        frozen_layers: 1-based indices of hidden layers whose weights and biases stay fixed.
        precision: "float64" or "float32", the arithmetic of the per-point sweep
            (:func:`truncflow.gradient`); the state, its derivative and the stepper stay float64.
    """

    params: Params
    dataset: Dataset
    kind: str = "input"
    wrt: str = "cumulative"
    train: str = "all"
    frozen_layers: tuple = ()
    precision: str = "float64"

    def __post_init__(self):
        self.params = _require_params(self.params)
        choice(self.kind, "kind", COST_KINDS)
        choice(self.precision, "precision", PRECISIONS)
        choice(self.wrt, "wrt", PARAMETRIZATIONS)
        choice(self.train, "train", TRAIN_OPTIONS)
        self.dataset = _require_dataset(self.dataset, self.params, self.kind, distributed=True)
        if self.wrt == "aligned" and not self.params.is_aligned:
            raise ValueError("wrt='aligned' needs aligned parameters: build them with Params.aligned")
        L, M = self.params.n_layers, self.params.width
        P = self.params.out_dim if self.kind == "output" else 0
        frozen = []
        for layer in self.frozen_layers:
            frozen.append(integer(layer, "each of frozen_layers (a layer number)", low=1, high=L))
        self.frozen_layers = tuple(sorted(set(frozen)))
        w_shape = (L, M) if self.wrt == "aligned" else (L, M, M)
        self._shapes = [w_shape, (L, M), (P, M), (P,)]
        sizes = [int(np.prod(s)) for s in self._shapes]
        self._offsets = np.cumsum([0] + sizes)
        w_mask = np.full(w_shape, self.train in ("all", "weights"))
        b_mask = np.full((L, M), self.train in ("all", "biases"))
        for layer in self.frozen_layers:
            w_mask[layer - 1] = False
            b_mask[layer - 1] = False
        ow_mask = np.full((P, M), self.train in ("all", "weights"))
        ob_mask = np.full(P, self.train in ("all", "biases"))
        self.mask = np.concatenate([m.ravel() for m in (w_mask, b_mask, ow_mask, ob_mask)]).astype(np.float64)
        if not self.mask.any():
            raise ValueError("nothing to train: every parameter is frozen (check train and frozen_layers)")
        self.n_evaluations = 0
        self._prepare_fast_path()

    def _prepare_fast_path(self):
        """The arguments of the per-evaluation kernels (``kernels.flow``), fixed for the whole flow."""
        p, ds = self.params, self.dataset
        L, M = p.n_layers, p.width
        P = p.out_dim if self.kind == "output" else 0
        Mp = padded_width(M)
        if self.kind == "output":
            targets = np.array(ds.targets)
        else:                                   # as compute.tile_arrays pads them
            targets = np.zeros((ds.targets.shape[0], Mp))
            targets[:, :M] = ds.targets
        mode = {"cumulative": flow.MODE_CUMULATIVE, "layers": flow.MODE_LAYERS,
                "aligned": flow.MODE_ALIGNED}[self.wrt]
        frames = p.frames if self.wrt == "aligned" else _NO_FRAMES    # read-only, as Params' frames
        partial_bytes = 8 * (1 + L * Mp * (Mp + 1) + P * (Mp + 1))
        self._chunk = require_partials_fit(ds.n_points, partial_bytes, f"the gradient's partial sums ({L} layers "
                                                                       f"of width {M})")
        self._network_args = (mode, L, M, P, frames, MAX_CONDITION, Mp)
        #: the targets in the sweep's dtype, cast once (the parameters are cast per evaluation)
        self._targets = sweep_arrays((targets,), self.precision)[0]
        #: True when the points fit one chunk (and are here, not on a Dask cluster or a GPU,
        #: and the sweep is float64): an
        #: evaluation is one compiled call without a parallel region
        #: (``kernels.flow.evaluate_serial``) and gradient descent can run its steps in
        #: compiled code (``kernels.descent``).
        self.serial = ds.capabilities.serial_steps and ds.n_points <= self._chunk and self.precision == "float64"
        #: the arguments of ``kernels.flow.evaluate_serial`` after the state (None unless serial)
        self.serial_args = (*self._network_args, ds.points, ds.labels, targets, self.mask, self.kind == "output",
                            self._chunk) if self.serial else None

    def with_params(self, params: Params) -> "FlowProblem":
        """The same problem (dataset, cost, parametrization, mask) from other initial parameters
        of the same shape: an ensemble's members, without checking the rest again."""
        params = _require_params(params)
        p = self.params
        if (params.n_layers, params.width, params.out_dim, params.is_aligned) != (
                p.n_layers, p.width, p.out_dim, p.is_aligned):
            raise ValueError(f"params {params!r} do not have the shape of {p!r}")
        other = copy.copy(self)
        other.params, other.n_evaluations = params, 0
        if self.wrt == "aligned":       # the frames are the member's own
            frames = params.frames
            other._network_args = (*self._network_args[:4], frames, *self._network_args[5:])
            if self.serial:
                other.serial_args = (*other._network_args, *self.serial_args[len(self._network_args):])
        return other

    @property
    def size(self) -> int:
        return int(self._offsets[-1])

    def pack(self, params: Params) -> np.ndarray:
        """Flat state vector of ``params`` in this problem's parametrization."""
        if self.wrt == "cumulative":
            parts = [params.cum_weights, params.cum_biases]
        elif self.wrt == "aligned":
            parts = [params.scales, params.cum_biases]
        else:
            parts = [params.weights, params.biases]
        if self.kind == "output":
            parts += [params.out_weight, params.out_bias]
        return np.concatenate([np.ravel(p) for p in parts])

    def _split(self, y: np.ndarray) -> list[np.ndarray]:
        return [y[a:b].reshape(s) for a, b, s in zip(self._offsets[:-1], self._offsets[1:], self._shapes)]

    def unpack(self, y: np.ndarray) -> Params:
        """Params from a state vector (the output layer of the initial params when it does not flow).

        Raises ValueError when a cumulative weight matrix is singular or ill-conditioned.
        """
        mode, L, M, _, frames = self._network_args[:5]
        lw, lb, cw, cb, inv, cond, valid = flow.network_of_state(np.ascontiguousarray(y, dtype=np.float64),
                                                                 mode, L, M, frames)
        w, b, ow, ob = self._split(y)
        if valid and np.isfinite(y).all() and (cond <= MAX_CONDITION).all():
            # what Params' constructors compute (the same kernels.network maps, on fresh arrays),
            # without their checks and messages, which the path below gives for a state they refuse
            if self.kind == "output":
                ow, ob = np.array(ow), np.array(ob)
                ow.setflags(write=False)
                ob.setflags(write=False)
            else:
                ow, ob = self.params.out_weight, self.params.out_bias
            return Params._adopt(lw, lb, cw, cb, ow, ob, inv, self.params.frames if self.wrt == "aligned" else None)
        if self.kind != "output":
            ow, ob = self.params.out_weight, self.params.out_bias
        if self.wrt == "cumulative":
            return Params.from_cumulative(w, b, ow, ob)
        if self.wrt == "aligned":
            return Params.aligned(self.params.frames, w, b, ow, ob)
        return Params.from_layers(w, b, ow, ob)

    def gradient_vector(self, grad: Gradient) -> np.ndarray:
        """Masked flat gradient of a (total) :class:`Gradient`."""
        parts = [grad.weights, grad.biases]
        if self.kind == "output":
            parts += [grad.out_weight, grad.out_bias]
        return np.concatenate([np.ravel(p) for p in parts]) * self.mask

    def evaluate(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Cost and masked gradient vector at state y (one streaming pass over the points).

        Bit-identical to ``gradient(self.unpack(y), ...)`` (the same kernels), without
        building a :class:`Params`: one compiled call when the points fit one chunk. A state
        that cannot be evaluated is evaluated again the public way, which raises ValueError
        naming the problem (a singular cumulative weight, an overflow).
        """
        c, g, _ = self.evaluate_with_norm(y)
        return c, g

    def evaluate_with_norm(self, y: np.ndarray) -> tuple[float, np.ndarray, float]:
        """(cost, masked gradient vector, its Euclidean norm) at state y; see :meth:`evaluate`."""
        self.n_evaluations += 1
        if type(y) is not np.ndarray or y.dtype != np.float64 or not y.flags.c_contiguous:
            y = np.ascontiguousarray(y, dtype=np.float64)
        if self.serial:
            status, c, g, gn = flow.evaluate_serial(y, *self.serial_args)
        else:
            mode, frames = self._network_args[0], self._network_args[4]
            status, w, cw, cb, *arrays = flow.prepare(y, *self._network_args)
            if status == flow.STATUS_OK:
                swept = (self._targets, *sweep_arrays(tuple(arrays), self.precision))
                parts = self.dataset.gradient_sums(swept, self.kind == "output", 1, self._chunk)
                status, c, g, gn = flow.finish(*parts, self.dataset.n_points, mode, w, cw, cb, frames, self.mask)
        if status != flow.STATUS_OK:
            c, grad = gradient(self.unpack(y), self.dataset, self.kind, self.wrt, precision=self.precision)
            g = self.gradient_vector(grad)      # (reached only if the public way does not raise)
            gn = float(np.sqrt(g @ g))
        return c, g, gn
