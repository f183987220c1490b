"""Checkpoints: a running flow's whole state on disk, so that a killed run can continue.

A checkpoint holds everything the stepping loop needs to continue *bit for bit* as if
it had never stopped: the state vector, the stepper's derivative and step size
(rk45), the iteration count (gd), the counters, the record schedule still pending,
the records made so far, and the wall time spent. It is written after an accepted
step (never in the middle of one) to a temporary file renamed over the old one, so a
kill at any moment leaves the previous checkpoint or the new one.

It also holds a fingerprint of the run (its options, the initial parameters and a
digest of the data): resuming with other data or options is refused, not silently
continued. The file is an ``.npz`` read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import numpy as np

from .._files import atomic_savez

__all__ = ["Checkpointer", "load_checkpoint", "fingerprint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1
#: Options that may change between the stopped run and its resumption: the stopping rules.
_MAY_CHANGE = ("max_time", "max_evals", "cost_tol", "grad_tol")


#: Rows hashed at a time by _digest.
_DIGEST_ROWS = 1 << 20


def _digest(*arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.asarray(a)
        a = a.reshape(1) if a.ndim == 0 else a          # as np.ascontiguousarray made it
        h.update(str((a.dtype.str, a.shape)).encode())
        for i in range(0, a.shape[0], _DIGEST_ROWS):    # the bytes in C order, a block of rows at a time:
            block = np.ascontiguousarray(a[i:i + _DIGEST_ROWS])     # no copy of a memory-mapped file
            h.update(block.view(np.uint8).ravel())
    return h.hexdigest()


def fingerprint(problem, options: dict, schedule) -> dict:
    """What must agree between a checkpoint and the run that resumes it (JSON-able).

    ``options`` are the flow's options as :func:`simulate` normalized them, ``schedule``
    its record times.
    """
    from .record import _json_default  # noqa: PLC0415 (record imports observe, which is heavy)

    p, d = problem.params, problem.dataset
    options = {k: v for k, v in options.items() if k not in _MAY_CHANGE}
    return {
        "options": json.loads(json.dumps(options, default=_json_default)),
        "params": _digest(p.cum_weights, p.cum_biases, p.out_weight, p.out_bias),
        "data": _digest(d.points, d.labels, d.targets),
        "schedule": _digest(np.asarray(schedule, dtype=np.float64)),
    }


class Checkpointer:
    """Writes a run's checkpoints to ``path`` at most every ``every`` seconds.

    The loop calls :meth:`offer` between steps with a function that returns
    ``(scalars, arrays)`` of its state; it is called and written only when due (or
    forced: after the first record, and when the run stops early).
    """

    def __init__(self, path, every: float, fingerprint: dict, method: str):
        self.path = Path(path)
        self.every = float(every)
        self.fingerprint = fingerprint
        self.method = method
        self._last_write = -np.inf
        self.n_written = 0

    def offer(self, take_state, force: bool = False) -> None:
        """Write ``take_state()`` (the loop's ``(scalars, arrays)``) if ``every`` seconds have passed.

        Called between steps only, where the loop's state is consistent; the state is
        taken only when it is written.
        """
        if not force and time.monotonic() - self._last_write < self.every:
            return
        scalars, arrays = take_state()
        meta = {"format": CHECKPOINT_FORMAT, "method": self.method, "fingerprint": self.fingerprint,
                "state": scalars}
        atomic_savez(self.path, __checkpoint__=np.array(json.dumps(meta)), **arrays)
        self._last_write = time.monotonic()
        self.n_written += 1

    def remove(self) -> None:
        """Delete the checkpoint file (the run finished: its result is the record)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def load_checkpoint(path, expected: dict, method: str) -> tuple[dict, dict]:
    """(scalars, arrays) of the checkpoint at ``path``, after checking it belongs to this run.

    Raises ValueError naming the problem: missing or foreign file, another method,
    or a fingerprint (options, initial parameters, data) that differs from ``expected``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a truncflow checkpoint (not an .npz file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            meta = json.loads(str(z["__checkpoint__"])) if "__checkpoint__" in names else None
            arrays = {k: z[k] for k in names if k != "__checkpoint__"}
    except Exception as exc:  # corrupt file
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise ValueError(f"{path} is not a truncflow checkpoint (no valid __checkpoint__ entry)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}; this truncflow reads "
                         f"format {CHECKPOINT_FORMAT}")
    if meta.get("method") != method:
        raise ValueError(f"checkpoint {path} is of a method={meta.get('method')!r} run, not {method!r}")
    found = meta.get("fingerprint", {})
    for key, what in (("data", "the data (points, labels or targets)"), ("params", "the initial parameters"),
                      ("schedule", "the record times")):
        if found.get(key) != expected[key]:
            raise ValueError(f"checkpoint {path} does not belong to this run: {what} differ")
    if found.get("options") != expected["options"]:
        a, b = found.get("options", {}), expected["options"]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"checkpoint {path} does not belong to this run: options differ "
                         f"({', '.join(f'{k}: {a.get(k)!r} there, {b.get(k)!r} here' for k in keys[:4])})")
    return meta["state"], arrays
