"""A run's output folder (checked, locked, left as found by a run that does not start),
writing the result and the plots into it, the progress bar, and ``truncflow plot``."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from .lock import LOCK_FILE, LOCK_TRANSIENT, FolderLock
from .parser import (CHECKPOINT_FILE, CONFIG_FILE, PLOT_FILE, PROG, RESULT_FILE, SNAPSHOTS_FILE, UsageError,
                     one_line)

#: Files a run writes into its folder (what --overwrite replaces).
OUTPUT_FILES = (RESULT_FILE, PLOT_FILE, SNAPSHOTS_FILE, CONFIG_FILE, CHECKPOINT_FILE)
SWEEP_FILES = ("summary.csv", "summary.png")     # a sweep's (truncflow/sweep.py), with SWEEP_MEMBERS/
SWEEP_MEMBERS = "members"


class OutputFolder(FolderLock):
    """The run's output folder, checked before the run and locked while it writes there.

    Refuses a path that is not a folder, a folder that cannot be written, a folder
    another live run holds, and (unless ``overwrite`` or ``resume``) a folder that is
    not empty. The lock (:class:`~truncflow.cli.lock.FolderLock`) is taken before the
    folder is looked at, and removed when the run ends.

    A run that stops before its flow has started (an error, a signal) leaves the folder
    as it found it: a folder it created is removed, a config.toml it wrote is removed
    (or the earlier one put back), nothing that was there is removed -- ``--overwrite``
    removes an earlier run's files only once the new flow has started
    (:meth:`flow_started`). Temporary files of truncflow's own outputs that a killed
    process left (``.result.npz.*.tmp`` ...) are removed when the folder is taken and
    when the run ends.
    """

    def __init__(self, folder: Path, overwrite: bool, resume: bool):
        super().__init__(folder)
        self.overwrite, self.resume = overwrite, resume
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
                from .._files import atomic_write
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


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder)]
    except OSError as exc:
        raise ValueError(f"cannot read the output folder {folder}: {exc.strerror or exc}") from None


def _own_transient(name: str) -> bool:
    """The lock, a lock being taken or set aside, or a stray temporary of one of truncflow's files."""
    return (name == LOCK_FILE or bool(LOCK_TRANSIENT.match(name))
            or any(name.startswith(f".{out}.") and name.endswith(".tmp") and len(name) > len(out) + 6
                   for out in OUTPUT_FILES + SWEEP_FILES))


def _remove_strays(folder: Path) -> None:
    """Remove what a killed process left of truncflow's own files: ``.<output>.*.tmp`` files, and
    a lock being taken or set aside more than a minute ago."""
    from .._files import stray_temporaries
    for path in stray_temporaries(folder, OUTPUT_FILES + SWEEP_FILES):
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if LOCK_TRANSIENT.match(entry.name) and time.time() - entry.stat(follow_symlinks=False).st_mtime > 60:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _identity(path: Path):
    """(device, inode, size, mtime) of a file or folder, None if there is none: whether it changed."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _write_text(path: Path, text: str) -> None:
    from .._files import atomic_write
    with atomic_write(path, "w") as handle:
        handle.write(text)


class ProgressBar:
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


def write_outputs(result, cfg, folder: Path) -> list[tuple[str, Path]]:
    """The result file, then the plots; each written to a temporary file and renamed."""
    written = [("result", result.save(folder / RESULT_FILE)), ("config", folder / CONFIG_FILE)]
    return written + write_plots(result, folder, cfg.name)


def write_plots(result, folder: Path, title: str, n_snapshots: int = 4) -> list[tuple[str, Path]]:
    """Both plots of a result; a plot that fails is a warning, never a lost run."""
    from ..plot import plot_result, plot_snapshots

    written = []
    for label, draw, name, kw in (("plot", plot_result, PLOT_FILE, {}),
                                  ("snapshots", plot_snapshots, SNAPSHOTS_FILE, {"n_snapshots": n_snapshots})):
        try:
            written.append((label, draw(result, folder / name, title=title, **kw)))
        except Exception as exc:
            print(f"{PROG}: warning: could not write the {label}: {one_line(exc)}", file=sys.stderr)
    return written


def plot_command(args) -> int:
    """``truncflow plot RESULT.npz``: draw both plots of a saved result again."""
    from ..engine.record import load_result

    if not 1 <= args.snapshots <= 12:
        raise UsageError(f"--snapshots must be between 1 and 12, got {args.snapshots}")
    path = Path(args.result)
    result = load_result(path)
    folder = Path(args.out) if args.out is not None else path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"output folder {folder} exists and is not a folder")
    name = result.config.get("name") if isinstance(result.config, dict) else None
    written = write_plots(result, folder, name or path.stem, args.snapshots)
    for label, out in written:
        print(f"wrote {label}: {out}")
    return 0 if len(written) == 2 else 1
