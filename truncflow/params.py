"""Network parameters in layer and cumulative form (MODEL.md sections 2-3).

A :class:`Params` holds both forms at once, computed exactly from whichever was
given, together with the inverses ``A_l = (W^(l))^-1`` every kernel needs.
All arrays are float64 and read-only; a Params is immutable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_float_array, integer, require_finite, require_memory
from .kernels.network import aligned_weights, cumulative_from_layers, invert_stack, layers_from_cumulative

#: Most hidden layers a network may have. Building the parameters loops over the
#: layers (kernels/network.py); far beyond this a mistyped ``layers`` would hang
#: instead of failing.
MAX_LAYERS = 100_000

#: Copies of the (L, M, M) parameter stack alive at the peak of building and using a
#: network (both forms, inverses, private copies, the kernels' padded arrays).
_STACK_COPIES = 10

#: A cumulative weight matrix whose condition number (1-norm) exceeds this is
#: refused: beyond it the truncation map cannot be computed to useful accuracy.
MAX_CONDITION = 1e12

#: Largest ``max |R R^T - I|`` accepted for a frame of the aligned model.
ORTHOGONALITY_TOL = 1e-10

__all__ = ["Params", "MAX_CONDITION", "MAX_LAYERS", "ORTHOGONALITY_TOL", "invert_cumulative",
           "network_bytes", "check_network_size"]


def network_bytes(n_layers: int, width: int, out_dim: int = 0) -> int:
    """Estimated peak bytes of a network of L layers of width M (and P outputs): about
    ten float64 copies of the (L, M, M) stack and its biases, plus the output layer."""
    L, M, P = int(n_layers), int(width), int(out_dim or 0)
    return 8 * (_STACK_COPIES * L * M * (M + 1) + 4 * P * (M + 1))


def check_network_size(n_layers: int, width: int, out_dim: int = 0, *, name: str = "n_layers") -> None:
    """Refuse, before allocating, more than :data:`MAX_LAYERS` layers or a network that
    does not fit in the memory available (:func:`network_bytes`). ``name`` is the
    argument or key that set the number of layers, for the message."""
    if n_layers > MAX_LAYERS:
        raise ValueError(f"{name} = {n_layers} is too many layers: at most {MAX_LAYERS}")
    out = f" and P={out_dim} outputs" if out_dim else ""
    require_memory(network_bytes(n_layers, width, out_dim),
                   f"{name} = {n_layers}: a network of {n_layers} layers of width M={width}{out}")


def invert_cumulative(cum_weights: np.ndarray) -> np.ndarray:
    """Inverses ``(W^(l))^-1`` (L, M, M), refusing a singular or ill-conditioned layer.

    The condition number is measured in the 1-norm, ``|W|_1 |W^-1|_1`` (within a
    factor M of the 2-norm one), from the inverse that is needed anyway. The inverses
    come from :func:`truncflow.kernels.network.invert_stack` (LU with partial pivoting),
    the same code as the flow's per-evaluation path.
    """
    inverses, cond = invert_stack(np.array(cum_weights, dtype=np.float64, order="C"))     # writable: see _check_stack
    bad = ~(cond <= MAX_CONDITION)
    if bad.any():
        layer = int(np.argmax(bad)) + 1
        c = cond[layer - 1]
        what = "singular" if not np.isfinite(c) else "numerically singular"
        raise ValueError(
            f"cumulative weight matrix W^({layer}) of layer {layer} is {what} "
            f"(condition number {c:.3g} > {MAX_CONDITION:.0e})"
        )
    return inverses


def _readonly(a: np.ndarray | None) -> np.ndarray | None:
    """A private read-only float64 copy: the caller's arrays are neither frozen nor shared."""
    if a is not None:
        a = np.array(a, dtype=np.float64, order="C", copy=True)
        a.setflags(write=False)
    return a


def _check_output(out_weight, out_bias, width):
    if (out_weight is None) != (out_bias is None):
        raise ValueError("out_weight and out_bias must be given together (or neither)")
    if out_weight is None:
        return None, None
    out_weight = as_float_array(out_weight, "out_weight", ndim=2)
    out_bias = as_float_array(out_bias, "out_bias", ndim=1)
    if out_weight.shape[1] != width:
        raise ValueError(
            f"out_weight has shape {out_weight.shape}, expected (P, {width}) to match the layer width M={width}"
        )
    if out_bias.shape[0] != out_weight.shape[0]:
        raise ValueError(
            f"out_bias has shape {out_bias.shape}, expected ({out_weight.shape[0]},) to match out_weight"
        )
    require_finite(out_weight, "out_weight")
    require_finite(out_bias, "out_bias")
    return out_weight, out_bias


def _check_stack(weights, biases, wname, bname):
    weights = as_float_array(weights, wname, ndim=3)
    biases = as_float_array(biases, bname, ndim=2)
    L, M, M2 = weights.shape
    if L == 0 or M == 0:
        raise ValueError(f"{wname} has shape {weights.shape}: need at least one layer of width >= 1")
    if M != M2:
        raise ValueError(f"{wname} has shape {weights.shape}: each layer's matrix must be square (L, M, M)")
    check_network_size(L, M, name=f"{wname}.shape[0]")
    if biases.shape != (L, M):
        raise ValueError(f"{bname} has shape {biases.shape}, expected {(L, M)} to match {wname} {weights.shape}")
    require_finite(weights, wname)
    require_finite(biases, bname)
    # Private writable copies: the kernels then see the array types the flow passes them
    # (a read-only argument would compile every kernel a second time).
    return np.array(weights, order="C"), np.array(biases, order="C")


@dataclass(frozen=True, eq=False)
class Params:
    """Parameters of an L-layer ReLU network of width M, in both forms.

    Attributes (all float64, read-only):
        weights      (L, M, M)  layer weights ``W_l``
        biases       (L, M)     layer biases ``b_l``
        cum_weights  (L, M, M)  cumulative weights ``W^(l) = W_l W^(l-1)``
        cum_biases   (L, M)     cumulative biases ``b^(l) = W_l b^(l-1) + b_l``
        inverses     (L, M, M)  ``A_l = (W^(l))^-1``
        out_weight   (P, M) or None   ordinary output layer ``W_out``
        out_bias     (P,) or None     ordinary output bias ``b_out``
        frames       (L, M, M) or None   the fixed orthogonal frames ``R^(l)`` of the
                     aligned model (MODEL.md section 9), ``W^(l) = diag(lambda^(l)) R^(l)``;
                     None for a general network. Aligned params also have
                     :attr:`scales` and :attr:`thresholds`.

    Build with :meth:`from_layers`, :meth:`from_cumulative` or :meth:`aligned`.
    """

    weights: np.ndarray
    biases: np.ndarray
    cum_weights: np.ndarray
    cum_biases: np.ndarray
    inverses: np.ndarray
    out_weight: np.ndarray | None = None
    out_bias: np.ndarray | None = None
    frames: np.ndarray | None = None

    def __post_init__(self):
        L, M = self.cum_biases.shape if np.ndim(self.cum_biases) == 2 else (0, 0)
        shapes = {"weights": (L, M, M), "biases": (L, M), "cum_weights": (L, M, M),
                  "cum_biases": (L, M), "inverses": (L, M, M)}
        for name, shape in shapes.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != np.float64 or L * M == 0:
                raise ValueError(f"Params.{name} must be a float64 array of shape {shape}: build Params "
                                 "with Params.from_layers or Params.from_cumulative")
        if (self.out_weight is None) != (self.out_bias is None) or (
                self.out_weight is not None and (self.out_weight.ndim != 2 or self.out_weight.shape[1] != M
                                                 or self.out_bias.shape != (self.out_weight.shape[0],))):
            raise ValueError("Params.out_weight (P, M) and out_bias (P,) must be given together with matching shapes")
        if self.frames is not None and (not isinstance(self.frames, np.ndarray) or self.frames.shape != (L, M, M)):
            raise ValueError(f"Params.frames must be None or an array of shape {(L, M, M)}: build aligned "
                             "parameters with Params.aligned")

    def __setstate__(self, state):
        # Read-only again after pickling (another process's kernels see the same array types).
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------- constructors
    @classmethod
    def from_layers(cls, weights, biases, out_weight=None, out_bias=None) -> "Params":
        """From layer weights ``(L, M, M)`` and biases ``(L, M)`` (MODEL.md section 2)."""
        weights, biases = _check_stack(weights, biases, "weights", "biases")
        out_weight, out_bias = _check_output(out_weight, out_bias, weights.shape[1])
        with np.errstate(over="ignore", invalid="ignore"):
            cum_w, cum_b = cumulative_from_layers(weights, biases)
        require_finite(cum_w, "cumulative weights (overflow in the product of layer weights)")
        require_finite(cum_b, "cumulative biases (overflow in W_l b^(l-1) + b_l)")
        inverses = invert_cumulative(cum_w)
        return cls._build(weights, biases, cum_w, cum_b, out_weight, out_bias, inverses)

    @classmethod
    def from_cumulative(cls, cum_weights, cum_biases, out_weight=None, out_bias=None) -> "Params":
        """From cumulative weights ``(L, M, M)`` and biases ``(L, M)`` (MODEL.md section 2)."""
        cum_w, cum_b = _check_stack(cum_weights, cum_biases, "cum_weights", "cum_biases")
        out_weight, out_bias = _check_output(out_weight, out_bias, cum_w.shape[1])
        inverses = invert_cumulative(cum_w)
        weights, biases = layers_from_cumulative(cum_w, cum_b, inverses)
        require_finite(weights, "layer weights W_l = W^(l) (W^(l-1))^-1 (overflow: consecutive cumulative "
                                "weights differ too much in scale)")
        require_finite(biases, "layer biases b_l = b^(l) - W_l b^(l-1) (overflow)")
        return cls._build(weights, biases, cum_w, cum_b, out_weight, out_bias, inverses)

    @classmethod
    def aligned(cls, frames, scales, biases, out_weight=None, out_bias=None) -> "Params":
        """The aligned model of MODEL.md section 9: ``W^(l) = diag(scales[l]) frames[l]``.

        Args:
            frames: (L, M, M) orthogonal matrices ``R^(l)`` (refused unless
                ``max |R R^T - I| <= ORTHOGONALITY_TOL``).
            scales: (L, M) positive ``lambda^(l)``.
            biases: (L, M) cumulative biases ``b^(l)``.
            out_weight, out_bias: optional output layer (P, M), (P,).
        In the rotated coordinates ``w = R^(l) z`` layer l clips from below at the
        thresholds ``t^(l) = -b^(l) / lambda^(l)``; its apex is ``R^(l)^T t^(l)``.
        """
        frames = as_float_array(frames, "frames", ndim=3)
        scales = as_float_array(scales, "scales", ndim=2)
        biases = as_float_array(biases, "biases", ndim=2)
        L, M, M2 = frames.shape
        if L == 0 or M == 0 or M != M2:
            raise ValueError(f"frames has shape {frames.shape}, expected (L, M, M) with L, M >= 1")
        for name, a in (("scales", scales), ("biases", biases)):
            if a.shape != (L, M):
                raise ValueError(f"{name} has shape {a.shape}, expected {(L, M)} to match frames {frames.shape}")
            require_finite(a, name)
        require_finite(frames, "frames")
        if not np.all(scales > 0):
            l, k = (int(i) for i in np.argwhere(~(scales > 0))[0])
            raise ValueError(f"scales must be positive: scales[{l}, {k}] = {float(scales[l, k])!r} (layer {l + 1})")
        with np.errstate(over="ignore", invalid="ignore"):
            defect = np.abs(frames @ np.swapaxes(frames, 1, 2) - np.eye(M)).max(axis=(1, 2))
            cum_w = aligned_weights(np.array(frames, order="C"), np.array(scales, order="C"))
        if not np.all(defect <= ORTHOGONALITY_TOL):
            l = int(np.argmax(defect))
            raise ValueError(f"frames[{l}] (layer {l + 1}) is not orthogonal: max |R R^T - I| = {defect[l]:.3g} "
                             f"> {ORTHOGONALITY_TOL:g}")
        params = cls.from_cumulative(cum_w, biases, out_weight, out_bias)
        return cls._build(params.weights, params.biases, params.cum_weights, params.cum_biases,
                          params.out_weight, params.out_bias, params.inverses, frames)

    @classmethod
    def _build(cls, weights, biases, cum_w, cum_b, out_weight, out_bias, inverses=None, frames=None) -> "Params":
        # Without inverses (a recorded state read back by Result.params_at), the matrices
        # were already accepted once by invert_cumulative when the run made them.
        if inverses is None:
            inverses = invert_stack(np.array(cum_w, dtype=np.float64, order="C"))[0]
        return cls(
            weights=_readonly(weights),
            biases=_readonly(biases),
            cum_weights=_readonly(cum_w),
            cum_biases=_readonly(cum_b),
            inverses=_readonly(inverses),
            out_weight=_readonly(out_weight),
            out_bias=_readonly(out_bias),
            frames=_readonly(frames),
        )

    @classmethod
    def _adopt(cls, weights, biases, cum_w, cum_b, out_weight, out_bias, inverses, frames=None) -> "Params":
        """Params from arrays the caller made for it alone and already checked (a flow's state,
        ``FlowProblem.unpack``): kept, not copied, and made read-only; the output layer and
        frames (shared with the initial parameters, already read-only) are kept as they are."""
        for a in (weights, biases, cum_w, cum_b, inverses):
            a.setflags(write=False)
        p = object.__new__(cls)
        for name, value in (("weights", weights), ("biases", biases), ("cum_weights", cum_w),
                            ("cum_biases", cum_b), ("inverses", inverses), ("out_weight", out_weight),
                            ("out_bias", out_bias), ("frames", frames)):
            object.__setattr__(p, name, value)
        return p

    @classmethod
    def random(cls, n_layers: int, width: int, *, scale: float = 1.0, bias_scale: float = 0.1,
               out_dim: int | None = None, seed: int | None = None) -> "Params":
        """Random layer parameters: ``W_l = I + scale * G / sqrt(M)`` with G standard normal,
        ``b_l ~ N(0, bias_scale^2)``; an output layer of ``out_dim`` rows when given.

        ``n_layers`` in ``[1, MAX_LAYERS]`` and ``width``, ``out_dim`` >= 1 are integers;
        a network that does not fit in the memory available is refused before anything
        is allocated (:func:`check_network_size`); ``scale``, ``bias_scale`` are finite
        numbers >= 0.
        """
        n_layers = integer(n_layers, "n_layers", low=1)
        M = integer(width, "width", low=1)
        if out_dim is not None:
            out_dim = integer(out_dim, "out_dim", low=1)
        for name, value in (("scale", scale), ("bias_scale", bias_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        check_network_size(n_layers, M, out_dim or 0)
        rng = np.random.default_rng(seed)
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.eye(M) + scale * rng.standard_normal((n_layers, M, M)) / np.sqrt(M)
            b = bias_scale * rng.standard_normal((n_layers, M))
        ow = ob = None
        if out_dim is not None:
            ow = rng.standard_normal((out_dim, M)) / np.sqrt(M)
            ob = np.zeros(out_dim)
        return cls.from_layers(w, b, ow, ob)

    # ------------------------------------------------------------ properties
    @property
    def n_layers(self) -> int:
        """L, the number of hidden layers."""
        return self.weights.shape[0]

    @property
    def width(self) -> int:
        """M, the width of every hidden layer (and the input dimension)."""
        return self.weights.shape[1]

    @property
    def out_dim(self) -> int | None:
        """P, the output dimension, or None without an output layer."""
        return None if self.out_weight is None else self.out_weight.shape[0]

    @property
    def has_output(self) -> bool:
        return self.out_weight is not None

    @property
    def is_aligned(self) -> bool:
        """True for parameters of the aligned model (built with :meth:`aligned`)."""
        return self.frames is not None

    def _require_aligned(self, what: str):
        if self.frames is None:
            raise AttributeError(f"{what} exist only for aligned parameters: build them with Params.aligned")

    @property
    def scales(self) -> np.ndarray:
        """(L, M) ``lambda^(l)`` of aligned parameters, ``W^(l) = diag(lambda^(l)) R^(l)``."""
        self._require_aligned("scales")
        return np.einsum("lkj,lkj->lk", self.cum_weights, self.frames)

    @property
    def thresholds(self) -> np.ndarray:
        """(L, M) ``t^(l) = -b^(l) / lambda^(l)`` of aligned parameters: in the coordinates
        ``w = R^(l) z`` layer l maps w to ``max(w, t^(l))``."""
        self._require_aligned("thresholds")
        return -self.cum_biases / self.scales

    def cones(self) -> tuple[np.ndarray, np.ndarray]:
        """Cones of the truncation maps (MODEL.md section 3).

        Returns:
            apexes (L, M): ``p^(l) = -(W^(l))^-1 b^(l)``
            edges  (L, M, M): ``edges[l, :, k] = v_k^(l)``, the columns of ``(W^(l))^-1``
        """
        apexes = -np.einsum("lij,lj->li", self.inverses, self.cum_biases)
        return apexes, self.inverses.copy()

    def with_output(self, out_weight, out_bias) -> "Params":
        """The same hidden layers with another output layer (None to drop it)."""
        if self.frames is not None:
            return Params.aligned(self.frames, self.scales, self.cum_biases, out_weight, out_bias)
        return Params.from_cumulative(self.cum_weights, self.cum_biases, out_weight, out_bias)

    def __repr__(self) -> str:
        out = "" if self.out_weight is None else f", P={self.out_dim}"
        aligned = ", aligned" if self.frames is not None else ""
        return f"Params(L={self.n_layers}, M={self.width}{out}{aligned})"
