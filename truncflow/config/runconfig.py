"""A validated run configuration: :class:`RunConfig`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data import Dataset
from ..engine.methods import spec
from ..params import Params


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
        elif kw["method"] == "sgd":
            how = (f"sgd, lr {kw['lr']:g}, batch_size {kw['batch_size']}"
                   f"{' with replacement' if kw['replacement'] else ''}, seed {kw['seed']}"
                   + (f", momentum {kw['momentum']:g}" if kw["momentum"] else ""))
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

