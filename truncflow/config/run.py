"""[output], [run] and [cluster]: where the results go and how the run runs. Whether a
method runs on a GPU, on a Dask cluster or in float32 comes from the method registry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..compute import PRECISIONS
from ..device import DEVICES
from ..engine.methods import DEVICE, DISTRIBUTED, cluster_refusal, float32_refusal, gpu_refusal, spec
from .reader import Reader
from .schema import DEFAULT_FOLDER


def build_output(r: Reader) -> tuple[Path, str]:
    """(folder, job name) from [output]."""
    out = r.section("output")
    folder = Path(r.string("output", out, "folder", default=DEFAULT_FOLDER))
    if str(folder).strip() == "":
        r.fail("output", "folder", "must not be empty")
    return folder, r.string("output", out, "name", default=r.default_name)


@dataclass(frozen=True)
class RunSection:
    threads: int | None
    device: str
    precision: str


def build_run(r: Reader, method: str) -> RunSection:
    """[run]: threads, device and precision, the last two checked against the method."""
    run = r.section("run")
    threads = r.integer("run", run, "threads", minimum=1)
    device = r.string("run", run, "device", default="cpu", choices=DEVICES)
    precision = r.string("run", run, "precision", default="float64", choices=PRECISIONS)
    m = spec(method)
    if precision != "float64" and not m.float32:
        r.fail("run", "precision", f'"{precision}" ' + float32_refusal(method, quote='"'))
    if device == "cuda" and not m.runs_on(DEVICE):
        r.fail("run", "device", gpu_refusal(method, quote='"'))
    return RunSection(threads=threads, device=device, precision=precision)


def build_cluster(r: Reader, method: str) -> dict:
    """[cluster]: {"scheduler": address} (with "connect_timeout": seconds when given) or
    {"local": workers, "threads_per_worker": t}, or {}."""
    sec = "cluster"
    c = r.section(sec)
    scheduler = r.string(sec, c, "scheduler", default=None)
    local = r.integer(sec, c, "local", minimum=1)
    per_worker = r.integer(sec, c, "threads_per_worker", minimum=1)
    timeout = r.number(sec, c, "connect_timeout", positive=True)
    if scheduler is not None and local is not None:
        r.fail(sec, "local", "give either scheduler (connect to a cluster) or local (start one), not both")
    if per_worker is not None and local is None:
        r.fail(sec, "threads_per_worker", "applies to local = N (a cluster this run starts)")
    if timeout is not None and scheduler is None:
        r.fail(sec, "connect_timeout", 'applies to scheduler = "ADDRESS" (a cluster this run connects to; '
                                       "with --scheduler, give --connect-timeout)")
    if scheduler is None and local is None:
        return {}
    if not spec(method).runs_on(DISTRIBUTED):
        r.fail(sec, None, cluster_refusal(method, quote='"'))
    if scheduler is not None:
        return {"scheduler": scheduler} if timeout is None else {"scheduler": scheduler, "connect_timeout": timeout}
    return {"local": local, "threads_per_worker": per_worker or 1}
