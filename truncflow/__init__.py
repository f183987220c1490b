"""truncflow: gradient flow of deep ReLU networks seen from the input space.

Public API (see README.md for a tour):
    Params, Dataset                     parameters and data
    truncate, activation_patterns       truncation maps and activation patterns
    cost, gradient, Gradient            costs and exact generalized gradients
    simulate, Result, load_result       the gradient flow and what a run records
    simulate_ensemble                   many independent flows at once (bit-identical to single runs)
    cluster_statistics                  per-cluster flow derivatives in one pass
    separation_report, threshold_gradient, threshold_velocity
                                        the aligned model's effective equations (MODEL.md section 9)
    cone_minimizer, predicted_cost      minimizers built by hand (MODEL.md section 10)
    Objective                           the cost as a function of one flat vector (SciPy, your own optimizer)
    truncflow.torch, truncflow.jax      the cost as a PyTorch module / a JAX function (optional; imported only there)
    set_threads, get_threads            how many threads the kernels run on
    distribute, DistributedDataset      a dataset on a Dask cluster (optional: truncflow[distributed])
    Dataset.to("cuda"), DeviceDataset   a dataset on a GPU (optional: truncflow[cuda])
"""
import os as _os

# Idle worker threads sleep instead of spinning: with spinning OpenMP workers a
# process that shares its cores (tests, notebooks, other jobs) runs 5-30x slower.
# Set before numba starts its threads; a value the user chose is kept.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ...after a short spin (10,000 rounds, under a millisecond: measured here, a worker
# is still awake after a 200 us gap and asleep after 1 ms; it overrides the passive
# policy's zero): waking a sleeping worker costs about 250 us on a virtual machine,
# three times a whole 2-thread gradient of 1,000 points, so calls in quick succession
# (an integrator's steps) keep their workers awake. Both act on Numba's omp threading
# layer with GNU OpenMP (libgomp), the layer Numba picks when TBB is absent.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")
# Numba's pool: the process's share of the machine (affinity, cgroup quota, OMP_NUM_THREADS),
# not one thread per core of the node (truncflow/threads.py).
from .threads import pool_env as _pool_env  # noqa: E402
_pool_env()

from .threads import get_threads, set_threads  # noqa: E402

from .params import MAX_CONDITION, Params  # noqa: E402
from .data import Dataset, EmptyClusterWarning, encode_labels, gaussian_clusters, load_points, uniform_balls
from .compute import (Gradient, activation_patterns, cost, cumulative_to_layer_gradient,
                      gradient, truncate)
from .observe import Observation, observe
from .engine.integrate import simulate
from .engine.ensemble import simulate_ensemble
from .engine.events import SeparationWarning
from .statistics import ClusterStatistics, cluster_statistics
from .minimizers import cone_minimizer, predicted_cost
from .aligned import SeparationReport, separation_report, threshold_gradient, threshold_velocity
from .engine.record import Result, load_result
from .objective import Objective
from .distributed import ClusterError, DistributedDataset, distribute
from .device import CudaUnavailableError, DeviceDataset

from ._version import __version__  # noqa: E402

__all__ = [
    "MAX_CONDITION", "Params", "Dataset", "EmptyClusterWarning", "encode_labels", "gaussian_clusters", "uniform_balls", "load_points",
    "Gradient", "truncate", "activation_patterns", "cost", "gradient",
    "cumulative_to_layer_gradient", "Observation", "observe", "simulate", "simulate_ensemble", "Result", "load_result", "Objective",
    "ClusterStatistics", "cluster_statistics", "cone_minimizer", "predicted_cost",
    "SeparationReport", "SeparationWarning", "separation_report", "threshold_gradient", "threshold_velocity",
    "set_threads", "get_threads", "distribute", "DistributedDataset", "ClusterError",
    "DeviceDataset", "CudaUnavailableError", "__version__",
]
