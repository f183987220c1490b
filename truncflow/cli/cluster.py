"""A Dask client for a run or for ``truncflow info --scheduler``, and how long to wait for
a scheduler (--connect-timeout, [cluster] connect_timeout)."""
from __future__ import annotations

import logging
import math

from .parser import DEFAULT_CONNECT_TIMEOUT, UsageError, one_line


def connect_timeout(flag, cluster: dict) -> float:
    """Seconds to wait for a Dask scheduler: --connect-timeout, else [cluster] connect_timeout, else
    DEFAULT_CONNECT_TIMEOUT."""
    if flag is not None:
        if not (isinstance(flag, (int, float)) and math.isfinite(flag) and flag > 0):
            raise UsageError(f"--connect-timeout must be a number of seconds > 0, got {flag}")
        return float(flag)
    value = (cluster or {}).get("connect_timeout")
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"[cluster] connect_timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


class dask_client:
    """A ``distributed.Client`` for a run: connected to ``cluster["scheduler"]`` (giving up after
    ``timeout`` seconds), or to a LocalCluster of ``cluster["local"]`` worker processes started
    (and stopped) here."""

    def __init__(self, cluster: dict, timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.spec, self.local, self.timeout = cluster, None, timeout

    def __enter__(self):
        from ..distributed import require_dask
        _, distributed = require_dask()
        if "scheduler" in self.spec:
            address = self.spec["scheduler"]
            _check_scheduler_address(address)
            try:
                self.client = distributed.Client(address, timeout=self.timeout)
            except (OSError, ValueError, TypeError, AssertionError) as exc:   # no scheduler there, a timeout
                if isinstance(exc, OSError) and "timed out" in str(exc).lower():
                    raise OSError(f"cannot reach the Dask scheduler {address}: no answer within "
                                  f"{self.timeout:g} s (--connect-timeout SECONDS to wait longer)") from None
                raise OSError(f"cannot reach the Dask scheduler {address} (connect timeout {self.timeout:g} s): "
                              f"{one_line(exc) or type(exc).__name__}") from None
        else:
            try:
                self.local = distributed.LocalCluster(n_workers=self.spec["local"], processes=True,
                                                      threads_per_worker=self.spec["threads_per_worker"],
                                                      dashboard_address=None, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.local)
            except OSError as exc:
                raise OSError(f"cannot start a Dask LocalCluster: {exc}") from None
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.local is not None:
            self.local.close()


def _check_scheduler_address(address) -> None:
    """Refuse at once an address of a protocol Dask does not know (it would fail only after a while)."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"--scheduler: not a scheduler address: {address!r} (e.g. tcp://host:8786)")
    try:
        from distributed.comm.addressing import parse_address
        from distributed.comm.registry import get_backend
    except ImportError:       # Dask's internals moved: let the Client say
        return
    try:
        get_backend(parse_address(address)[0])
    except ValueError as exc:
        raise ValueError(f"cannot use the Dask scheduler address {address}: {exc}") from None
