"""Run configurations: a TOML file -> (Params, Dataset, simulate keyword arguments, output folder).

A configuration has up to six sections and two top-level keys::

    description = "what this job shows"      # optional, printed when the job starts
    seed = 0                                  # optional default seed of [data] and [network]

    [data]      where the points come from, and the per-cluster targets
    [network]   the initial network (layers, init and its parameters, output layer)
    [flow]      the gradient flow: cost kind, parametrization, method, stopping rules
    [record]    when to record (n_records or times)
    [output]    folder and job name
    [run]       how it runs: threads, device (cpu or cuda), precision
    [sweep]     optional: lists of values for any of the keys above, one run per
                combination (:mod:`truncflow.sweep`)

Every key is listed in :data:`SCHEMA` with its meaning. Everything is checked
before anything runs: a missing file, a TOML syntax error, an unknown section or
key, a value of the wrong type or shape, or a value the API refuses raises one
:class:`ConfigError` (a ``ValueError``) whose message names the file, the
section and key, and the problem.
"""
from __future__ import annotations

import difflib
import numbers
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ._validate import require_memory
from .data import Dataset, encode_labels, gaussian_clusters, load_points, uniform_balls
from .engine.events import check_events_problem
from .engine.methods import (DEVICE, DISTRIBUTED, METHOD_NAMES, METHOD_OPTIONS, cluster_refusal, float32_refusal,
                             gpu_refusal, methods_taking, spec)
from .engine.rhs import TRAIN_OPTIONS, FlowProblem
from .compute import COST_KINDS, PARAMETRIZATIONS, PRECISIONS
from .device import DEVICES
from .params import MAX_LAYERS, Params, check_network_size

__all__ = ["ConfigError", "RunConfig", "load_config", "parse_config", "default_config_text",
           "DEFAULT_CONFIG_NAME", "SCHEMA"]

#: Name shown for the built-in default job.
DEFAULT_CONFIG_NAME = "<built-in default>"

#: Sections and their keys, each with a short description (also the list of allowed keys).
SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "description": "text printed when the job starts",
        "seed": "default seed (integer) of [data] and [network]",
    },
    "data": {
        "source": '"gaussian", "balls" or "file"',
        "n_points": "number of points N (gaussian, balls)",
        "centers": "Q x M list of cluster centers (gaussian, balls)",
        "std": "standard deviation, one number or one per cluster (gaussian)",
        "radius": "ball radius, one number or one per cluster (balls)",
        "seed": "random seed (gaussian, balls)",
        "dtype": '"float64" or "float32"',
        "path": ".npy, .npz or .csv file of points and labels, relative to the config file (file)",
        "points_key": 'name of the points array in an .npz file (default "points")',
        "labels_key": 'name of the labels array in an .npz file (default "labels")',
        "targets": 'Q x M (input cost) or Q x P (output cost) list, one row per cluster (for a file: per '
                   'distinct class ID, in increasing order), or "centers", "means", "onehot"',
    },
    "network": {
        "layers": f"number of hidden layers L (1 to {MAX_LAYERS})",
        "init": '"identity", "random", "cones", "aligned", "layers" or "cumulative"',
        "scale": "random: W_l = I + scale * G / sqrt(M)",
        "bias_scale": "random: b_l ~ N(0, bias_scale^2)",
        "seed": "random: seed of the layers (and of a random output layer); aligned: of random frames",
        "apexes": "cones: L x M list of cone apexes p^(l)",
        "edges": "cones: L x M x M list, edges[l][j][k] = coordinate j of edge v_k (default identity)",
        "frames": 'aligned: L x M x M list of orthogonal frames R^(l), or "identity" (default) or "random"',
        "scales": "aligned: scales lambda^(l), one number or an L x M list (default 1)",
        "thresholds": "aligned: L x M list of thresholds t^(l) (the layer clips R^(l) z from below at t^(l))",
        "weights": "layers: L x M x M layer weights W_l",
        "biases": "layers: L x M layer biases b_l",
        "cum_weights": "cumulative: L x M x M cumulative weights W^(l)",
        "cum_biases": "cumulative: L x M cumulative biases b^(l)",
        "out_dim": "output dimension P of a random output layer (output cost)",
        "out_weight": "P x M output weight (output cost)",
        "out_bias": "P output bias (output cost)",
    },
    "flow": {
        "kind": '"input" or "output" cost',
        "wrt": '"cumulative", "layers" or "aligned" (init = "aligned"): the parameters that flow',
        "method": '"rk45", "gd", "events" (exact, aligned model, input cost) or "kinks" (experimental: '
                  'locates pattern changes, follows sliding modes)',
        "train": '"all", "weights" or "biases"',
        "frozen_layers": "list of 1-based hidden layers that stay fixed",
        "t_end": "flow time to reach (> 0)",
        "rtol": "rk45: relative tolerance",
        "atol": "rk45: absolute tolerance",
        "first_step": "rk45: first step",
        "max_step": "rk45: largest step",
        "lr": "gd: learning rate (step in flow time)",
        "record_truncation_times": "events: keep every point's first truncation time (true or false)",
        "cost_tol": "stop when the cost falls below",
        "grad_tol": "stop when the gradient norm falls below",
        "max_evals": "stop after this many gradient evaluations",
        "max_time": "stop after this many wall-clock seconds",
    },
    "record": {
        "n_records": "number of records (2 to 10^6): 0, then log-spaced from t_first to t_end (default 50)",
        "t_first": "first positive record time with n_records (default t_end/1000)",
        "times": "list of flow times in [0, t_end] to record at",
    },
    "output": {
        "folder": 'folder the results go to (default "truncflow-out"), relative to the working directory',
        "name": "name of the job (default: the config file's name)",
    },
    "run": {
        "threads": "threads the kernels run on (default: the process's share of the machine; "
                   "--threads overrides it; results do not depend on it)",
        "device": 'where the passes over the points run: "cpu" (default) or "cuda" (a GPU; needs '
                  'pip install "truncflow[cuda]"; --device overrides it)',
        "precision": '"float64" (default) or "float32": the arithmetic of the per-point sweep of rk45 and gd '
                     "(sums over points stay float64; --precision overrides it)",
    },
    "cluster": {
        "scheduler": 'address of a running Dask scheduler, e.g. "tcp://host:8786" (--scheduler overrides it)',
        "local": "start a Dask LocalCluster of this many worker processes for the run",
        "threads_per_worker": "local: Dask threads (and kernel threads) per worker process (default 1)",
    },
    "sweep": {
        "<key>": 'a list of values for a top-level key (seed) or "<section>.<key>", or a range '
                 "{ start, stop[, step] } (integers) or { start, stop, num } (evenly spaced): "
                 "one run per combination",
    },
}

DATA_SOURCES = ("gaussian", "balls", "file")
INITS = ("identity", "random", "cones", "aligned", "layers", "cumulative")
DTYPES = {"float64": np.float64, "float32": np.float32}
TARGET_WORDS = ("centers", "means", "onehot")

# Keys that only make sense for some choice of another key: key -> (owner key, allowed values).
_DATA_ONLY = {
    "n_points": ("gaussian", "balls"), "centers": ("gaussian", "balls"), "seed": ("gaussian", "balls"),
    "std": ("gaussian",), "radius": ("balls",),
    "path": ("file",), "points_key": ("file",), "labels_key": ("file",),
}
_INIT_ONLY = {
    "scale": ("random",), "bias_scale": ("random",),
    "apexes": ("cones",), "edges": ("cones",),
    "weights": ("layers",), "biases": ("layers",),
    "cum_weights": ("cumulative",), "cum_biases": ("cumulative",),
    "frames": ("aligned",), "scales": ("aligned",), "thresholds": ("aligned",),
}
# [flow] keys that apply to some methods only (the method registry says which).
_METHOD_ONLY = {key: methods_taking(key) for key in METHOD_OPTIONS}

DEFAULT_FOLDER = "truncflow-out"

#: Most records a run may ask for (as :func:`truncflow.simulate` allows).
MAX_RECORDS = 10**6


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the problem."""


@dataclass
class RunConfig:
    """A validated run configuration, ready to simulate.

    ``simulate_kwargs`` holds every keyword argument of :func:`truncflow.simulate`
    but ``callback`` and ``config`` (``t_end`` included).
    """

    params: Params
    dataset: Dataset
    simulate_kwargs: dict
    folder: Path
    seed: int | None
    name: str
    description: str
    source: str                # the file it came from, or DEFAULT_CONFIG_NAME
    text: str                  # the TOML text exactly as read
    table: dict = field(default_factory=dict)   # the parsed TOML
    data_summary: str = ""     # e.g. "3 gaussian clusters"
    init: str = ""
    threads: int | None = None  # [run] threads (None: truncflow's default)
    device: str = "cpu"         # [run] device: "cpu" or "cuda"
    cluster: dict = field(default_factory=dict)   # [cluster]: scheduler, or local and threads_per_worker
    sweep_keys: list = field(default_factory=list)     # [sweep]: the swept keys, as written
    sweep_values: list = field(default_factory=list)   # one tuple of values per member
    members: list = field(default_factory=list)        # one RunConfig per member (empty: not a sweep)

    def result_config(self) -> dict:
        """What to store with the result (JSON-friendly): seed, name, source and the parsed TOML."""
        return {"seed": self.seed, "name": self.name, "source": self.source, "toml": self.table}

    def describe(self) -> str:
        """One line saying what the job does."""
        kw = self.simulate_kwargs
        ds, p = self.dataset, self.params
        if spec(kw["method"]).adaptive:
            how = f"{kw['method']}, rtol {kw['rtol']:g}, atol {kw['atol']:g}"
        elif kw["method"] == "gd":
            how = f"gd, lr {kw['lr']:g}"
        else:
            how = "exact event-driven solution"
        if kw.get("precision", "float64") != "float64":
            how += f", {kw['precision']} sweep"
        frozen = f", frozen layers {list(kw['frozen_layers'])}" if kw["frozen_layers"] else ""
        out = f", P={p.out_dim}" if kw["kind"] == "output" else ""
        swept = (f"sweep of {len(self.members)} runs over {', '.join(self.sweep_keys)}; first: "
                 if self.members else "")
        return (f"{self.name}: {swept}{kw['kind']} cost, {kw['wrt']} flow ({how}), train {kw['train']}{frozen}, "
                f"t_end {kw['t_end']:g}; N={ds.n_points} points ({self.data_summary}, M={ds.width}, "
                f"{ds.points.dtype}); L={p.n_layers} layer{'s' if p.n_layers != 1 else ''} ({self.init}{out})"
                + (f"; on {self.device}" if self.device != "cpu" else ""))


# ------------------------------------------------------------------ reading
def default_config_text() -> str:
    """The TOML text of the built-in default job."""
    return resources.files("truncflow").joinpath("defaults/default.toml").read_text(encoding="utf-8")


def load_config(path=None) -> RunConfig:
    """Read, validate and build a run configuration; ``None`` gives the built-in default."""
    if path is None:
        return parse_config(default_config_text(), source=DEFAULT_CONFIG_NAME, name="default")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, source=str(path), base_dir=path.parent, name=path.stem)


def parse_config(text: str, *, source: str = "<string>", base_dir=None, name: str = "job") -> RunConfig:
    """Validate and build a run configuration from TOML text.

    ``base_dir``: folder that relative data paths are relative to (default: working directory).
    ``name``: job name when ``[output] name`` is not given.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    sweep = table.pop("sweep", None)
    cfg = _Builder(table, source, base_dir, name).build(text)
    if sweep is None:
        return cfg
    from .sweep import expand_sweep, member_table

    def fail(key, message):
        raise ConfigError(f"{source}: [sweep] {key + ': ' if key else ''}{message}")

    keys, values = expand_sweep(sweep, SCHEMA, fail)
    for member_values in values:
        shown = ", ".join(f"{k} = {_short(v)}" for k, v in zip(keys, member_values))
        member = _Builder(member_table(table, keys, member_values), f"{source} (sweep member {shown})",
                          base_dir, name).build(text)
        if _same_data(member.dataset, cfg.dataset):
            member.dataset = cfg.dataset        # stored once, and run as one dataset by the ensemble
        cfg.members.append(member)
    cfg.sweep_keys, cfg.sweep_values = keys, values
    table["sweep"] = sweep
    return cfg


def _same_data(a: Dataset, b: Dataset) -> bool:
    return (a.points.dtype == b.points.dtype and np.array_equal(a.points, b.points)
            and np.array_equal(a.labels, b.labels) and np.array_equal(a.targets, b.targets))


# ------------------------------------------------------------- type checks
def _type_name(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "number"
    return type(value).__name__


def _short(value) -> str:
    s = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


class _Builder:
    def __init__(self, table: dict, source: str, base_dir: Path, name: str):
        self.table = table
        self.source = source
        self.base_dir = base_dir
        self.default_name = name

    # ------------------------------------------------------------- errors
    def fail(self, section: str | None, key: str | None, message: str):
        where = ""
        if section is not None:
            where = f"[{section}] " if section else ""
            if key is not None:
                where += f"{key}: "
        raise ConfigError(f"{self.source}: {where}{message}")

    # ------------------------------------------------------------ structure
    def check_structure(self):
        sections = [s for s in SCHEMA if s]
        for key, value in self.table.items():
            if isinstance(value, dict):
                if key not in sections:
                    hint = _did_you_mean(key, sections)
                    hint = hint.replace(" '", " [").replace("'?", "]?")
                    raise ConfigError(f"{self.source}: unknown section [{key}]{hint}; allowed sections: "
                                      + ", ".join(f"[{s}]" for s in sections))
                for sub, subvalue in value.items():
                    if sub not in SCHEMA[key]:
                        hint = _did_you_mean(sub, list(SCHEMA[key]))
                        raise ConfigError(f"{self.source}: unknown key '{sub}' in [{key}]{hint}; allowed keys: "
                                          + ", ".join(SCHEMA[key]))
                    if isinstance(subvalue, dict):
                        self.fail(key, sub, "must be a value, not a table")
            elif key not in SCHEMA[""]:
                if key in sections:
                    self.fail("", None, f"'{key}' must be a section [{key}], not a value")
                hint = _did_you_mean(key, list(SCHEMA[""]))
                raise ConfigError(f"{self.source}: unknown top-level key '{key}'{hint}; allowed top-level keys: "
                                  + ", ".join(SCHEMA[""]) + "; sections: "
                                  + ", ".join(f"[{s}]" for s in sections))

    def section(self, name: str) -> dict:
        return dict(self.table.get(name, {})) if name else {k: v for k, v in self.table.items()
                                                             if not isinstance(v, dict)}

    # ---------------------------------------------------------- scalar reads
    def number(self, sec, tbl, key, *, default=None, required=False, positive=False, nonneg=False):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            self.fail(sec, key, f"must be a number, got {_type_name(v)} {_short(v)}")
        v = float(v)
        if not np.isfinite(v):
            self.fail(sec, key, f"must be finite, got {v}")
        if positive and v <= 0:
            self.fail(sec, key, f"must be > 0, got {_short(tbl[key])}")
        if nonneg and v < 0:
            self.fail(sec, key, f"must be >= 0, got {_short(tbl[key])}")
        return v

    def integer(self, sec, tbl, key, *, default=None, required=False, minimum=None, maximum=None):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required")
            return default
        v = tbl[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            self.fail(sec, key, f"must be an integer, got {_type_name(v)} {_short(v)}")
        if minimum is not None and v < minimum:
            self.fail(sec, key, f"must be an integer >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            self.fail(sec, key, f"must be an integer <= {maximum}, got {v}")
        return int(v)

    def string(self, sec, tbl, key, *, default=None, required=False, choices=None):
        if key not in tbl:
            if required:
                self.fail(sec, key, "is required" + (f" (one of {', '.join(map(repr, choices))})" if choices else ""))
            return default
        v = tbl[key]
        if not isinstance(v, str):
            self.fail(sec, key, f"must be a string, got {_type_name(v)} {_short(v)}")
        if choices is not None and v not in choices:
            self.fail(sec, key, f"unknown value {v!r}; expected one of {', '.join(map(repr, choices))}")
        return v

    def array(self, sec, tbl, key, ndim, *, shape=None, what=None):
        """A nested list of numbers with ``ndim`` levels; ``shape`` entries of None are free."""
        v = tbl[key]
        arr = self._to_array(sec, key, v, ndim, what)
        if shape is not None:
            for axis, (got, want) in enumerate(zip(arr.shape, shape)):
                if want is not None and got != want:
                    expect = "x".join("?" if s is None else str(s) for s in shape)
                    self.fail(sec, key, f"has shape {'x'.join(map(str, arr.shape))}, expected {expect}"
                                        + (f" ({what})" if what else ""))
        return arr

    def _to_array(self, sec, key, value, ndim, what):
        def shape_of(v, depth):
            if depth == 0:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    self.fail(sec, key, f"must hold numbers, found {_type_name(v)} {_short(v)}")
                return ()
            if not isinstance(v, list):
                self.fail(sec, key, f"must be a {ndim}-dimensional list"
                                    + (f" ({what})" if what else "") + f", got {_type_name(v)} {_short(v)}")
            if len(v) == 0:
                self.fail(sec, key, "must not be empty")
            shapes = {shape_of(item, depth - 1) for item in v}
            if len(shapes) != 1:
                self.fail(sec, key, "rows have different lengths (need a rectangular array)")
            return (len(v),) + shapes.pop()

        shape_of(value, ndim)
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            self.fail(sec, key, "must hold finite numbers")
        return arr

    def scalar_or_list(self, sec, tbl, key, n, *, default):
        if key not in tbl:
            return default
        v = tbl[key]
        if isinstance(v, list):
            arr = self.array(sec, tbl, key, 1, shape=(n,), what=f"one value per cluster, Q={n}")
        else:
            arr = self.number(sec, tbl, key)
        if np.any(np.asarray(arr) < 0):
            self.fail(sec, key, f"must be >= 0, got {_short(v)}")
        return arr

    def only_for(self, sec, tbl, rules, owner_key, owner_value):
        for key, allowed in rules.items():
            if key in tbl and owner_value not in allowed:
                self.fail(sec, key, f"applies only to {owner_key} = "
                                    + " or ".join(repr(a) for a in allowed) + f", not {owner_value!r}")

    def api(self, sec, key, call, *args, **kwargs):
        """Call into the API, turning its ValueError into a ConfigError naming the section."""
        try:
            return call(*args, **kwargs)
        except ConfigError:
            raise
        except ValueError as exc:
            message = str(exc)
            # The API names the argument itself ("frozen_layers must ..."): do not repeat it.
            self.fail(sec, None if key is not None and message.startswith(key) else key, message)

    # ---------------------------------------------------------------- build
    def build(self, text: str) -> RunConfig:
        self.check_structure()
        top = self.section("")
        description = self.string("", top, "description", default="")
        seed = self.integer("", top, "seed", minimum=0)

        flow = self.section("flow")
        kind = self.string("flow", flow, "kind", default="input", choices=COST_KINDS)

        dataset, data_summary, centers = self.build_data(seed, kind)
        params, init = self.build_network(seed, dataset.width, kind)
        dataset = self.finish_targets(dataset, centers, params, kind)
        kwargs = self.build_flow(flow, kind, params, dataset)
        self.build_record(kwargs)
        self.check_record_size(kwargs, params, dataset)

        out = self.section("output")
        folder = Path(self.string("output", out, "folder", default=DEFAULT_FOLDER))
        if str(folder).strip() == "":
            self.fail("output", "folder", "must not be empty")
        name = self.string("output", out, "name", default=self.default_name)
        run = self.section("run")
        threads = self.integer("run", run, "threads", minimum=1)
        device = self.string("run", run, "device", default="cpu", choices=DEVICES)
        kwargs["precision"] = self.string("run", run, "precision", default="float64", choices=PRECISIONS)
        method = spec(kwargs["method"])
        if kwargs["precision"] != "float64" and not method.float32:
            self.fail("run", "precision", f'"{kwargs["precision"]}" ' + float32_refusal(method.name, quote='"'))
        if device == "cuda" and not method.runs_on(DEVICE):
            self.fail("run", "device", gpu_refusal(method.name, quote='"'))
        cluster = self.build_cluster(kwargs)
        if device == "cuda" and cluster:
            self.fail("run", "device", "a run goes to a GPU or to a Dask cluster, not both: remove [cluster] or "
                                       'device = "cuda"')
        return RunConfig(params=params, dataset=dataset, simulate_kwargs=kwargs, folder=folder, seed=seed,
                         name=name, description=description, source=self.source, text=text,
                         table=self.table, data_summary=data_summary, init=init, threads=threads,
                         device=device, cluster=cluster)

    def build_cluster(self, kwargs) -> dict:
        """[cluster]: {"scheduler": address} or {"local": workers, "threads_per_worker": t}, or {}."""
        sec = "cluster"
        c = self.section(sec)
        scheduler = self.string(sec, c, "scheduler", default=None)
        local = self.integer(sec, c, "local", minimum=1)
        per_worker = self.integer(sec, c, "threads_per_worker", minimum=1)
        if scheduler is not None and local is not None:
            self.fail(sec, "local", "give either scheduler (connect to a cluster) or local (start one), not both")
        if per_worker is not None and local is None:
            self.fail(sec, "threads_per_worker", "applies to local = N (a cluster this run starts)")
        if scheduler is None and local is None:
            return {}
        if not spec(kwargs["method"]).runs_on(DISTRIBUTED):
            self.fail(sec, None, cluster_refusal(kwargs["method"], quote='"'))
        if scheduler is not None:
            return {"scheduler": scheduler}
        return {"local": local, "threads_per_worker": per_worker or 1}

    # ----------------------------------------------------------------- data
    def build_data(self, seed, kind):
        sec = "data"
        d = self.section(sec)
        if not d:
            self.fail(None, None, "section [data] is required (source, n_points, centers, targets, ...)")
        source = self.string(sec, d, "source", required=True, choices=DATA_SOURCES)
        self.only_for(sec, d, _DATA_ONLY, "source", source)
        dtype = DTYPES[self.string(sec, d, "dtype", default="float64", choices=tuple(DTYPES))]
        if "targets" not in d:
            self.fail(sec, "targets", "is required: a Q x M list (input cost), a Q x P list (output cost), "
                                      'or "centers", "means", "onehot"')
        centers = class_ids = None            # class IDs: 0..Q-1 unless a file says otherwise
        if source in ("gaussian", "balls"):
            n_points = self.integer(sec, d, "n_points", required=True, minimum=1)
            if "centers" not in d:
                self.fail(sec, "centers", "is required: a Q x M list of cluster centers")
            centers = self.array(sec, d, "centers", 2, what="Q clusters x M coordinates")
            Q = centers.shape[0]
            if n_points < Q:
                self.fail(sec, "n_points", f"is {n_points}, fewer than the {Q} clusters in centers")
            data_seed = self.integer(sec, d, "seed", default=seed, minimum=0)
            if source == "gaussian":
                std = self.scalar_or_list(sec, d, "std", Q, default=1.0)
                points, labels = self.api(sec, None, gaussian_clusters, n_points, centers, std,
                                          seed=data_seed, dtype=dtype)
            else:
                radius = self.scalar_or_list(sec, d, "radius", Q, default=1.0)
                points, labels = self.api(sec, None, uniform_balls, n_points, centers, radius,
                                          seed=data_seed, dtype=dtype)
            kind_of = "Gaussian cluster" if source == "gaussian" else "uniform ball"
            summary = f"{Q} {kind_of}{'s' if Q != 1 else ''}"
        else:
            path_str = self.string(sec, d, "path", required=True)
            path = Path(path_str).expanduser()
            if not path.is_absolute():
                path = (self.base_dir / path).absolute()
            keys = dict(points_key=self.string(sec, d, "points_key", default="points"),
                        labels_key=self.string(sec, d, "labels_key", default="labels"))
            points, class_labels = self.api(sec, "path", load_points, path, **keys)
            points = self.cast_points(sec, points, dtype, path)
            # The file's distinct class IDs, sorted, are the clusters 0..Q-1 (kept for display).
            labels, class_ids = encode_labels(class_labels)
            Q = class_ids.size
            summary = f"{Q} cluster{'s' if Q != 1 else ''} from {path.name}"
            if not np.array_equal(class_ids, np.arange(Q)):
                summary += f" (class IDs {_ids_text(class_ids)})"
        # Targets are resolved once the width M and the output dimension P are known.
        self._targets_raw = d["targets"]
        self._Q = Q
        # Provisional dataset with placeholder targets: validates points and labels now.
        dataset = self.api(sec, None, Dataset, points, labels, np.zeros((Q, 1)), class_ids)
        return dataset, summary, centers

    def cast_points(self, sec, points, dtype, path):
        """Points read from a file, in the configured dtype (refusing a float32 overflow)."""
        if points.dtype == dtype:
            return points
        with np.errstate(over="ignore", invalid="ignore"):
            cast = points.astype(dtype)
        if not np.isfinite(cast).all():
            self.fail(sec, "dtype", f"{path}: the points do not fit in {np.dtype(dtype).name} "
                                    f"(largest |x| = {np.max(np.abs(points)):.3g})")
        return cast

    def finish_targets(self, dataset, centers, params, kind):
        sec, key = "data", "targets"
        raw = self._targets_raw
        Q, M = self._Q, dataset.width
        if kind == "input":
            dim, what = M, f"Q={Q} clusters x M={M} coordinates (input cost)"
        else:
            dim, what = params.out_dim, f"Q={Q} clusters x P={params.out_dim} outputs (output cost)"
        if isinstance(raw, str):
            if raw not in TARGET_WORDS:
                self.fail(sec, key, f"unknown value {raw!r}; expected a list or one of "
                                    + ", ".join(map(repr, TARGET_WORDS)))
            if raw in ("centers", "means") and kind != "input":
                self.fail(sec, key, f'"{raw}" gives input-space targets (Q x M) but [flow] kind = "output" '
                                    f"needs Q x P targets; give a list or \"onehot\"")
            if raw == "centers":
                if centers is None:
                    self.fail(sec, key, '"centers" needs source = "gaussian" or "balls"; '
                                        'use "means" (the cluster means) for a file')
                targets = centers
            elif raw == "means":
                from .observe import cluster_means
                targets = cluster_means(dataset)
                if not np.isfinite(targets).all():
                    self.fail(sec, key, '"means": the cluster means overflow float64 (points too large)')
            else:  # onehot
                if kind != "output":
                    self.fail(sec, key, '"onehot" is for the output cost ([flow] kind = "output")')
                if params.out_dim != Q:
                    self.fail(sec, key, f'"onehot" needs an output dimension P equal to the number of '
                                        f"clusters Q={Q}, but P={params.out_dim}")
                targets = np.eye(Q)
        else:
            targets = self.array(sec, {key: raw}, key, 2, shape=(None, dim), what=what)
            if targets.shape[0] != Q:
                ids = dataset.class_ids
                per = "" if np.array_equal(ids, np.arange(Q)) else \
                    f"; one row per class ID {_ids_text(ids)}, in this order"
                self.fail(sec, key, f"has {targets.shape[0]} rows but the data has Q={Q} clusters "
                                    f"(expected {what}{per})")
        return self.api(sec, key, dataset.with_targets, targets)

    # -------------------------------------------------------------- network
    def build_network(self, seed, M, kind):
        sec = "network"
        n = self.section(sec)
        init = self.string(sec, n, "init", default="identity", choices=INITS)
        self.only_for(sec, n, _INIT_ONLY, "init", init)
        L = self.integer(sec, n, "layers", minimum=1, maximum=MAX_LAYERS)
        out_dim = self.integer(sec, n, "out_dim", minimum=1)
        if out_dim is not None:
            self.api(sec, "out_dim", require_memory, 8 * 4 * out_dim * (M + 1),
                     f"out_dim = {out_dim}: an output layer of {out_dim} x M={M}")
        if L is not None:
            self.api(sec, "layers", check_network_size, L, M, out_dim or 0, name="layers")

        def need_layers():
            if L is None:
                self.fail(sec, "layers", f"is required for init = {init!r}")
            return L

        def stack(key, ndim, what):
            if key not in n:
                self.fail(sec, key, f"is required for init = {init!r} ({what})")
            shape = (L, M, M) if ndim == 3 else (L, M)
            arr = self.array(sec, n, key, ndim, shape=(None,) + shape[1:], what=what)
            if L is not None and arr.shape[0] != L:
                self.fail(sec, key, f"has {arr.shape[0]} layers but layers = {L}")
            self.api(sec, key, check_network_size, arr.shape[0], M, out_dim or 0, name=key)
            return arr

        # Output layer: explicit, or random of dimension out_dim.
        ow = ob = None
        if ("out_weight" in n) != ("out_bias" in n):
            self.fail(sec, "out_weight" if "out_bias" in n else "out_bias",
                      "out_weight and out_bias must be given together")
        if "out_weight" in n:
            ow = self.array(sec, n, "out_weight", 2, shape=(out_dim, M), what=f"P x M={M}")
            ob = self.array(sec, n, "out_bias", 1, shape=(ow.shape[0],), what=f"P={ow.shape[0]}")
        if kind == "output" and ow is None and out_dim is None:
            self.fail(sec, None, 'the output cost ([flow] kind = "output") needs an output layer: '
                                 "give out_dim (a random output layer) or out_weight and out_bias")
        net_seed = self.integer(sec, n, "seed", default=seed, minimum=0)
        random_frames = init == "aligned" and n.get("frames") == "random"
        if "seed" in n and init != "random" and not random_frames and (out_dim is None or ow is not None):
            self.fail(sec, "seed", f"applies only to init = 'random', random frames or a random output layer "
                                   f"(out_dim), not init = {init!r}")
        if ow is None and out_dim is not None and init != "random":
            rng = np.random.default_rng(net_seed)
            ow = rng.standard_normal((out_dim, M)) / np.sqrt(M)
            ob = np.zeros(out_dim)

        if init == "identity":
            L = need_layers()
            params = self.api(sec, None, Params.from_cumulative, np.tile(np.eye(M), (L, 1, 1)),
                              np.zeros((L, M)), ow, ob)
            desc = "identity"
        elif init == "random":
            L = need_layers()
            scale = self.number(sec, n, "scale", default=1.0, nonneg=True)
            bias_scale = self.number(sec, n, "bias_scale", default=0.1, nonneg=True)
            params = self.api(sec, None, Params.random, L, M, scale=scale, bias_scale=bias_scale,
                              out_dim=out_dim if ow is None else None, seed=net_seed)
            if ow is not None:
                params = self.api(sec, None, params.with_output, ow, ob)
            desc = f"random, scale {scale:g}"
        elif init == "cones":
            apexes = stack("apexes", 2, f"L x M={M} cone apexes")
            L = apexes.shape[0]
            if "edges" in n:
                edges = self.array(sec, n, "edges", 3, shape=(L, M, M), what=f"L={L} x M={M} x M={M} cone edges")
                try:
                    cum_w = np.linalg.inv(edges)
                except np.linalg.LinAlgError:
                    cum_w = None
                if cum_w is None or not np.all(np.isfinite(cum_w)):
                    self.fail(sec, "edges", "the edges of some layer are linearly dependent (singular matrix)")
            else:
                cum_w = np.tile(np.eye(M), (L, 1, 1))
            with np.errstate(over="ignore", invalid="ignore"):
                cum_b = -np.einsum("lij,lj->li", cum_w, apexes)
            if not np.isfinite(cum_b).all():
                self.fail(sec, "apexes", "the biases b = -W p of the cones overflow float64 (apexes too large "
                                         "for these edges)")
            params = self.api(sec, None, Params.from_cumulative, cum_w, cum_b, ow, ob)
            desc = "cones"
        elif init == "aligned":
            t = stack("thresholds", 2, f"L x M={M} thresholds")
            L = t.shape[0]
            frames = n.get("frames", "identity")
            if frames == "identity":
                frames = np.tile(np.eye(M), (L, 1, 1))
            elif frames == "random":
                q, r = np.linalg.qr(np.random.default_rng(net_seed).standard_normal((L, M, M)))
                frames = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
            elif isinstance(frames, str):
                self.fail(sec, "frames", f'must be "identity", "random" or an L x M x M list, got {_short(frames)}')
            else:
                frames = self.array(sec, n, "frames", 3, shape=(L, M, M), what=f"L={L} x M={M} x M={M} frames")
            if isinstance(n.get("scales"), list):
                scales = self.array(sec, n, "scales", 2, shape=(L, M), what=f"L={L} x M={M} scales")
            else:
                scales = np.full((L, M), self.number(sec, n, "scales", default=1.0, positive=True))
            with np.errstate(over="ignore"):
                biases = -scales * t
            if not np.isfinite(biases).all():
                self.fail(sec, "thresholds", "the biases -scales * thresholds overflow float64 (thresholds or "
                                             "scales too large)")
            params = self.api(sec, None, Params.aligned, frames, scales, biases, ow, ob)
            desc = "aligned"
        elif init == "layers":
            w = stack("weights", 3, f"L x M={M} x M={M}")
            L = w.shape[0]
            b = stack("biases", 2, f"L={L} x M={M}")
            params = self.api(sec, None, Params.from_layers, w, b, ow, ob)
            desc = "given layer weights"
        else:
            w = stack("cum_weights", 3, f"L x M={M} x M={M}")
            L = w.shape[0]
            b = stack("cum_biases", 2, f"L={L} x M={M}")
            params = self.api(sec, None, Params.from_cumulative, w, b, ow, ob)
            desc = "given cumulative weights"
        return params, desc

    # ----------------------------------------------------------------- flow
    def build_flow(self, f, kind, params, dataset):
        sec = "flow"
        wrt = self.string(sec, f, "wrt", default="cumulative", choices=PARAMETRIZATIONS)
        method = self.string(sec, f, "method", default="rk45", choices=METHOD_NAMES)
        self.only_for(sec, f, _METHOD_ONLY, "method", method)
        train = self.string(sec, f, "train", default="all", choices=TRAIN_OPTIONS)
        frozen = ()
        if "frozen_layers" in f:
            v = f["frozen_layers"]
            if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in v):
                self.fail(sec, "frozen_layers", f"must be a list of layer numbers, got {_short(v)}")
            frozen = tuple(int(x) for x in v)
        t_end = self.number(sec, f, "t_end", required=True, positive=True)
        kw = dict(t_end=t_end, kind=kind, wrt=wrt, method=method, train=train, frozen_layers=frozen)
        if spec(method).adaptive:
            kw["rtol"] = self.number(sec, f, "rtol", default=1e-6, positive=True)
            kw["atol"] = self.number(sec, f, "atol", default=1e-9, positive=True)
            kw["first_step"] = self.number(sec, f, "first_step", positive=True)
            kw["max_step"] = self.number(sec, f, "max_step", positive=True)
        elif method == "gd":
            if "lr" not in f:
                self.fail(sec, "lr", 'is required for method = "gd" (the learning rate, > 0)')
            kw["lr"] = self.number(sec, f, "lr", positive=True)
        else:
            v = f.get("record_truncation_times", False)
            if not isinstance(v, bool):
                self.fail(sec, "record_truncation_times", f"must be true or false, got {_short(v)}")
            kw["record_truncation_times"] = v
        for key in ("cost_tol", "grad_tol", "max_time"):
            kw[key] = self.number(sec, f, key, positive=True)
        kw["max_evals"] = self.integer(sec, f, "max_evals", minimum=1)
        # Let the engine check the rest (frozen layers in range, something left to train, shapes).
        problem = self.api(sec, "frozen_layers" if frozen else None, FlowProblem, params, dataset, kind=kind,
                           wrt=wrt, train=train, frozen_layers=frozen)
        if method == "events":
            self.api(sec, "method", check_events_problem, problem)
        return kw

    def build_record(self, kw):
        sec = "record"
        r = self.section(sec)
        for key in ("n_records", "t_first"):
            if key in r and "times" in r:
                self.fail(sec, key, "give times, or n_records and t_first, not both")
        if "times" in r:
            times = self.array(sec, r, "times", 1, what="flow times")
            if times.min() < 0 or times.max() > kw["t_end"]:
                self.fail(sec, "times", f"must lie in [0, t_end = {kw['t_end']:g}]")
            kw["record_times"] = times
        else:
            n_records = self.integer(sec, r, "n_records", default=50, minimum=2, maximum=MAX_RECORDS)
            t_first = self.number(sec, r, "t_first", positive=True)
            if t_first is None:
                kw["n_records"] = n_records
            else:
                if t_first >= kw["t_end"]:
                    self.fail(sec, "t_first", f"must be below t_end = {kw['t_end']:g}, got {t_first:g}")
                kw["record_times"] = np.geomspace(t_first, kw["t_end"], n_records - 1)

    def check_record_size(self, kw, params, dataset):
        """Refuse records that would not fit in memory (each keeps both parameter forms and
        the (L, Q, M) observables), naming the key that sets their number."""
        n = len(kw["record_times"]) + 1 if "record_times" in kw else kw["n_records"]
        key = "times" if "times" in self.section("record") else "n_records"
        L, M, Q, P = params.n_layers, params.width, dataset.n_clusters, params.out_dim or 0
        per_record = 8 * (2 * L * M * (M + 1) + L * Q * (M + 6) + L + Q + P * (M + 1) + 16)
        self.api("record", key, require_memory, n * per_record,
                 f"{key}: {n} records of L={L} layers, Q={Q} clusters, width M={M}")


def _ids_text(ids, limit: int = 8) -> str:
    """'1, 2, 5' or '0, 1, ..., 999': class IDs for a message."""
    ids = [int(i) for i in ids]
    return ", ".join(map(str, ids)) if len(ids) <= limit else \
        ", ".join(map(str, ids[:limit - 1])) + f", ..., {ids[-1]}"


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
