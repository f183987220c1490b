"""How many threads truncflow's kernels run on: the process's share of the machine, not the machine.

A process that is one of many (a sweep of one flow per core, a Dask worker, a batch
job given fewer cores than the node has) must not start a thread per core of the node:
the threads of different processes then take turns on the same cores, and a parallel
pass waits at its barrier for whichever thread was descheduled. The default number of
threads is therefore the smallest of

- ``NUMBA_NUM_THREADS`` (Numba's pool: no more threads than this exist),
- ``OMP_NUM_THREADS`` (how batch systems and Dask's ``nanny`` tell a worker its share),
- the CPUs in the process's affinity mask (``taskset``, cpusets, Slurm),
- the cgroup CPU quota, rounded up (containers, ``systemd`` ``CPUQuota``),

and ``set_threads(n)`` (or ``[run] threads`` / ``--threads`` on the command line)
chooses another number. Results never depend on it: the points are split into
chunks by the problem's size alone and the chunks' sums are added in a fixed order
(``kernels.config``), so 1 or 64 threads give bit-identical numbers.

Numba's thread count is per calling thread; truncflow's entry points apply the
chosen number in whatever thread they run (``apply``, one check of about 1 us).
"""
from __future__ import annotations

import math
import os
import sys

__all__ = ["default_threads", "cpu_quota", "set_threads", "get_threads", "apply", "pool_env"]

# The number chosen with set_threads (None: the default).
_chosen: int | None = None


def _read(*parts) -> str:
    with open(os.path.join(*parts)) as f:
        return f.read()


def cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs the cgroup CPU quota allows (cgroup v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), e.g. 1.5; None when unlimited or unknown."""
    try:
        quota, period = _read(root, "cpu.max").split()[:2]
        return float(quota) / float(period) if quota != "max" and float(period) > 0 else None
    except (OSError, ValueError):
        pass
    try:
        quota = float(_read(root, "cpu", "cpu.cfs_quota_us"))
        period = float(_read(root, "cpu", "cpu.cfs_period_us"))
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").split(",")[0].strip()     # OMP_NUM_THREADS may be a list: its first level
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 1 else None


def default_threads() -> int:
    """The process's share of the machine: the smallest of NUMBA_NUM_THREADS, OMP_NUM_THREADS,
    the CPUs of the affinity mask and the cgroup CPU quota (rounded up), at least 1."""
    limits = [_env_int("NUMBA_NUM_THREADS"), _env_int("OMP_NUM_THREADS")]
    try:
        limits.append(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                  # not Linux
        limits.append(os.cpu_count())
    quota = cpu_quota()
    if quota is not None:
        limits.append(max(1, math.ceil(quota - 1e-9)))
    return max(1, min(n for n in limits if n))


def pool_env() -> None:
    """Before Numba is imported: size its thread pool to ``default_threads()`` unless the
    user set NUMBA_NUM_THREADS (then that is the pool and the cap). Numba imported
    earlier keeps its pool; ``apply`` still runs truncflow's kernels on the default number."""
    if "NUMBA_NUM_THREADS" not in os.environ and "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(default_threads())


def _pool() -> int:
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


_default: list = []         # min(default_threads(), pool), found once


def _default_in_pool() -> int:
    if not _default:
        _default.append(min(default_threads(), _pool()))
    return _default[0]


def set_threads(n: int | None) -> int:
    """Run truncflow's kernels on ``n`` threads from now on, in every thread that calls
    truncflow (``None``: back to ``default_threads()``). Returns the number in effect.

    Raises ValueError unless 1 <= n <= the size of Numba's pool (NUMBA_NUM_THREADS, fixed
    when Numba starts: set that environment variable to allow more).
    """
    global _chosen
    if n is not None:
        if isinstance(n, bool) or not hasattr(n, "__index__"):
            raise ValueError(f"threads must be a whole number, got {n!r}")
        n = int(n.__index__())
        if not 1 <= n <= _pool():
            raise ValueError(f"threads must be between 1 and {_pool()} (Numba's pool, NUMBA_NUM_THREADS), got {n}")
    _chosen = n
    apply()
    return get_threads()


def get_threads() -> int:
    """The number of threads truncflow's kernels run on (``set_threads``'s, else the default,
    never more than Numba's pool)."""
    return _chosen if _chosen is not None else _default_in_pool()


def apply() -> None:
    """Make the calling thread's Numba thread count truncflow's (about 1 us when it already is)."""
    import numba                # here, not at the top: pool_env must run before Numba is imported
    want = get_threads()
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)

