"""Reading a configuration and building it section by section: :func:`load_config`,
:func:`parse_config`. Each section's builder takes what it needs as arguments and
returns what it read; :func:`build` passes it on."""
from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import numpy as np

from ..compute import COST_KINDS
from ..data import Dataset
from .data import build_data, finish_targets
from .flow import build_flow, build_record, check_record_size
from .network import build_network
from .reader import ConfigError, Reader, short
from .run import build_cluster, build_output, build_run
from .runconfig import RunConfig
from .schema import DEFAULT_CONFIG_NAME, SCHEMA


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
    cfg = build(Reader(table, source, base_dir, name), text)
    if sweep is None:
        return cfg
    from ..sweep import expand_sweep, member_table

    def fail(key, message):
        raise ConfigError(f"{source}: [sweep] {key + ': ' if key else ''}{message}")

    keys, values = expand_sweep(sweep, SCHEMA, fail)
    for member_values in values:
        shown = ", ".join(f"{k} = {short(v)}" for k, v in zip(keys, member_values))
        member = build(Reader(member_table(table, keys, member_values), f"{source} (sweep member {shown})",
                              base_dir, name), text)
        if _same_data(member.dataset, cfg.dataset):
            member.dataset = cfg.dataset        # stored once, and run as one dataset by the ensemble
        cfg.members.append(member)
    cfg.sweep_keys, cfg.sweep_values = keys, values
    table["sweep"] = sweep
    return cfg


def build(r: Reader, text: str) -> RunConfig:
    """The RunConfig of one table (a configuration, or one member of a sweep)."""
    r.check_structure()
    top = r.section("")
    description = r.string("", top, "description", default="")
    seed = r.integer("", top, "seed", minimum=0)

    flow = r.section("flow")
    kind = r.string("flow", flow, "kind", default="input", choices=COST_KINDS)

    data = build_data(r, seed)
    params, init = build_network(r, seed, data.dataset.width, kind)
    dataset = finish_targets(r, data, params, kind)
    kwargs = build_flow(r, flow, kind, params, dataset, seed)
    kwargs.update(build_record(r, kwargs["t_end"]))
    check_record_size(r, kwargs, params, dataset)

    folder, name = build_output(r)
    run = build_run(r, kwargs["method"])
    kwargs["precision"] = run.precision
    cluster = build_cluster(r, kwargs["method"])
    if run.device == "cuda" and cluster:
        r.fail("run", "device", "a run goes to a GPU or to a Dask cluster, not both: remove [cluster] or "
                                'device = "cuda"')
    return RunConfig(params=params, dataset=dataset, simulate_kwargs=kwargs, folder=folder, seed=seed,
                     name=name, description=description, source=r.source, text=text,
                     table=r.table, data_summary=data.summary, init=init, threads=run.threads,
                     device=run.device, cluster=cluster)


def _same_data(a: Dataset, b: Dataset) -> bool:
    return (a.points.dtype == b.points.dtype and np.array_equal(a.points, b.points)
            and np.array_equal(a.labels, b.labels) and np.array_equal(a.targets, b.targets))
