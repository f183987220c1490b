"""What every backend is: named operations, a capability declaration, one error for what it lacks.

A *backend* is where the points of a dataset live and where the passes over them run:
``local`` (this process's threads, :class:`truncflow.Dataset`), ``dask`` (the workers of a
Dask cluster, :class:`truncflow.DistributedDataset`) and ``cuda`` (a GPU,
:class:`truncflow.DeviceDataset`). Each dataset class *is* its backend: it subclasses
:class:`Backend`, implements the named operations it can run and declares its
:class:`Capabilities`. The science layer (``compute``, ``statistics``, ``observe``,
``minimizers``, ``engine``) calls an operation by its name on the dataset, asks the
capabilities what the placement allows, and never branches on a dataset's type.

The named operations (every pass returns per-chunk partial results with a leading axis of
chunks, which the caller adds in chunk order; a GPU returns its fixed-order sums as one
"chunk"):

  gradient_sums(arrays, output_cost, n_slots, chunk)
        arrays = (targets, cw, cb, inv, back, out_w, out_b) of ``tiles.tile_arrays`` (in the
        sweep's precision): per-chunk (sq, g_w, g_b, g_ow, g_ob) of ``kernels.gradient``.
  statistics_sums(arrays, output_cost, n_clusters, second, chunk)
        per-chunk (sq, g_w, g_b, g_ow, g_ob, truncated, free1, con1, free2, con2) of
        ``kernels.statistics``.
  observe(targets, shift, cw, cb, edges_t, out_w, out_b, output_cost, n_clusters, chunk)
        (per-chunk sums of ``kernels.observe``, the distinct pattern hashes sorted, the
        per-point hashes: an (N,) uint64 array, or an object with ``count_changes`` that
        keeps them where the points are).
  cluster_sums(n_clusters, chunk)
        per-chunk (Q, M) sums of each cluster's points.
  rows(idx)                 (points[idx] as float64, labels[idx]): a data sample, brought here.
  with_targets(targets)     the same points and labels with other targets.

The kink integrator's per-point side (``engine.kinks``; ``backends.frozen`` says what it is):

  frozen_points(kern, chunk)  an object that holds every point's frozen activation pattern
        where the points are and runs the integrator's passes over all of them (the
        frozen-pattern gradient with its flagged points, pre-activations and their rates at
        a step's ends, the Hermite dip test, first-order sign flips, points on hyperplanes),
        returning sums and sorted index lists; the integrator brings the rows of the few
        flagged points to this process for the rest.

The local and Dask backends implement it; the CUDA backend lacks it today (``method="kinks"``
on a GPU asks for the points here). A backend that lacks an operation raises
:class:`BackendLacks` naming the operation and the backend. Adding a pass means adding a
method here (raising), one per backend that runs it, and its name to that backend's
``Capabilities.operations``.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backend", "BackendLacks", "Capabilities", "OPERATIONS", "FROZEN_PASSES", "capabilities_of",
           "register_placement", "placement"]

#: The named operations every placement is asked for.
OPERATIONS = ("gradient_sums", "statistics_sums", "observe", "cluster_sums", "rows", "with_targets")
#: The kink integrator's per-point side (``backends.frozen``).
FROZEN_PASSES = ("frozen_points",)


class BackendLacks(ValueError):
    """A backend was asked for an operation it does not implement: names both."""

    def __init__(self, operation: str, backend: str, hint: str = ""):
        self.operation, self.backend = operation, backend
        super().__init__(f"the {backend} backend has no {operation!r} pass" + (f": {hint}" if hint else ""))


@dataclass(frozen=True)
class Capabilities:
    """What a placement of the points can do (one per backend; the engine words its refusals from it).

    Attributes:
        name          "local", "Dask" or "CUDA": the backend, for messages.
        where         "here", "on a Dask cluster", "on a GPU": where its points are.
        points_here   ``dataset.points`` and ``labels`` are arrays in this process's memory
                      (functions that read them directly accept the dataset).
        serial_steps  an evaluation of the flow may be one compiled call over the points
                      (``kernels.flow.evaluate_serial``) and gradient descent may run its
                      steps in compiled code (``kernels.descent``).
        checkpoints   a run on it may write checkpoints (its per-point state is here).
        methods       the ``simulate`` methods it runs.
        float32       the float32 sweep (``precision="float32"``) runs on it.
        ensembles     ``simulate_ensemble`` runs its members on it.
        operations    the named operations it implements (:data:`OPERATIONS`, :data:`FROZEN_PASSES`).
        bring_here    how to get a :class:`truncflow.Dataset` of its points, for messages
                      ("use dataset.to('cpu')"); empty for the local backend.
    """

    name: str
    where: str
    points_here: bool
    serial_steps: bool
    checkpoints: bool
    methods: frozenset
    float32: bool
    ensembles: bool
    operations: frozenset
    bring_here: str = ""


class Backend:
    """The named operations of a placement; each raises :class:`BackendLacks` until a backend
    implements it. Subclasses set ``capabilities``."""

    capabilities: Capabilities

    def _lacks(self, operation: str):
        caps = self.capabilities
        hint = f"it needs the points here ({caps.bring_here})" if operation in FROZEN_PASSES and caps.bring_here \
            else ""
        raise BackendLacks(operation, caps.name, hint)

    # -------------------------------------------------- passes over the points
    def gradient_sums(self, arrays: tuple, output_cost: bool, n_slots: int, chunk: int) -> tuple:
        self._lacks("gradient_sums")

    def statistics_sums(self, arrays: tuple, output_cost: bool, n_clusters: int, second: bool, chunk: int) -> tuple:
        self._lacks("statistics_sums")

    def observe(self, targets, shift, cw, cb, edges_t, out_w, out_b, output_cost: bool, n_clusters: int, chunk: int):
        self._lacks("observe")

    def cluster_sums(self, n_clusters: int, chunk: int):
        self._lacks("cluster_sums")

    def rows(self, idx):
        self._lacks("rows")

    def with_targets(self, targets):
        self._lacks("with_targets")

    # ------------------------------------- the kink integrator's per-point side
    def frozen_points(self, kern, chunk: int):
        self._lacks("frozen_points")


def capabilities_of(dataset) -> Capabilities | None:
    """The :class:`Capabilities` of a dataset's backend, or None for an object that is no dataset."""
    return dataset.capabilities if isinstance(dataset, Backend) else None


# ------------------------------------------------------------------ placements
#: How a local dataset moves to another backend: "to_device" (``truncflow.device.to_device``)
#: and "distribute" (``truncflow.backends.dask.distribute``), registered by those modules
#: when ``import truncflow`` imports them, so that ``Dataset.to`` and ``Dataset.distribute``
#: reach them without an import of the other backends (and no import circle).
_PLACEMENTS = {}


def register_placement(name: str, function) -> None:
    """Make ``function`` the placement called ``name`` (see :func:`placement`)."""
    _PLACEMENTS[name] = function


def placement(name: str):
    """The registered placement ``name`` ("to_device", "distribute")."""
    try:
        return _PLACEMENTS[name]
    except KeyError:
        raise RuntimeError(f"no placement {name!r} is registered: import truncflow first") from None
