"""The command line's options (argparse), its name, the names of the files a run writes,
and its one-line usage errors."""
from __future__ import annotations

import argparse
import sys

PROG = "truncflow"
RESULT_FILE = "result.npz"
PLOT_FILE = "plot.png"
SNAPSHOTS_FILE = "snapshots.png"
CONFIG_FILE = "config.toml"
CHECKPOINT_FILE = "checkpoint.npz"
#: Seconds to wait for a Dask scheduler (--connect-timeout, [cluster] connect_timeout).
DEFAULT_CONNECT_TIMEOUT = 5.0


class UsageError(Exception):
    """Raised instead of argparse's own exit, so every user error prints one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{PROG} --help')")


def one_line(message) -> str:
    return " ".join(str(message).split())


def error(message) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Gradient flow of deep ReLU networks seen from the input space: "
                                           "truncation maps and dynamical truncation of training data.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
