"""Where the passes over the points run: one backend per placement, siblings behind named operations.

  base.py    the named operations (:class:`Backend`, each raising :class:`BackendLacks` until a
             backend implements it), the :class:`Capabilities` a backend declares, and
             :func:`capabilities_of`, the one place that tells a dataset from anything else
  local.py   this process's threads: the CPU kernels (``truncflow.Dataset`` is this backend)
  dask.py    the workers of a Dask cluster: the same serial kernels by name per partition,
             per-chunk sums concatenated in chunk order (``truncflow.DistributedDataset``)
  cuda.py    a GPU: the CUDA kernels, fixed-order sums (``truncflow.DeviceDataset``)

The science layer (``compute``, ``statistics``, ``observe``, ``minimizers``, ``engine``) calls
the operations by name on a dataset and reads its capabilities; only modules here ask what
type a dataset is. Importing this package imports neither Dask nor ``numba.cuda``: ``dask.py``
imports Dask when a dataset is distributed, ``cuda.py`` is handed ``numba.cuda`` by
``truncflow.device.to_device``. ``Dataset.to`` and ``Dataset.distribute`` find the placements
(``truncflow.device.to_device``, ``dask.distribute``) in a registry those modules fill when
``import truncflow`` imports them: nothing in the package imports in a circle, even inside
a function.
"""
from .base import (FROZEN_PASSES, OPERATIONS, Backend, BackendLacks, Capabilities, capabilities_of, placement,
                   register_placement)

__all__ = ["Backend", "BackendLacks", "Capabilities", "OPERATIONS", "FROZEN_PASSES", "capabilities_of",
           "placement", "register_placement"]
