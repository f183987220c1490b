"""The ``truncflow`` command line.

    truncflow run [CONFIG.toml] [--out FOLDER] [--overwrite] [--checkpoint-every S] [--quiet]
                  [--threads N] [--check]
    truncflow run --resume FOLDER
    truncflow plot RESULT.npz [--out FOLDER] [--snapshots K]
    truncflow info

``run`` without a file runs the built-in default job (truncflow/defaults/default.toml).
The output folder is checked before the run: it must be writable, and a folder that
is not empty is refused unless ``--overwrite`` is given; while a run writes into a
folder it holds a lock file there, so a second run into the same folder is refused.
The configuration is copied there first, and the run's state is checkpointed there
(``checkpoint.npz``) so that ``--resume FOLDER`` continues a run that was killed.
Exit codes: 0 success; 1 the run stopped without success (diverged, failed, budget
reached) -- what was recorded is still saved and plotted; 2 a usage or configuration
error (one line on stderr, no traceback); 130 interrupted by SIGINT (Ctrl-C), 143 by
SIGTERM -- what was recorded is saved, and the run can be resumed.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from .device import CudaUnavailableError

__all__ = ["main"]

PROG = "truncflow"
RESULT_FILE = "result.npz"
PLOT_FILE = "plot.png"
SNAPSHOTS_FILE = "snapshots.png"
CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.npz"
LOCK_FILE = ".truncflow.lock"
#: Files a run writes into its folder (what --overwrite replaces).
OUTPUT_FILES = (RESULT_FILE, PLOT_FILE, SNAPSHOTS_FILE, CONFIG_FILE, CHECKPOINT_FILE)
SWEEP_FILES = ("summary.csv", "summary.png")     # a sweep's (truncflow/sweep.py), with SWEEP_MEMBERS/
SWEEP_MEMBERS = "members"


class _UsageError(Exception):
    """Raised instead of argparse's own exit, so every user error prints one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see '{PROG} --help')")


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _error(message) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Gradient flow of deep ReLU networks seen from the input space: "
                                            "truncation maps and dynamical truncation of training data.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run a job from a TOML configuration (default: the built-in job)",
                         description="Run the gradient flow a TOML configuration describes and write "
                                     f"{RESULT_FILE}, {PLOT_FILE} and {CONFIG_FILE} into the output folder.")
    run.add_argument("config", nargs="?", metavar="CONFIG.toml",
                     help="run configuration (default: the built-in default job)")
    run.add_argument("--out", metavar="FOLDER", help="output folder (overrides [output] folder)")
    run.add_argument("--overwrite", action="store_true",
                     help="write into an output folder that is not empty, replacing an earlier run's files")
    run.add_argument("--resume", metavar="FOLDER",
                     help="continue the run in FOLDER (killed or interrupted) from its last checkpoint")
    run.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                     help="write the run's state to FOLDER/checkpoint.npz at most this often (default 60)")
    run.add_argument("--quiet", "-q", action="store_true",
                     help="no description, progress bar or summary; only errors and the failure message")
    run.add_argument("--threads", type=int, metavar="N",
                     help="threads the kernels run on (default: [run] threads, else the process's share of the "
                          "machine: affinity, cgroup quota, OMP_NUM_THREADS)")
    run.add_argument("--device", choices=("cpu", "cuda"),
                     help='where the passes over the points run (overrides [run] device; "cuda" needs a GPU and '
                          'pip install "truncflow[cuda]")')
    run.add_argument("--precision", choices=("float64", "float32"),
                     help="arithmetic of the per-point sweep, rk45 and gd (overrides [run] precision)")
    run.add_argument("--check", action="store_true",
                     help="validate the configuration, print what it would run, and exit")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on the Dask cluster of this scheduler, e.g. tcp://host:8786 (overrides [cluster]; "
                          'needs pip install "truncflow[distributed]")')
    plot = sub.add_parser("plot", help="draw the plots of a saved result",
                          description=f"Draw {PLOT_FILE} (cost, truncated fractions, thresholds or apexes "
                                      f"against time) and {SNAPSHOTS_FILE} (data and cones at a few records) "
                                      "of a result file written by 'truncflow run' or Result.save.")
    plot.add_argument("result", metavar="RESULT.npz", help="a result file")
    plot.add_argument("--out", metavar="FOLDER", help="folder for the PNG files (default: the result's folder)")
    plot.add_argument("--snapshots", type=int, default=4, metavar="K", help="number of snapshots (default 4)")
    info = sub.add_parser("info", help="versions, threads, the compiled-kernel cache and the GPUs",
                          description="Print versions, Numba threading, whether compiled kernels are cached, "
                                      "and the GPUs the CUDA kernels can use.")
    info.add_argument("--scheduler", metavar="ADDRESS",
                      help="also list the workers of this Dask scheduler: their threads and memory")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``truncflow`` script; returns the exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if args.command == "info":
            return _info(args.scheduler)
        if args.command == "plot":
            return _plot(args)
        return _run(args)
    except _UsageError as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`truncflow info | head`): stop quietly
        sys.stdout = None
        return 0
    except (ValueError, OSError, ImportError, CudaUnavailableError) as exc:  # ConfigError is a ValueError
        return _error(exc)
    except MemoryError:
        return _error("out of memory (is n_points or a layer size too large?)")


# --------------------------------------------------------------------- run
def _apply_device_options(cfg, args) -> None:
    """--device and --precision over [run] device and precision (the file's own keys were
    checked by the configuration); a GPU run first checks that the GPU can be used."""
    from .engine.integrate import DISTRIBUTED_METHODS
    method = cfg.simulate_kwargs["method"]
    if getattr(args, "device", None) is not None:
        if args.device != "cpu" and method not in DISTRIBUTED_METHODS:
            raise ValueError(f"--device {args.device}: a GPU runs method 'rk45' or 'gd', not {method!r}")
        cfg.device = args.device
    if getattr(args, "precision", None) is not None:
        if args.precision != "float64" and method not in DISTRIBUTED_METHODS:
            raise ValueError(f"--precision {args.precision} applies to method 'rk45' or 'gd', not {method!r}")
        cfg.simulate_kwargs["precision"] = args.precision
    if cfg.device == "cuda" and not args.check:
        from .device import require_cuda
        require_cuda()          # before the output folder is touched


def _set_threads(n, what):
    if n is None:
        return
    from .threads import set_threads
    try:
        set_threads(n)
    except ValueError as exc:
        raise _UsageError(f"{what}: {exc}") from None


def _run(args) -> int:
    from .config import load_config
    from .engine.control import SignalGuard

    if args.resume is not None and (args.config is not None or args.out is not None or args.overwrite):
        raise _UsageError("--resume FOLDER takes the configuration and the output folder from FOLDER: "
                          "give no CONFIG.toml, --out or --overwrite with it")
    if not (args.checkpoint_every >= 0):
        raise _UsageError(f"--checkpoint-every must be a number of seconds >= 0, got {args.checkpoint_every}")
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
    with SignalGuard() as guard, _OutputFolder(folder, overwrite=args.overwrite, resume=args.resume is not None):
        if args.resume is None:
            _write_text(folder / CONFIG_FILE, cfg.text)
        result, elapsed = _simulate(cfg, folder, args)
        written = _write_outputs(result, cfg, folder)   # a signal now is noted, not raised
    if not args.quiet:
        print(result.summary())
        print(f"wall time {elapsed:.1f} s")
        for label, path in written:
            print(f"wrote {label}: {path}")
    if guard.received is not None or result.status == "interrupted":
        from .engine.control import SIGNAL_EXIT_CODES
        signal_name = guard.received or "SIGINT"
        if result.status == "interrupted":
            print(f"{PROG}: interrupted ({signal_name}) at t = {result.t[-1]:.6g}; what was recorded is in "
                  f"{folder} (continue with '{PROG} run --resume {folder}')", file=sys.stderr)
        else:   # the signal came after the run, while its files were written: they are whole
            print(f"{PROG}: interrupted ({signal_name}) while saving; the run had stopped ({result.status}) and "
                  f"its results are complete in {folder}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(signal_name, 130)
    if not result.success:
        print(f"{PROG}: run stopped: {result.status} ({_one_line(result.message)}); "
              f"what was recorded is in {folder}", file=sys.stderr)
        return 1
    return 0


def _run_sweep(cfg, folder: Path, args, say) -> int:
    """Run every member of a sweep; one result per member, summary.csv and summary.png."""
    from .engine.control import SIGNAL_EXIT_CODES, SignalGuard
    from .sweep import format_summary, run_sweep, summary_rows, write_sweep

    with SignalGuard() as guard, _OutputFolder(folder, overwrite=args.overwrite, resume=False):
        _write_text(folder / CONFIG_FILE, cfg.text)
        started = time.perf_counter()
        results = run_sweep(cfg, say)
        elapsed = time.perf_counter() - started
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


def _simulate(cfg, folder: Path, args):
    """Run the configured flow with a progress bar; (Result, wall seconds)."""
    from . import simulate

    if not args.quiet and not _kernels_cached():
        print("compiling the Numba kernels for the first time (takes a while; they are cached for "
              "later runs)", file=sys.stderr)
    kwargs = dict(cfg.simulate_kwargs)
    cluster = {"scheduler": args.scheduler} if args.scheduler else cfg.cluster
    if cluster and cfg.device != "cpu":
        raise ValueError("a run goes to a GPU or to a Dask cluster, not both: drop --device cuda or --scheduler")
    if cfg.device != "cpu":
        if args.resume is not None:
            raise ValueError(f"cannot resume {folder}: a run on a GPU is not checkpointed")
    elif cluster:
        if args.resume is not None:
            raise ValueError(f"cannot resume {folder}: a run on a Dask cluster is not checkpointed")
        if kwargs["method"] not in ("rk45", "gd"):
            raise ValueError(f"a Dask cluster runs method 'rk45' or 'gd', not {kwargs['method']!r}")
    elif kwargs["method"] in ("rk45", "gd"):
        kwargs.update(checkpoint=folder / CHECKPOINT_FILE, checkpoint_every=args.checkpoint_every,
                      resume=args.resume is not None)
    elif args.resume is not None:
        raise ValueError(f"cannot resume {folder}: method={kwargs['method']!r} runs are not checkpointed")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        dataset = cfg.dataset
        if cluster:
            from .distributed import distribute
            client = stack.enter_context(_dask_client(cluster))
            d = cfg.dataset
            dataset = distribute(d.points, d.labels, d.targets, client, class_ids=d.class_ids)
            if not args.quiet:
                print(f"on a Dask cluster: {dataset}", file=sys.stderr)
        elif cfg.device != "cpu":
            dataset = cfg.dataset.to(cfg.device)
            if not args.quiet:
                print(f"on the GPU: {dataset}", file=sys.stderr)
        bar = _ProgressBar(kwargs["t_end"], disable=args.quiet)
        try:
            result = simulate(cfg.params, dataset, callback=bar.update, config=cfg.result_config(), **kwargs)
        finally:
            bar.close()
    return result, time.perf_counter() - started


class _OutputFolder:
    """The run's output folder, checked before the run and locked while it writes there.

    Refuses a path that is not a folder, a folder that cannot be written, a folder
    another live run holds, and (unless ``overwrite`` or ``resume``) a folder that is
    not empty. The lock is a file created exclusively, holding the process id; one
    left by a killed process is taken over.
    """

    def __init__(self, folder: Path, overwrite: bool, resume: bool):
        self.folder, self.overwrite, self.resume = folder, overwrite, resume
        self.lock = folder / LOCK_FILE

    def __enter__(self):
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output folder {folder} exists and is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        self._take_lock()
        try:
            others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
            if others and not (self.overwrite or self.resume):
                raise ValueError(f"output folder {folder} is not empty ({', '.join(others[:3])}"
                                 f"{', ...' if len(others) > 3 else ''}): pass --overwrite to replace an earlier "
                                 "run's results, --resume to continue it, or choose another --out")
            if self.overwrite:
                for name in OUTPUT_FILES + SWEEP_FILES:
                    (folder / name).unlink(missing_ok=True)
                shutil.rmtree(folder / SWEEP_MEMBERS, ignore_errors=True)
        except BaseException:
            self.lock.unlink(missing_ok=True)
            raise
        return self

    def _take_lock(self):
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_owner(self.lock)
                if pid is not None and _alive(pid):
                    raise ValueError(f"output folder {self.folder} is in use by another truncflow run "
                                     f"(process {pid}); wait for it or choose another --out") from None
                self.lock.unlink(missing_ok=True)      # left by a process that is gone
                continue
            except OSError as exc:
                raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            return
        raise ValueError(f"could not lock the output folder {self.folder}")

    def __exit__(self, *exc):
        self.lock.unlink(missing_ok=True)
        return False


def _lock_owner(path: Path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_text(path: Path, text: str) -> None:
    from ._files import atomic_write
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _kernels_cached() -> bool:
    """Whether the kernels a run needs have an entry in Numba's cache (best effort)."""
    try:
        needed = {"gradient.gradient_kernel", "observe.observe_kernel"}
        found = {name: disp for name, disp in _kernel_dispatchers() if name in needed}
        return len(found) == len(needed) and all(
            Path(d._cache._cache_file._index_path).is_file() for d in found.values())
    except Exception:  # numba internals moved: say nothing
        return True


class _ProgressBar:
    """A tqdm bar over flow time; says "starting" (kernels compile, first evaluations) until
    the first step, so that it never shows an ETA extrapolated from the compilation."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| t = {n:.4g}/{total:.4g} [{elapsed}<{remaining}{postfix}]"

    def __init__(self, t_end, disable):
        from tqdm import tqdm
        interactive = sys.stderr.isatty()
        self.t_end = t_end
        self.started = False
        self.bar = tqdm(total=t_end, disable=disable, file=sys.stderr, leave=True, dynamic_ncols=True,
                        mininterval=0.1 if interactive else 2.0, desc="flow time",
                        bar_format="{desc}: starting (first evaluations; compiling if the kernels are not "
                                   "cached)... [{elapsed}]")

    def update(self, t, cost):
        bar = self.bar
        if not self.started:
            self.started = True
            bar.bar_format = self.FORMAT
            bar.reset(total=self.t_end)      # the rate (and ETA) counts from the first step
        bar.update(min(float(t), self.t_end) - bar.n)
        bar.set_postfix_str(f"cost {cost:.4g}", refresh=False)

    def close(self):
        self.bar.close()


def _write_outputs(result, cfg, folder: Path) -> list[tuple[str, Path]]:
    """The result file, then the plots; each written to a temporary file and renamed."""
    written = [("result", result.save(folder / RESULT_FILE)), ("config", folder / CONFIG_FILE)]
    return written + _write_plots(result, folder, cfg.name)


def _write_plots(result, folder: Path, title: str, n_snapshots: int = 4) -> list[tuple[str, Path]]:
    """Both plots of a result; a plot that fails is a warning, never a lost run."""
    from .plot import plot_result, plot_snapshots

    written = []
    for label, draw, name, kw in (("plot", plot_result, PLOT_FILE, {}),
                                  ("snapshots", plot_snapshots, SNAPSHOTS_FILE, {"n_snapshots": n_snapshots})):
        try:
            written.append((label, draw(result, folder / name, title=title, **kw)))
        except Exception as exc:
            print(f"{PROG}: warning: could not write the {label}: {_one_line(exc)}", file=sys.stderr)
    return written


# -------------------------------------------------------------------- plot
def _plot(args) -> int:
    from .engine.record import load_result

    if not 1 <= args.snapshots <= 12:
        raise _UsageError(f"--snapshots must be between 1 and 12, got {args.snapshots}")
    path = Path(args.result)
    result = load_result(path)
    folder = Path(args.out) if args.out is not None else path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} exists and is not a folder")
    name = result.config.get("name") if isinstance(result.config, dict) else None
    written = _write_plots(result, folder, name or path.stem, args.snapshots)
    for label, out in written:
        print(f"wrote {label}: {out}")
    return 0 if len(written) == 2 else 1


# -------------------------------------------------------------------- info
def _info(scheduler=None) -> int:
    import platform

    import numba
    import numpy
    import scipy

    from . import __version__

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
    from .threads import cpu_quota, get_threads
    quota = cpu_quota()
    print(f"threads   {get_threads()} (Numba's pool {numba.config.NUMBA_NUM_THREADS}; cgroup CPU quota "
          f"{'none' if quota is None else f'{quota:g}'})")
    print(f"threading layer {_threading_layer()}")
    for var in ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                "OMP_NUM_THREADS"):
        if var in os.environ:
            print(f"  {var}={os.environ[var]}")
    _cache_report()
    from .device import describe_gpus
    for line in describe_gpus():
        print(line)
    if scheduler is not None:
        from .distributed import describe_cluster
        with _dask_client({"scheduler": scheduler}) as client:
            for line in describe_cluster(client):
                print(line)
    return 0


class _dask_client:
    """A ``distributed.Client`` for a run: connected to ``cluster["scheduler"]``, or to a
    LocalCluster of ``cluster["local"]`` worker processes started (and stopped) here."""

    def __init__(self, cluster: dict):
        self.spec, self.local = cluster, None

    def __enter__(self):
        from .distributed import require_dask
        _, distributed = require_dask()
        try:
            if "scheduler" in self.spec:
                self.client = distributed.Client(self.spec["scheduler"], timeout=30)
            else:
                self.local = distributed.LocalCluster(n_workers=self.spec["local"], processes=True,
                                                      threads_per_worker=self.spec["threads_per_worker"],
                                                      dashboard_address=None, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.local)
        except OSError as exc:        # no scheduler there, a timeout
            where = self.spec.get("scheduler", "a LocalCluster")
            raise OSError(f"cannot reach the Dask scheduler {where}: {exc}") from None
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.local is not None:
            self.local.close()


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

    from . import kernels

    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and getattr(obj, "__module__", None) == module.__name__:
                found.append((f"{info.name}.{attr}", obj))
    return sorted(found)


def _cache_report():
    from . import kernels

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
