"""``truncflow run``: a job, a resumed job (--resume), or a sweep's members, into an output folder."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from .cluster import connect_timeout, dask_client
from .info import kernels_cached
from .outputs import OutputFolder, ProgressBar, write_outputs
from .parser import CHECKPOINT_FILE, CONFIG_FILE, PROG, UsageError, one_line


def _apply_device_options(cfg, args) -> None:
    """--device and --precision over [run] device and precision (the file's own keys were
    checked by the configuration); a GPU run first checks that the GPU can be used."""
    from ..engine.methods import DEVICE, float32_refusal, gpu_refusal, spec
    method = cfg.simulate_kwargs["method"]
    if getattr(args, "device", None) is not None:
        if args.device != "cpu" and not spec(method).runs_on(DEVICE):
            raise ValueError(f"--device {args.device}: " + gpu_refusal(method))
        cfg.device = args.device
    if getattr(args, "precision", None) is not None:
        if args.precision != "float64" and not spec(method).float32:
            raise ValueError(f"--precision {args.precision} " + float32_refusal(method))
        cfg.simulate_kwargs["precision"] = args.precision
    if cfg.device == "cuda" and not args.check:
        from ..device import require_cuda
        require_cuda()          # before the output folder is touched


def _set_threads(n, what):
    if n is None:
        return
    from ..threads import set_threads
    try:
        set_threads(n)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def run_command(args) -> int:
    """``truncflow run``: the exit code (see the package's docstring)."""
    from ..config import load_config
    from ..engine.control import SignalGuard

    if args.resume is not None and (args.config is not None or args.out is not None or args.overwrite):
        raise UsageError("--resume FOLDER takes the configuration and the output folder from FOLDER: "
                          "give no CONFIG.toml, --out or --overwrite with it")
    if not (args.checkpoint_every >= 0):
        raise UsageError(f"--checkpoint-every must be a number of seconds >= 0, got {args.checkpoint_every}")
    connect_timeout(args.connect_timeout, {})          # a bad --connect-timeout is a usage error, at once
    if args.resume is not None:
        folder = Path(args.resume)
        if not (folder / CONFIG_FILE).is_file():
            raise ValueError(f"cannot resume {folder}: it holds no {CONFIG_FILE} of a truncflow run")
        cfg = load_config(folder / CONFIG_FILE)
        if cfg.members:
            raise ValueError(f"cannot resume {folder}: a sweep is not checkpointed (run it again with --overwrite)")
        if not (folder / CHECKPOINT_FILE).is_file():
            raise ValueError(f"cannot resume {folder}: it holds no {CHECKPOINT_FILE} (the run finished, or "
                             "it was stopped before its first checkpoint: run it again with --overwrite)")
    else:
        cfg = load_config(args.config)
        folder = Path(args.out) if args.out is not None else cfg.folder
    _apply_device_options(cfg, args)
    if args.threads is not None:
        _set_threads(args.threads, "--threads")
    else:
        _set_threads(cfg.threads, f"{cfg.source}: [run] threads")
    say = (lambda *a, **k: None) if args.quiet else print
    say(f"{PROG}: {cfg.describe()}")
    if cfg.description:
        say(f"  {cfg.description}")
    if args.check:
        if args.quiet:
            return 0
        print(f"configuration OK ({cfg.source}); results would go to {folder}/")
        return 0
    if cfg.members:
        if cfg.cluster or args.scheduler:
            raise ValueError(f"{cfg.source}: a sweep runs its members on this machine, not on a Dask cluster "
                             "(remove [cluster] or --scheduler)")
        if cfg.device != "cpu":
            raise ValueError(f"{cfg.source}: a sweep runs its members on the CPU (remove device = \"cuda\" or "
                             "--device cuda)")
        return _run_sweep(cfg, folder, args, say)
    try:
        with SignalGuard() as guard, OutputFolder(folder, overwrite=args.overwrite,
                                                  resume=args.resume is not None) as out:
            if args.resume is None:
                out.write_config(cfg.text)
            result, elapsed = _simulate(cfg, folder, args, guard=guard, out=out)   # raises if nothing was recorded
            out.flow_started()                              # (the run may have stopped before its first step)
            guard.saving = True                             # a signal now is noted, not raised, even while
            written = write_outputs(result, cfg, folder)    # the plots compile their kernels
            out.finish(result, written)                     # the checkpoint goes once the outputs are whole
    except _StoppedBeforeStart as stop:
        from ..engine.control import SIGNAL_EXIT_CODES
        print(f"{PROG}: interrupted ({stop.signal_name}) before the run started; nothing was written to "
              f"{folder}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(stop.signal_name, 130)
    if not args.quiet:
        print(result.summary())
        print(f"wall time {elapsed:.1f} s")
        for label, path in written:
            print(f"wrote {label}: {path}")
    if guard.received is not None or result.status == "interrupted":
        from ..engine.control import SIGNAL_EXIT_CODES
        signal_name = guard.received or "SIGINT"
        if result.status == "interrupted":
            print(f"{PROG}: interrupted ({signal_name}) at t = {result.t[-1]:.6g}; what was recorded is in "
                  f"{folder} (continue with '{PROG} run --resume {folder}')", file=sys.stderr)
        else:   # the signal came after the run, while its files were written: they are whole
            print(f"{PROG}: interrupted ({signal_name}) while saving; the run had stopped ({result.status}) and "
                  f"its results are complete in {folder}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(signal_name, 130)
    if not result.success:
        print(f"{PROG}: run stopped: {result.status} ({one_line(result.message)}); "
              f"what was recorded is in {folder}", file=sys.stderr)
        return 1
    return 0


def _run_sweep(cfg, folder: Path, args, say) -> int:
    """Run every member of a sweep; one result per member, summary.csv and summary.png."""
    from ..engine.control import SIGNAL_EXIT_CODES, SignalGuard
    from ..sweep import format_summary, run_sweep, summary_rows, write_sweep

    with SignalGuard() as guard, OutputFolder(folder, overwrite=args.overwrite, resume=False) as out:
        out.write_config(cfg.text)
        started = time.perf_counter()
        results = run_sweep(cfg, say)
        elapsed = time.perf_counter() - started
        out.flow_started()          # an earlier run's files go now, not before the members ran
        guard.saving = True         # a signal now is noted, not raised (see run_command)
        written = write_sweep(cfg, results, folder)
    say(format_summary(summary_rows(cfg, results)))
    say(f"wall time {elapsed:.1f} s")
    for label, path in written:
        say(f"wrote {label}: {path}")
    if guard.received is not None or any(r.status == "interrupted" for r in results):
        print(f"{PROG}: interrupted; what was recorded is in {folder}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(guard.received or "SIGINT", 130)
    failed = [i for i, r in enumerate(results) if not r.success]
    if failed:
        print(f"{PROG}: {len(failed)} of {len(results)} runs stopped early (members {_ids(failed)}: "
              f"{results[failed[0]].status}); see {folder / 'summary.csv'}", file=sys.stderr)
        return 1
    return 0


def _ids(items, limit=8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _simulate(cfg, folder: Path, args, guard=None, out=None):
    """Run the configured flow with a progress bar; (Result, wall seconds).

    ``out`` (the :class:`~truncflow.cli.outputs.OutputFolder`) is told when the flow has started (its first
    step); a signal noted by ``guard`` before the flow is started stops here, with
    :class:`_StoppedBeforeStart`, so that the folder is left as it was.
    """
    from .. import simulate
    from ..engine.methods import DISTRIBUTED, cluster_refusal
    from ..engine.methods import spec as method_spec

    if not args.quiet and not kernels_cached():
        print("compiling the Numba kernels for the first time (takes a while; they are cached for "
              "later runs)", file=sys.stderr)
    kwargs = dict(cfg.simulate_kwargs)
    spec = dict(cfg.cluster or {})
    timeout = connect_timeout(getattr(args, "connect_timeout", None), spec)
    spec.pop("connect_timeout", None)
    if args.scheduler:
        spec = {"scheduler": args.scheduler}
    cluster = spec if ("scheduler" in spec or "local" in spec) else {}
    if cluster and cfg.device != "cpu":
        raise ValueError("a run goes to a GPU or to a Dask cluster, not both: drop --device cuda or --scheduler")
    if cfg.device != "cpu":
        if args.resume is not None:
            raise ValueError(f"cannot resume {folder}: a run on a GPU is not checkpointed")
    elif cluster:
        if args.resume is not None:
            raise ValueError(f"cannot resume {folder}: a run on a Dask cluster is not checkpointed")
        if not method_spec(kwargs["method"]).runs_on(DISTRIBUTED):
            raise ValueError(cluster_refusal(kwargs["method"]))
    elif method_spec(kwargs["method"]).checkpoints:
        # keep_checkpoint: the checkpoint is removed here once result.npz and the plots are written
        kwargs.update(checkpoint=folder / CHECKPOINT_FILE, checkpoint_every=args.checkpoint_every,
                      resume=args.resume is not None, keep_checkpoint=True)
    elif args.resume is not None:
        raise ValueError(f"cannot resume {folder}: method={kwargs['method']!r} runs are not checkpointed")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        dataset = cfg.dataset
        if cluster:
            from ..distributed import distribute
            client = stack.enter_context(dask_client(cluster, timeout))
            d = cfg.dataset
            dataset = distribute(d.points, d.labels, d.targets, client, class_ids=d.class_ids)
            if not args.quiet:
                print(f"on a Dask cluster: {dataset}", file=sys.stderr)
        elif cfg.device != "cpu":
            dataset = cfg.dataset.to(cfg.device)
            if not args.quiet:
                print(f"on the GPU: {dataset}", file=sys.stderr)
        if guard is not None and guard.received is not None:
            raise _StoppedBeforeStart(guard.received)      # Ctrl-C while connecting, uploading, ...
        bar = ProgressBar(kwargs["t_end"], disable=args.quiet)

        def progress(t, cost):
            if out is not None:
                out.flow_started()
            bar.update(t, cost)

        try:
            result = simulate(cfg.params, dataset, callback=progress, config=cfg.result_config(), **kwargs)
        finally:
            bar.close()
    return result, time.perf_counter() - started


class _StoppedBeforeStart(Exception):
    """A signal arrived before the flow started: the run stops with its folder as it was."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
