"""Datasets on a GPU: the points cross the bus once, every pass runs there (issue 13).

``dataset.to("cuda")`` returns a :class:`DeviceDataset`. ``cost``, ``gradient`` (every
``kind``, ``wrt``, ``per_cluster``, ``precision``), ``cluster_statistics``, ``observe``
and ``simulate`` (``method`` "rk45" or "gd") accept it and run their passes over the
points in the CUDA kernels of :mod:`truncflow.kernels.cuda`. Per pass only the
parameters (L*M^2 numbers) go to the device and the reduced sums (a few KB) come back;
an observation also brings back one 8-byte pattern hash per point.

The dataset on the GPU is the CUDA backend, :mod:`truncflow.backends.cuda` (its two
placements, resident and streamed, are described there); this module holds what finds a
GPU (:func:`require_cuda`, :func:`describe_gpus`), moves a dataset there
(:func:`to_device`) and runs the forward maps on points already on a device
(:func:`truncate_on_device`, :func:`patterns_on_device`).

The CUDA parts are optional: ``pip install "truncflow[cuda]"`` (numba-cuda) and an
NVIDIA driver; without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` runs the same kernels in
Numba's CUDA simulator (slow: for tests on hundreds of points). Nothing here imports
``numba.cuda`` until a dataset is moved to a device.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from ._validate import choice, format_bytes, integer
from .backends import capabilities_of, register_placement
from .backends.cuda import DEFAULT_BATCH, DEVICES, RESIDENT_FRACTION, DeviceDataset
from .tiles import tile_arrays

__all__ = ["DeviceDataset", "CudaUnavailableError", "require_cuda", "to_device", "describe_gpus", "DEVICES",
           "RESIDENT_FRACTION", "DEFAULT_BATCH"]

INSTALL = 'pip install "truncflow[cuda]"'


class CudaUnavailableError(RuntimeError):
    """A GPU was asked for ("cuda") where there is none that truncflow can use: the message
    names what is missing (the numba-cuda package, the driver, a device)."""


def require_cuda():
    """``numba.cuda`` once it is usable, or :class:`CudaUnavailableError` naming what is missing."""
    simulated = _simulator_requested()
    if not _numba_cuda_installed():
        hint = "" if simulated else ("; without a GPU, set NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's "
                                     "CUDA simulator")
        raise CudaUnavailableError(f"device 'cuda' needs the package numba-cuda, which is not installed: {INSTALL} "
                                   f"(and an NVIDIA driver){hint}")
    from numba import cuda
    if simulated:
        return cuda
    try:
        cuda.current_context()
    except Exception as exc:          # CudaSupportError, CudaDriverError, no device
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CudaUnavailableError(f"device 'cuda': no usable CUDA GPU ({reason}); install an NVIDIA driver and "
                                   f"check nvidia-smi, or set NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's "
                                   f"CUDA simulator") from None
    return cuda


def _numba_cuda_installed() -> bool:
    return importlib.util.find_spec("numba_cuda") is not None


def _simulator_requested() -> bool:
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def describe_gpus() -> list[str]:
    """Lines for ``truncflow info``: the GPUs numba-cuda sees, their memory, the kernels' state."""
    try:
        cuda = require_cuda()
    except CudaUnavailableError as exc:
        return [f"gpu       none usable: {exc}"]
    import numba_cuda
    lines = [f"numba-cuda {getattr(numba_cuda, '__version__', '?')}"]
    if _simulator_requested():
        lines.append("gpu       Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): the kernels run as Python, "
                     "for tests only")
    else:
        for i, gpu in enumerate(cuda.gpus):
            with gpu:
                free, total = cuda.current_context().get_memory_info()
                cc = ".".join(map(str, gpu.compute_capability))
                name = gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name
                lines.append(f"gpu {i}     {name}, compute capability {cc}, {format_bytes(total)} "
                             f"({format_bytes(free)} free), {gpu.MULTIPROCESSOR_COUNT} multiprocessors")
    lines.append("cuda kernels: compiled on first use in each process (a few seconds per kernel and dtype), "
                 f"{len(_compiled())} compiled in this process")
    return lines


def _compiled() -> list[str]:
    """Names of the CUDA kernel builders that have run in this process."""
    import sys
    names = []
    for mod in ("forward", "gradient", "observe"):
        m = sys.modules.get(f"truncflow.kernels.cuda.{mod}")
        build = getattr(m, "build", None)
        if build is not None and build.cache_info().currsize:
            names.append(mod)
    return names


def to_device(dataset, device: str = "cuda", *, batch_points: int | None = None) -> DeviceDataset:
    """``dataset`` on the GPU (see :class:`DeviceDataset`); ``batch_points`` forces streaming
    from pinned host memory in batches of that many points."""
    choice(device, "device", DEVICES)
    if device == "cpu":
        return dataset
    caps = capabilities_of(dataset)
    if caps is None or not caps.points_here:
        raise ValueError(f"dataset must be a truncflow.Dataset, got {type(dataset).__name__}")
    cuda = require_cuda()
    if batch_points is not None:
        batch_points = integer(batch_points, "batch_points", low=1)
    return DeviceDataset(cuda, dataset, batch_points)


register_placement("to_device", to_device)


# ---------------------------------------------------------------- device arrays
def is_device_array(points) -> bool:
    """True for an object with ``__cuda_array_interface__`` (Numba device arrays, CuPy arrays,
    PyTorch CUDA tensors): :func:`truncflow.truncate` and :func:`truncflow.activation_patterns`
    then run on the GPU and return Numba device arrays. (Under the CUDA simulator its
    device arrays, which have no such interface, count too.)"""
    if hasattr(points, "__cuda_array_interface__"):
        return True
    import sys
    cuda = sys.modules.get("numba.cuda")         # never imported here for a CPU user
    return cuda is not None and _simulator_requested() and type(points).__name__ == "FakeCUDAArray"


def _forward_setup(params, points):
    """(cuda, points as a Numba device array (no copy), kernels, padded parameters on the device,
    geometry, scratch) for :func:`truncate_on_device` / :func:`patterns_on_device`."""
    from .kernels.cuda import forward as fk
    from .kernels.cuda.launch import geometry
    cuda = require_cuda()
    # the simulator has no as_cuda_array: its own device arrays are the only ones there
    pts = points if _simulator_requested() else cuda.as_cuda_array(points)
    M = params.width
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] != M:
        raise ValueError(f"points on the device have shape {pts.shape}, expected (N, {M}) with N >= 1 for a "
                         f"network of width M={M}")
    if pts.dtype not in (np.float32, np.float64):
        raise ValueError(f"points on the device must be float32 or float64, got dtype {pts.dtype}")
    _, cw, cb, inv, _, _, _ = tile_arrays(params, np.zeros((1, M)), "input")
    L, Mp = cw.shape[0], cw.shape[1]
    G, T = geometry(pts.shape[0], 0)
    z = cuda.to_device(np.zeros((G, L + 1, Mp, T)))
    act = cuda.device_array((G, L, Mp, T))
    return cuda, pts, fk.build("float64"), [cuda.to_device(a) for a in (cw, cb, inv)], (G, T), z, act


def _require_finite_on_device(cuda, array, what: str) -> None:
    from .kernels.cuda.launch import count_nonfinite
    bad = count_nonfinite(array)
    if bad:
        raise ValueError(f"the {what} on the device has {bad} value(s) that are NaN or inf: points NaN/inf, or points "
                         f"or parameters too large for float64")


def truncate_on_device(params, points, layers: int):
    """Images x~^(layers) of device points (N, M): a Numba device array (N, M) float64."""
    cuda, pts, kernels, (cw, cb, inv), (G, T), z, act = _forward_setup(params, points)
    out = cuda.device_array(pts.shape, dtype=np.float64)
    kernels[2][G, T](pts, layers, cw, cb, inv, z, act, np.float64(0.0), out)
    _require_finite_on_device(cuda, out, "truncation map")
    return out


def patterns_on_device(params, points):
    """Bit-packed activation patterns of device points: a Numba device array (N, L, ceil(M/64)) uint64."""
    cuda, pts, kernels, (cw, cb, inv), (G, T), z, act = _forward_setup(params, points)
    _require_finite_on_device(cuda, pts, "points")
    out = cuda.device_array((pts.shape[0], params.n_layers, (params.width + 63) // 64), dtype=np.uint64)
    kernels[3][G, T](pts, cw, cb, inv, z, act, np.float64(0.0), out)
    return out
