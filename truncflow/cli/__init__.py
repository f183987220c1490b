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

The package: :mod:`.parser` (the options, the program's and the files' names, one-line usage
errors), :mod:`.run` (run, resume, sweep), :mod:`.outputs` (the output folder, writing the
result and the plots, the progress bar, ``plot``), :mod:`.lock` (the folder's lock file),
:mod:`.cluster` (the Dask client and its connect timeout) and :mod:`.info` (``info``).
"""
from __future__ import annotations

import sys

from ..device import CudaUnavailableError
from . import cluster, info, outputs, run
from .parser import PROG, UsageError, build_parser, error

__all__ = ["main"]


def main(argv=None) -> int:
    """Entry point of the ``truncflow`` script; returns the exit code."""
    from ..engine.control import SIGNAL_EXIT_CODES, raise_on_signals

    parser = build_parser()
    try:
        with raise_on_signals():    # SIGINT and SIGTERM raise (a run's guard defers them inside the flow)
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            if args.command == "info":
                timeout = cluster.connect_timeout(args.connect_timeout, {})
                return info.info_command(args.scheduler, timeout)
            if args.command == "plot":
                return outputs.plot_command(args)
            return run.run_command(args)
    except UsageError as exc:
        return error(exc)
    except KeyboardInterrupt as exc:    # before anything was recorded (or outside a run)
        name = getattr(exc, "signal_name", None)
        print(f"{PROG}: interrupted" + (f" ({name}) before anything was recorded" if name else ""), file=sys.stderr)
        return SIGNAL_EXIT_CODES.get(name, 130)
    except BrokenPipeError:  # the reader went away (`truncflow info | head`): stop quietly
        sys.stdout = None
        return 0
    except (ValueError, OSError, ImportError, CudaUnavailableError) as exc:  # ConfigError is a ValueError
        return error(exc)
    except MemoryError:
        return error("out of memory (is n_points or a layer size too large?)")
