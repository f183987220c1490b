"""A flat-vector objective: the cost and its exact gradient as ``f(x) -> (float, ndarray)``.

For optimizers that work on one float64 vector (``scipy.optimize.minimize(...,
jac=True)``, a hand-written L-BFGS, a torch or JAX bridge)::

    obj = truncflow.Objective(params, dataset, kind="input", wrt="cumulative")
    x0 = obj.pack(params)                       # (obj.size,) float64
    res = scipy.optimize.minimize(obj.value_and_grad, x0, jac=True, method="L-BFGS-B")
    best = obj.unpack(res.x)                    # a truncflow.Params

It is a thin layer over the flow's right-hand side (:class:`truncflow.engine.rhs.FlowProblem`):
the same vector layout (the weights (L*M*M), the biases (L*M) and, for the output cost,
the output weight (P*M) and bias (P) of the parametrization ``wrt``), the same
evaluation (one compiled call for a problem whose points fit one chunk, else
prepare / pass over the points / finish) and therefore the same bits as
:func:`truncflow.gradient` at ``objective.unpack(x)``. Parts that ``train`` freezes
stay in the vector with gradient entries exactly 0. The gradient is the generalized
gradient of MODEL.md section 5 (``sigma'(0) = 0``).

Thread safety. ``value`` and ``value_and_grad`` may be called from several threads
at once and give the same bits as serial calls:

- points here (a :class:`truncflow.Dataset`), all in one chunk, float64 sweep
  (``FlowProblem.serial``): no lock. Each call is one compiled call that releases the
  GIL and builds its own workspace (``kernels.flow.evaluate_serial``); nothing the
  call writes is shared, so threads really run at once.
- otherwise (points over several chunks: a parallel pass on Numba's thread pool; a
  Dask cluster; a GPU, whose :class:`truncflow.DeviceDataset` keeps its scratch
  buffers from pass to pass; or the float32 sweep): one process-wide lock, so one
  such evaluation runs at a time. Each already uses every core, the cluster or the
  GPU, so the lock costs no throughput, and it protects the state the dataset keeps
  between passes (and Numba's thread pool) against concurrent use by objectives. (It
  does not cover other truncflow calls made on the same GPU dataset from another thread
  at the same moment.)

The only per-call state of the :class:`FlowProblem` is its evaluation counter, which
this class does not read.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from ._validate import choice
from .compute import COST_KINDS, PARAMETRIZATIONS, PRECISIONS, _require_params
from .engine.rhs import TRAIN_OPTIONS, FlowProblem
from .kernels.config import JIT_OPTIONS
from .params import Params

__all__ = ["Objective"]

#: Held during an evaluation that is not one self-contained compiled call (see the module docstring).
_SHARED_PASS_LOCK = threading.Lock()


@njit(**JIT_OPTIONS)
def _all_finite(x):
    """True when every entry of the 1-D array x is finite (no temporary, no warning, ~0.2 us)."""
    for v in x:
        if not np.isfinite(v):
            return False
    return True


class Objective:
    """The cost of a network on a dataset as a function of one float64 vector.

    Args:
        params: initial :class:`truncflow.Params`; they fix the shapes (L, M and, for
            the output cost, P) and, when the output layer does not train (input cost),
            nothing else. Kept as :attr:`params`.
        dataset: a :class:`truncflow.Dataset`, or one on a Dask cluster
            (:func:`truncflow.distribute`) or a GPU (``dataset.to("cuda")``).
        kind: "input" or "output" cost (MODEL.md section 4).
        wrt: "cumulative" (``W^(l), b^(l)``), "layers" (``W_l, b_l``) or, for aligned
            params, "aligned" (scales ``lambda^(l)`` and ``b^(l)``): what the vector holds.
        train: "all", "weights" or "biases": the parts whose gradient entries are not
            zero (the output layer's included); the frozen parts keep their entries, with
            gradient exactly 0.
        precision: "float64" (the exact contract) or "float32": the arithmetic of the
            per-point sweep, as for :func:`truncflow.gradient`; the vector and the
            gradient are float64 either way.

    Attributes:
        size: length of the vector.
        params, dataset, kind, wrt, train, precision: as given.

    Raises ValueError for bad arguments (as :func:`truncflow.gradient`).
    """

    def __init__(self, params: Params, dataset, kind: str = "input", wrt: str = "cumulative",
                 train: str = "all", precision: str = "float64"):
        params = _require_params(params)
        choice(kind, "kind", COST_KINDS)
        choice(wrt, "wrt", PARAMETRIZATIONS)
        choice(train, "train", TRAIN_OPTIONS)
        choice(precision, "precision", PRECISIONS)
        self._problem = FlowProblem(params, dataset, kind=kind, wrt=wrt, train=train, precision=precision)
        self.params = self._problem.params
        self.dataset = self._problem.dataset
        self.kind, self.wrt, self.train, self.precision = kind, wrt, train, precision
        self.size = self._problem.size
        #: True when an evaluation runs without the lock (see the module docstring).
        self.lock_free = bool(self._problem.serial)

    def __repr__(self) -> str:
        p = self.params
        return (f"Objective(L={p.n_layers}, M={p.width}, kind={self.kind!r}, wrt={self.wrt!r}, "
                f"train={self.train!r}, precision={self.precision!r}, size={self.size}, "
                f"N={self.dataset.n_points})")

    # ------------------------------------------------------------ vector <-> Params
    def pack(self, params: Params) -> np.ndarray:
        """The vector (size,) float64 of ``params`` (a fresh array), in the layout of ``wrt``.

        Raises ValueError when ``params`` do not have the shapes of :attr:`params` (or, for
        the output cost, have no output layer; for ``wrt="aligned"``, are not aligned).
        """
        params = _require_params(params)
        p = self.params
        if (params.n_layers, params.width) != (p.n_layers, p.width):
            raise ValueError(f"params have L={params.n_layers} layers of width M={params.width}; this objective "
                             f"needs L={p.n_layers}, M={p.width}")
        if self.kind == "output" and params.out_dim != p.out_dim:
            raise ValueError(f"params have output dimension {params.out_dim}; this objective (output cost) "
                             f"needs an output layer of dimension P={p.out_dim}")
        if self.wrt == "aligned" and not params.is_aligned:
            raise ValueError("wrt='aligned' needs aligned parameters: build them with Params.aligned")
        return np.ascontiguousarray(self._problem.pack(params), dtype=np.float64)

    def unpack(self, x) -> Params:
        """The :class:`truncflow.Params` of vector ``x`` (the output layer of :attr:`params`
        for the input cost). Raises ValueError for a bad ``x`` or a singular or
        ill-conditioned cumulative weight."""
        return self._problem.unpack(self._vector(x))

    # ------------------------------------------------------------------- evaluations
    def value(self, x) -> float:
        """The cost at ``x`` (one pass over the points, the same as :meth:`value_and_grad`'s)."""
        return self._evaluate(self._vector(x))[0]

    def value_and_grad(self, x, out: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """``(cost, gradient)`` at ``x``: the gradient a (size,) float64 vector.

        Args:
            x: (size,) real array, finite.
            out: None (the gradient is a new array), or a (size,) float64 C-contiguous
                writable NumPy array that receives the gradient and is returned; nothing
                is allocated here beyond what the kernel allocates. ``out`` may be ``x``.
        Raises:
            ValueError: bad ``x`` or ``out``; a state whose network cannot be evaluated
                (singular cumulative weight) or whose cost overflows (the message names it).
        """
        if out is not None:
            self._check_out(out)
        c, g = self._evaluate(self._vector(x))
        if out is None:
            return c, g
        out[...] = g
        return c, out

    __call__ = value_and_grad

    def _evaluate(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self.lock_free:
            c, g = self._problem.evaluate(x)
        else:
            with _SHARED_PASS_LOCK:
                c, g = self._problem.evaluate(x)
        return float(c), g

    # ------------------------------------------------------------------------ checks
    def _vector(self, x) -> np.ndarray:
        """``x`` as a (size,) float64 C-contiguous array (itself when it already is one)."""
        if type(x) is not np.ndarray or x.dtype != np.float64 or not x.flags.c_contiguous:
            arr = np.asarray(x)
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"x must be a real (float or integer) vector, got dtype {arr.dtype}")
            x = np.ascontiguousarray(arr, dtype=np.float64)
        if x.shape != (self.size,):
            raise ValueError(f"x must have shape ({self.size},) (this objective's size), got {x.shape}")
        if not _all_finite(x):
            bad = np.flatnonzero(~np.isfinite(x))
            raise ValueError(f"x must be finite: {bad.size} entr{'y is' if bad.size == 1 else 'ies are'} not "
                             f"(first at index {bad[0]}: {x[bad[0]]})")
        return x

    def _check_out(self, out) -> None:
        if not isinstance(out, np.ndarray):
            raise ValueError(f"out must be a NumPy array of shape ({self.size},) float64, got {type(out).__name__}")
        if out.dtype != np.float64:
            raise ValueError(f"out must have dtype float64, got {out.dtype}")
        if out.shape != (self.size,):
            raise ValueError(f"out must have shape ({self.size},) (this objective's size), got {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous (e.g. np.empty(objective.size))")
        if not out.flags.writeable:
            raise ValueError("out must be writable")
