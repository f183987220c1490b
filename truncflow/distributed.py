"""Datasets on a Dask cluster (issue 14): the public names of the Dask backend.

The backend itself is :mod:`truncflow.backends.dask`; this module keeps its public names
where they have always been importable (``truncflow.distributed.distribute``, ...).
Dask is an optional dependency: ``pip install "truncflow[distributed]"``.
"""
from .backends.dask import (INSTALL, ClusterError, DistributedDataset, PartitionedHashes, describe_cluster,
                            distribute, require_dask)

__all__ = ["distribute", "DistributedDataset", "ClusterError", "require_dask", "describe_cluster",
           "PartitionedHashes", "INSTALL"]
