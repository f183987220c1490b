"""[flow] and [record]: the keyword arguments of :func:`truncflow.simulate`. Which keys a
method takes comes from the method registry (:mod:`truncflow.engine.methods`)."""
from __future__ import annotations

import numbers

import numpy as np

from .._validate import require_memory
from ..compute import PARAMETRIZATIONS
from ..engine.events import check_events_problem
from ..engine.methods import METHOD_NAMES, spec
from ..engine.rhs import TRAIN_OPTIONS, FlowProblem
from ..engine.sgd import check_sgd_options
from .reader import Reader, short
from .schema import MAX_RECORDS, METHOD_ONLY


def build_flow(r: Reader, f: dict, kind, params, dataset, seed: int | None = None) -> dict:
    """simulate's keyword arguments from [flow] (``f``), checked against the data and network.
    ``seed``: the job's top-level seed, the default of [flow] seed (method = "sgd")."""
    sec = "flow"
    wrt = r.string(sec, f, "wrt", default="cumulative", choices=PARAMETRIZATIONS)
    method = r.string(sec, f, "method", default="rk45", choices=METHOD_NAMES)
    r.only_for(sec, f, METHOD_ONLY, "method", method)
    train = r.string(sec, f, "train", default="all", choices=TRAIN_OPTIONS)
    frozen = ()
    if "frozen_layers" in f:
        v = f["frozen_layers"]
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in v):
            r.fail(sec, "frozen_layers", f"must be a list of layer numbers, got {short(v)}")
        frozen = tuple(int(x) for x in v)
    t_end = r.number(sec, f, "t_end", required=True, positive=True)
    kw = dict(t_end=t_end, kind=kind, wrt=wrt, method=method, train=train, frozen_layers=frozen)
    if spec(method).adaptive:
        kw["rtol"] = r.number(sec, f, "rtol", default=1e-6, positive=True)
        kw["atol"] = r.number(sec, f, "atol", default=1e-9, positive=True)
        kw["first_step"] = r.number(sec, f, "first_step", positive=True)
        kw["max_step"] = r.number(sec, f, "max_step", positive=True)
    elif method in ("gd", "sgd"):
        if "lr" not in f:
            r.fail(sec, "lr", f'is required for method = "{method}" (the learning rate, > 0)')
        kw["lr"] = r.number(sec, f, "lr", positive=True)
        if method == "sgd":
            kw.update(_sgd_options(r, f, dataset, seed))
    else:
        v = f.get("record_truncation_times", False)
        if not isinstance(v, bool):
            r.fail(sec, "record_truncation_times", f"must be true or false, got {short(v)}")
        kw["record_truncation_times"] = v
    for key in ("cost_tol", "grad_tol", "max_time"):
        kw[key] = r.number(sec, f, key, positive=True)
    kw["max_evals"] = r.integer(sec, f, "max_evals", minimum=1)
    # Let the engine check the rest (frozen layers in range, something left to train, shapes).
    problem = r.api(sec, "frozen_layers" if frozen else None, FlowProblem, params, dataset, kind=kind,
                    wrt=wrt, train=train, frozen_layers=frozen)
    if method == "events":
        r.api(sec, "method", check_events_problem, problem)
    return kw


def _sgd_options(r: Reader, f: dict, dataset, seed) -> dict:
    """batch_size (required), replacement, seed (default: the job's seed, else 0), momentum of
    method = "sgd", checked by the engine (:func:`truncflow.engine.sgd.check_sgd_options`)."""
    sec = "flow"
    if "batch_size" not in f:
        r.fail(sec, "batch_size", 'is required for method = "sgd" (points per minibatch, a whole number >= 1)')
    batch_size = r.integer(sec, f, "batch_size", minimum=1)
    replacement = f.get("replacement", False)
    if not isinstance(replacement, bool):
        r.fail(sec, "replacement", f"must be true or false, got {short(replacement)}")
    batch_seed = r.integer(sec, f, "seed", minimum=0, default=0 if seed is None else seed)
    momentum = r.number(sec, f, "momentum", default=0.0, nonneg=True)
    if momentum >= 1:
        r.fail(sec, "momentum", f"must be below 1 (heavy-ball momentum in [0, 1)), got {short(f['momentum'])}")
    return r.api(sec, "batch_size", check_sgd_options, dataset.n_points, batch_size, replacement, batch_seed,
                 momentum)


def build_record(r: Reader, t_end: float) -> dict:
    """simulate's record_times or n_records from [record]."""
    sec = "record"
    rec = r.section(sec)
    for key in ("n_records", "t_first"):
        if key in rec and "times" in rec:
            r.fail(sec, key, "give times, or n_records and t_first, not both")
    if "times" in rec:
        times = r.array(sec, rec, "times", 1, what="flow times")
        if times.min() < 0 or times.max() > t_end:
            r.fail(sec, "times", f"must lie in [0, t_end = {t_end:g}]")
        return {"record_times": times}
    n_records = r.integer(sec, rec, "n_records", default=50, minimum=2, maximum=MAX_RECORDS)
    t_first = r.number(sec, rec, "t_first", positive=True)
    if t_first is None:
        return {"n_records": n_records}
    if t_first >= t_end:
        r.fail(sec, "t_first", f"must be below t_end = {t_end:g}, got {t_first:g}")
    return {"record_times": np.geomspace(t_first, t_end, n_records - 1)}


def check_record_size(r: Reader, kw: dict, params, dataset) -> None:
    """Refuse records that would not fit in memory (each keeps both parameter forms and
    the (L, Q, M) observables), naming the key that sets their number."""
    n = len(kw["record_times"]) + 1 if "record_times" in kw else kw["n_records"]
    key = "times" if "times" in r.section("record") else "n_records"
    L, M, Q, P = params.n_layers, params.width, dataset.n_clusters, params.out_dim or 0
    per_record = 8 * (2 * L * M * (M + 1) + L * Q * (M + 6) + L + Q + P * (M + 1) + 16)
    r.api("record", key, require_memory, n * per_record,
          f"{key}: {n} records of L={L} layers, Q={Q} clusters, width M={M}")
