"""The ``truncflow`` command line.

    truncflow run [CONFIG.toml] [--out FOLDER] [--overwrite] [--checkpoint-every S] [--quiet]
                  [--threads N] [--check] [--scheduler ADDRESS [--connect-timeout S]]
    truncflow run --resume FOLDER
    truncflow plot RESULT.npz [--out FOLDER] [--snapshots K]
    truncflow info

``run`` without a file runs the built-in default job (truncflow/defaults/default.toml).
The output folder is checked before the run: it must be writable, and a folder that
is not empty is refused unless ``--overwrite`` is given; while a run writes into a
folder it holds a lock file there (its process id and start time), so a second run
into the same folder is refused while the first is alive. The configuration is copied
there first, and the run's state is checkpointed there (``checkpoint.npz``) so that
``--resume FOLDER`` continues a run that was killed; the checkpoint is removed once a
finished run's result and plots are written. A run that stops before its flow starts
leaves the folder as it found it.
Exit codes: 0 success; 1 the run stopped without success (diverged, failed, budget
reached) -- what was recorded is still saved and plotted; 2 a usage or configuration
error (one line on stderr, no traceback); 130 interrupted by SIGINT (Ctrl-C), 143 by
SIGTERM -- what was recorded is saved, and the run can be resumed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import stat
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
#: Seconds to wait for a Dask scheduler (--connect-timeout, [cluster] connect_timeout).
DEFAULT_CONNECT_TIMEOUT = 5.0


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
    run.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                     help="give up on a Dask scheduler that does not answer within this many seconds "
                          f"(overrides [cluster] connect_timeout; default {DEFAULT_CONNECT_TIMEOUT:g})")
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
    info.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                      help=f"seconds to wait for the scheduler (default {DEFAULT_CONNECT_TIMEOUT:g})")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``truncflow`` script; returns the exit code."""
    from .engine.control import SIGNAL_EXIT_CODES, raise_on_signals

    parser = _build_parser()
    try:
        with raise_on_signals():    # SIGINT and SIGTERM raise (a run's guard defers them inside the flow)
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            if args.command == "info":
                timeout = _connect_timeout(args.connect_timeout, {})
                return _info(args.scheduler, timeout)
            if args.command == "plot":
                return _plot(args)
            return _run(args)
    except _UsageError as exc:
        return _error(exc)
    except KeyboardInterrupt as exc:    # before anything was recorded (or outside a run)
        name = getattr(exc, "signal_name", None)
        print(f"{PROG}: interrupted" + (f" ({name}) before anything was recorded" if name else ""), file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(name, 130)
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
    from .engine.methods import DEVICE, float32_refusal, gpu_refusal, spec
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
    _connect_timeout(args.connect_timeout, {})          # a bad --connect-timeout is a usage error, at once
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
        with SignalGuard() as guard, _OutputFolder(folder, overwrite=args.overwrite,
                                                   resume=args.resume is not None) as out:
            if args.resume is None:
                out.write_config(cfg.text)
            result, elapsed = _simulate(cfg, folder, args, guard=guard, out=out)
            if len(result.t) == 0:      # stopped before its first record: nothing to save, the folder as it was
                raise ValueError(f"the run could not start: {result.message}")
            out.flow_started()                              # (the run may have stopped before its first step)
            written = _write_outputs(result, cfg, folder)   # a signal now is noted, not raised
            out.finish(result, written)                     # the checkpoint goes once the outputs are whole
    except _StoppedBeforeStart as stop:
        from .engine.control import SIGNAL_EXIT_CODES
        print(f"{PROG}: interrupted ({stop.signal_name}) before the run started; nothing was written to "
              f"{folder}", file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(stop.signal_name, 130)
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

    with SignalGuard() as guard, _OutputFolder(folder, overwrite=args.overwrite, resume=False) as out:
        out.write_config(cfg.text)
        started = time.perf_counter()
        results = run_sweep(cfg, say)
        elapsed = time.perf_counter() - started
        out.flow_started()          # an earlier run's files go now, not before the members ran
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

    ``out`` (the :class:`_OutputFolder`) is told when the flow has started (its first
    step); a signal noted by ``guard`` before the flow is started stops here, with
    :class:`_StoppedBeforeStart`, so that the folder is left as it was.
    """
    from . import simulate
    from .engine.methods import DISTRIBUTED, cluster_refusal
    from .engine.methods import spec as method_spec

    if not args.quiet and not _kernels_cached():
        print("compiling the Numba kernels for the first time (takes a while; they are cached for "
              "later runs)", file=sys.stderr)
    kwargs = dict(cfg.simulate_kwargs)
    spec = dict(cfg.cluster or {})
    timeout = _connect_timeout(getattr(args, "connect_timeout", None), spec)
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
            from .distributed import distribute
            client = stack.enter_context(_dask_client(cluster, timeout))
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
        bar = _ProgressBar(kwargs["t_end"], disable=args.quiet)

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


def _connect_timeout(flag, cluster: dict) -> float:
    """Seconds to wait for a Dask scheduler: --connect-timeout, else [cluster] connect_timeout, else
    DEFAULT_CONNECT_TIMEOUT."""
    if flag is not None:
        if not (isinstance(flag, (int, float)) and math.isfinite(flag) and flag > 0):
            raise _UsageError(f"--connect-timeout must be a number of seconds > 0, got {flag}")
        return float(flag)
    value = (cluster or {}).get("connect_timeout")
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"[cluster] connect_timeout must be a number of seconds > 0, got {value!r}")
    return float(value)


class _OutputFolder:
    """The run's output folder, checked before the run and locked while it writes there.

    Refuses a path that is not a folder, a folder that cannot be written, a folder
    another live run holds, and (unless ``overwrite`` or ``resume``) a folder that is
    not empty. The lock file holds the process id, the process's start time and a
    random token (JSON): it is live while a process of that id *and* that start time
    runs; one left by a killed process (even if its id was given to another process
    since), or one that cannot be read as a lock, is taken over.

    A run that stops before its flow has started (an error, a signal) leaves the folder
    as it found it: a folder it created is removed, a config.toml it wrote is removed
    (or the earlier one put back), nothing that was there is removed -- ``--overwrite``
    removes an earlier run's files only once the new flow has started
    (:meth:`flow_started`). Temporary files of truncflow's own outputs that a killed
    process left (``.result.npz.*.tmp`` ...) are removed when the folder is taken and
    when the run ends.
    """

    def __init__(self, folder: Path, overwrite: bool, resume: bool):
        self.folder, self.overwrite, self.resume = folder, overwrite, resume
        self.lock = folder / LOCK_FILE
        self.token = None
        self.created: list[Path] = []      # folders this run created, deepest first
        self.snapshot: dict = {}           # the outputs that were there: name -> identity
        self.wrote_config = False
        self.old_config: bytes | None = None
        self.started = False

    # ------------------------------------------------------------ taking the folder
    def __enter__(self):
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"output folder {folder} exists and is not a folder")
        missing = []
        parent = folder
        while not os.path.lexists(parent) and parent != parent.parent:
            missing.append(parent)
            parent = parent.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        self.created = missing
        try:
            self._take_lock()
        except BaseException:
            self._remove_created()
            raise
        try:
            others = sorted(name for name in _names(folder) if not _own_transient(name))
            if others and not (self.overwrite or self.resume):
                raise ValueError(f"output folder {folder} is not empty ({', '.join(others[:3])}"
                                 f"{', ...' if len(others) > 3 else ''}): pass --overwrite to replace an earlier "
                                 "run's results, --resume to continue it, or choose another --out")
            self.snapshot = {name: _identity(folder / name) for name in OUTPUT_FILES + SWEEP_FILES + (SWEEP_MEMBERS,)}
            _remove_strays(folder)
        except BaseException:
            self._release()
            self._remove_created()
            raise
        return self

    def _take_lock(self):
        me = {"pid": os.getpid(), "started": _process_start(os.getpid()), "token": secrets.token_hex(8),
              "host": socket.gethostname(), "program": PROG}
        if me["started"] is _UNKNOWN:
            me["started"] = None
        self.token = me["token"]
        text = json.dumps(me) + "\n"
        deadline = time.monotonic() + 15.0
        warned = set()
        while time.monotonic() < deadline:
            if self._create_lock(text):
                return
            seen = self._read_lock()
            if seen is None:                   # gone meanwhile: try again
                continue
            st, data = seen
            holder = _parse_lock(data)
            if holder is None:
                warning = f"{self.lock} is not a lock truncflow can read: replacing it"
            elif holder["host"] not in (None, me["host"]):
                warning = (f"{self.lock} was left by process {holder['pid']} on host {holder['host']!r}, "
                           "which cannot be checked from here: taking the folder over")
            elif _holder_alive(holder, st.st_mtime):
                raise ValueError(f"output folder {self.folder} is in use by another truncflow run "
                                 f"(process {holder['pid']}); wait for it or choose another --out")
            else:
                warning = None          # left by a run that is gone: say nothing
            if warning is not None and warning not in warned:
                warned.add(warning)
                print(f"{PROG}: warning: {_one_line(warning)}", file=sys.stderr)
            self._set_aside(st, data)
        raise ValueError(f"could not lock the output folder {self.folder} (other runs keep taking it)")

    def _create_lock(self, text: str) -> bool:
        """Create the lock holding ``text`` if there is none (True), atomically: a whole file is
        linked to the lock's name, so no reader ever sees a lock half-written."""
        new = self.folder / f"{LOCK_FILE}.{self.token}.new"
        try:
            fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            try:
                os.link(new, self.lock)
                return True
            except FileExistsError:
                return False
            except OSError:                    # no hard links here: create the lock itself exclusively
                try:
                    fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                except OSError as exc:
                    raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                return True
        except OSError as exc:
            raise ValueError(f"cannot write the lock file {self.lock}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(new)

    def _read_lock(self, path=None):
        """(lstat, first bytes or None when unreadable) of the lock there, None if there is none."""
        path = self.lock if path is None else path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"cannot read the lock file {path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"output folder {self.folder} holds a folder named {LOCK_FILE} where truncflow "
                             "keeps its lock file: remove it or choose another --out")
        return st, (_read_head(path) if stat.S_ISREG(st.st_mode) else None)

    def _set_aside(self, st, data) -> None:
        """Remove the stale lock judged from (st, data) -- and nothing else.

        One run at a time takes a folder over (it holds ``.truncflow.lock.takeover``, created
        exclusively; others wait for it to go); the lock is renamed away first, and put back if
        what was renamed is not the lock judged stale (another run took the folder since).
        """
        guard = self.folder / f"{LOCK_FILE}.takeover"
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:        # another run is taking the folder over: look again shortly
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(guard).st_mtime > 10.0:     # left by a run killed meanwhile
                    os.unlink(guard)
            time.sleep(0.02)
            return
        except OSError as exc:
            raise ValueError(f"output folder {self.folder} is not writable: {exc.strerror or exc}") from None
        try:
            self._rename_aside(st, data)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(guard)

    def _rename_aside(self, st, data) -> None:
        aside = self.folder / f"{LOCK_FILE}.{self.token}.stale"
        try:
            os.rename(self.lock, aside)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ValueError(f"cannot remove the stale lock file {self.lock}: {exc.strerror or exc}") from None
        try:
            moved = self._read_lock(aside)
            if moved is not None and ((moved[0].st_dev, moved[0].st_ino) != (st.st_dev, st.st_ino)
                                      or moved[1] != data):
                try:                           # a newer lock: put it back where it was
                    os.link(aside, self.lock)
                except FileExistsError:
                    pass
                except OSError:
                    if not os.path.lexists(self.lock):
                        os.rename(aside, self.lock)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def _release(self) -> None:
        """Remove the lock if it is still this run's."""
        try:
            seen = self._read_lock()
        except ValueError:
            return
        if seen is None or seen[1] is None:
            return
        holder = _parse_lock(seen[1])
        if holder is not None and holder["token"] == self.token:
            with contextlib.suppress(OSError):
                os.unlink(self.lock)

    # ------------------------------------------------------------ the run's files
    def write_config(self, text: str) -> None:
        """Write config.toml (remembering the one there, to put it back if the run does not start)."""
        path = self.folder / CONFIG_FILE
        if self.old_config is None and not self.wrote_config:
            try:
                self.old_config = path.read_bytes() if path.is_file() else None
            except OSError:
                self.old_config = None
        self.wrote_config = True
        _write_text(path, text)

    def flow_started(self) -> None:
        """The flow has started: with --overwrite, an earlier run's files are removed now (those
        this run has not written over)."""
        if self.started:
            return
        self.started = True
        if not self.overwrite:
            return
        for name in (RESULT_FILE, PLOT_FILE, SNAPSHOTS_FILE, CHECKPOINT_FILE) + SWEEP_FILES:
            old = self.snapshot.get(name)
            if old is not None and _identity(self.folder / name) == old:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()
        if self.snapshot.get(SWEEP_MEMBERS) is not None:
            shutil.rmtree(self.folder / SWEEP_MEMBERS, ignore_errors=True)

    def finish(self, result, written) -> None:
        """The run's outputs are written: a finished run's checkpoint is no longer needed once
        result.npz and both plots are whole (an interrupted run keeps it, to be resumed)."""
        labels = {label for label, _ in written}
        if result.success and {"result", "plot", "snapshots"} <= labels:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / CHECKPOINT_FILE).unlink()

    def _progress_made(self) -> bool:
        return self.started or any(_identity(self.folder / name) != self.snapshot.get(name)
                                   for name in (CHECKPOINT_FILE, RESULT_FILE))

    def _restore(self) -> None:
        """Put the folder back as it was found (the run stopped before its flow started)."""
        if not self.wrote_config:
            return
        path = self.folder / CONFIG_FILE
        with contextlib.suppress(OSError):
            if self.old_config is None:
                path.unlink()
            else:
                from ._files import atomic_write
                with atomic_write(path) as handle:
                    handle.write(self.old_config)

    def _remove_created(self) -> None:
        for path in self.created:          # deepest first; only while empty
            try:
                os.rmdir(path)
            except OSError:
                break

    def __exit__(self, exc_type, exc, tb):
        undo = exc_type is not None and not self._progress_made()     # stopped before the flow started
        try:
            if undo:
                self._restore()
            _remove_strays(self.folder)
        finally:
            self._release()
            if undo:
                self._remove_created()
        return False


#: "the process exists, but its start time cannot be read"
_UNKNOWN = object()
_LOCK_MAX_BYTES = 4096
_PID_MAX = 2**31 - 1
_OWN_TRANSIENT = re.compile(r"^" + re.escape(LOCK_FILE) + r"\.(?:[0-9a-f]+\.(?:new|stale)|takeover)$")


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)]
    except OSError as exc:
        raise ValueError(f"cannot read the output folder {folder}: {exc.strerror or exc}") from None


def _own_transient(name: str) -> bool:
    """The lock, a lock being taken or set aside, or a stray temporary of one of truncflow's files."""
    return (name == LOCK_FILE or bool(_OWN_TRANSIENT.match(name))
            or any(name.startswith(f".{out}.") and name.endswith(".tmp") and len(name) > len(out) + 6
                   for out in OUTPUT_FILES + SWEEP_FILES))


def _remove_strays(folder: Path) -> None:
    """Remove what a killed process left of truncflow's own files: ``.<output>.*.tmp`` files, and
    a lock being taken or set aside more than a minute ago."""
    from ._files import stray_temporaries
    for path in stray_temporaries(folder, OUTPUT_FILES + SWEEP_FILES):
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if _OWN_TRANSIENT.match(entry.name) and time.time() - entry.stat(follow_symlinks=False).st_mtime > 60:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _identity(path: Path):
    """(device, inode, size, mtime) of a file or folder, None if there is none: whether it changed."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _read_head(path: Path):
    """The first bytes of a lock file (never blocking: a FIFO there reads as nothing), None if unreadable."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= _LOCK_MAX_BYTES:
            chunk = os.read(fd, _LOCK_MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_lock(data):
    """The lock's holder, {"pid", "started", "token", "host"}, or None if ``data`` is not a lock.

    ``started`` is the process's start (see :func:`_process_start`), None if it could not
    be read, or ``"legacy"`` for a lock of an earlier truncflow that held the process id only.
    """
    if data is None or len(data) > _LOCK_MAX_BYTES:
        return None
    try:
        text = data.decode("utf-8").strip()
        if text.isascii() and text.isdigit() and len(text) <= 10:        # an earlier truncflow's: "PID\n"
            pid = int(text)
            return {"pid": pid, "started": "legacy", "token": None, "host": None} if 1 <= pid <= _PID_MAX else None
        info = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    pid, started, token, host = (info.get(k) for k in ("pid", "started", "token", "host"))
    if type(pid) is not int or not 1 <= pid <= _PID_MAX:
        return None
    if started is not None and (type(started) not in (int, float) or not math.isfinite(started)):
        return None
    if not isinstance(token, str) or not isinstance(host, (str, type(None))):
        return None
    return {"pid": pid, "started": started, "token": token, "host": host}


def _holder_alive(holder: dict, lock_mtime: float) -> bool:
    """Whether the process that wrote the lock still runs: its id exists and its start time is the one
    in the lock (an id given to another process since is not the holder)."""
    pid, started = holder["pid"], holder["started"]
    now = _process_start(pid)
    if now is None:
        return False
    if started == "legacy":      # no start time: a process started after the lock was written did not write it
        if pid == 1:
            return False
        created = _create_time(pid)
        return created is _UNKNOWN or created <= lock_mtime + 1.0
    if now is _UNKNOWN or started is None:
        return True
    return now == started


def _process_start(pid: int):
    """What identifies the run of process ``pid``: its start in clock ticks since boot (Linux,
    /proc/PID/stat field 22: exact, read the same by every process), else psutil's create
    time. None if there is no such process (or only a zombie), _UNKNOWN if it cannot be read."""
    if not 1 <= pid <= _PID_MAX:
        return None
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                data = handle.read()
            fields = data[data.rindex(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):
                return None
            return int(fields[19])
        except (FileNotFoundError, ProcessLookupError):
            return None
        except (OSError, ValueError, IndexError):
            pass
    created = _create_time(pid)
    return created


def _create_time(pid: int):
    """psutil's create time of process ``pid`` (wall-clock seconds), None if there is none, _UNKNOWN."""
    try:
        import psutil
    except ImportError:  # pragma: no cover (a dependency)
        return _UNKNOWN
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except (psutil.AccessDenied, OSError, ValueError, OverflowError):
        return _UNKNOWN


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
def _info(scheduler=None, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> int:
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
        with _dask_client({"scheduler": scheduler}, timeout) as client:
            for line in describe_cluster(client):
                print(line)
    return 0


class _dask_client:
    """A ``distributed.Client`` for a run: connected to ``cluster["scheduler"]`` (giving up after
    ``timeout`` seconds), or to a LocalCluster of ``cluster["local"]`` worker processes started
    (and stopped) here."""

    def __init__(self, cluster: dict, timeout: float = DEFAULT_CONNECT_TIMEOUT):
        self.spec, self.local, self.timeout = cluster, None, timeout

    def __enter__(self):
        from .distributed import require_dask
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
                              f"{_one_line(exc) or type(exc).__name__}") from None
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
