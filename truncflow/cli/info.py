"""``truncflow info``: versions, threads, the compiled-kernel cache, the GPUs, and the workers
of a Dask scheduler."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .cluster import dask_client
from .parser import DEFAULT_CONNECT_TIMEOUT


def info_command(scheduler=None, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> int:
    """``truncflow info [--scheduler ADDRESS]``: print the report; the exit code."""
    import platform

    import numba
    import numpy
    import scipy

    from .. import __version__

    print(f"truncflow {__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"numpy     {numpy.__version__}")
    print(f"numba     {numba.__version__}")
    print(f"scipy     {scipy.__version__}")
    cpus = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cpus
    print(f"cpus      {cpus} ({usable} usable by this process)")
    from ..threads import cpu_quota, get_threads
    quota = cpu_quota()
    print(f"threads   {get_threads()} (Numba's pool {numba.config.NUMBA_NUM_THREADS}; cgroup CPU quota "
          f"{'none' if quota is None else f'{quota:g}'})")
    print(f"threading layer {_threading_layer()}")
    for var in ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                "OMP_NUM_THREADS"):
        if var in os.environ:
            print(f"  {var}={os.environ[var]}")
    _cache_report()
    from ..device import describe_gpus
    for line in describe_gpus():
        print(line)
    if scheduler is not None:
        from ..distributed import describe_cluster
        with dask_client({"scheduler": scheduler}, timeout) as client:
            for line in describe_cluster(client):
                print(line)
    return 0


def kernels_cached() -> bool:
    """Whether the kernels a run needs have an entry in Numba's cache (best effort)."""
    try:
        needed = {"gradient.gradient_kernel", "observe.observe_kernel"}
        found = {name: disp for name, disp in _kernel_dispatchers() if name in needed}
        return len(found) == len(needed) and all(
            Path(d._cache._cache_file._index_path).is_file() for d in found.values())
    except Exception:  # numba internals moved: say nothing
        return True


def _threading_layer() -> str:
    import numba
    try:
        active = numba.threading_layer()
        state = f"{active} (active)"
    except ValueError:  # no parallel kernel has run in this process yet
        state = f"not started yet (configured: {numba.config.THREADING_LAYER})"
    available = []
    for name, module in (("tbb", "tbbpool"), ("omp", "omppool"), ("workqueue", "workqueue")):
        try:
            __import__(f"numba.np.ufunc.{module}")
            available.append(name)
        except ImportError:
            pass
    return f"{state}; available: {', '.join(available) or 'none'}"


def _kernel_dispatchers():
    """(module.name, dispatcher) for every cached Numba kernel in truncflow.kernels."""
    import importlib
    import pkgutil

    from numba.core.dispatcher import Dispatcher

    from .. import kernels

    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and getattr(obj, "__module__", None) == module.__name__:
                found.append((f"{info.name}.{attr}", obj))
    return sorted(found)


def _cache_report():
    from .. import kernels

    default_dir = Path(kernels.__file__).parent / "__pycache__"
    kernels_found = _kernel_dispatchers()
    cache_dirs = set()
    rows = []
    for name, disp in kernels_found:
        cache = getattr(disp, "_cache", None)
        index = None
        try:
            index = Path(cache._cache_file._index_path)
            cache_dirs.add(Path(cache._cache_path))
        except AttributeError:  # not a caching dispatcher, or numba internals moved
            pass
        if index is None:
            rows.append((name, "no cache (cache=False)"))
            continue
        if index.is_file():
            stem = index.name[: -len(".nbi")]
            n_entries = len(list(index.parent.glob(f"{stem}.*.nbc")))
            rows.append((name, f"cached ({n_entries} compiled signature{'s' if n_entries != 1 else ''})"))
        else:
            rows.append((name, "not cached: compiles on first use"))
    if not cache_dirs:
        cache_dirs = {default_dir}
    for d in sorted(cache_dirs):
        n_index = len(list(d.glob("*.nbi"))) if d.is_dir() else 0
        print(f"kernel cache {d} ({n_index} index file{'s' if n_index != 1 else ''} *.nbi"
              f"{'' if d.is_dir() else ', folder missing'})")
    n_cached = sum(1 for _, s in rows if s.startswith("cached"))
    print(f"compiled kernels cached: {n_cached} of {len(rows)}")
    for name, state in rows:
        print(f"  {name:32s} {state}")
