"""Whatever bytes a lock file holds, `truncflow run` into its folder is a clean run or a
clean one-line refusal: never a traceback, never a hang (issue 22).

Each example is a whole run of a tiny job in-process (the plots replaced by a stub
written the same way, atomically: drawing them is most of a tiny run's time).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import truncflow
from truncflow import cli
from truncflow.cli import main

LOCK = ".truncflow.lock"

TINY = """
seed = 0
[data]
source = "gaussian"
n_points = 200
centers = [[-4.0, -4.0], [4.0, 4.0]]
std = [0.5, 0.4]
targets = [[-1.0, -1.0], [1.5, 1.5]]
[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]
[flow]
kind = "input"
t_end = 1.0
[record]
n_records = 3
[output]
name = "fuzz"
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The job file; the kernels compiled; the plots replaced by a stub for this module."""
    import truncflow.plot as plot
    from truncflow._files import atomic_write

    def stub(result, path, title=None, **kw):
        with atomic_write(path) as handle:
            handle.write(b"\x89PNG stub")
        return Path(path)

    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "job.toml"
    config.write_text(TINY)
    saved = plot.plot_result, plot.plot_snapshots
    plot.plot_result = plot.plot_snapshots = stub
    try:
        assert main(["run", str(config), "--out", str(folder / "warm"), "--quiet"]) == 0
        yield config
    finally:
        plot.plot_result, plot.plot_snapshots = saved


class _Hung(Exception):
    pass


@contextlib.contextmanager
def _no_hang(seconds):
    """SIGALRM after ``seconds``: a run that hangs fails the test instead of stopping the suite."""
    def alarm(signum, frame):
        raise _Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _me():
    return os.getpid(), cli.lock.process_start(os.getpid())


# Lock contents: arbitrary bytes, and JSON objects with odd or plausible fields (this
# process's id and start time among them: a live lock, refused).
_numbers = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from(["own pid", "own start"]), st.none(), st.booleans(), st.text(max_size=8))
_json_locks = st.fixed_dictionaries(
    {}, optional={"pid": _numbers, "started": _numbers, "token": st.one_of(st.text(max_size=12), _numbers),
                  "host": st.one_of(st.just("own host"), st.text(max_size=12), st.none())})


def _encode(obj) -> bytes:
    pid, started = _me()
    swap = {"own pid": pid, "own start": started, "own host": socket.gethostname()}
    obj = {k: swap.get(v, v) if isinstance(v, str) else v for k, v in obj.items()}
    return json.dumps(obj).encode()


def _live(token, host, extra):
    """A lock of this (live) process, with any token, its host or none, and extra keys."""
    pid, started = _me()
    lock = {**extra, "pid": pid, "started": started, "token": token}
    if host:
        lock["host"] = socket.gethostname()
    return json.dumps(lock).encode()


_contents = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=-2**80, max_value=2**80).map(lambda n: f"{n}\n".encode()),
    _json_locks.map(_encode),
    st.builds(_live, st.text(max_size=12), st.booleans(),
              st.dictionaries(st.text(max_size=5).filter(lambda k: k not in ("pid", "started", "token", "host")),
                              _numbers.filter(lambda v: not isinstance(v, float) or v == v), max_size=2)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(content=_contents)
def test_any_lock_file_gives_a_clean_run_or_a_one_line_refusal(setup, content):
    config = setup
    folder = Path(tempfile.mkdtemp(prefix="lockfuzz-"))
    try:
        out = folder / "o"
        out.mkdir()
        (out / LOCK).write_bytes(content)
        stdout, stderr = io.StringIO(), io.StringIO()
        with _no_hang(120), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["run", str(config), "--out", str(out), "--quiet"])
        err = stderr.getvalue()
        lines = err.strip().splitlines()
        assert "Traceback" not in err, err
        event(f"exit {code}{' with a warning' if lines and code == 0 else ''}")
        if code == 0:                                   # a clean run: the folder was taken over
            assert len(lines) <= 1 and all(line.startswith("truncflow: warning: ") for line in lines), err
            assert truncflow.load_result(out / "result.npz").status == "t_end"
            assert not (out / LOCK).exists()
            assert sorted(p.name for p in out.iterdir()) == ["config.toml", "plot.png", "result.npz",
                                                            "snapshots.png"]
        else:                                           # a refusal: one line, the folder untouched
            assert code == 2, err
            assert len(lines) == 1 and lines[0].startswith("truncflow: error: "), err
            assert "in use by another truncflow run" in lines[0], err
            assert (out / LOCK).read_bytes() == content
            assert sorted(p.name for p in out.iterdir()) == [LOCK]
            holder = cli.lock.parse_lock(content)           # refused only for a lock of a live process
            assert holder is not None and cli.lock.holder_alive(holder, (out / LOCK).stat().st_mtime)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=60, deadline=None)
@given(content=_contents)
def test_lock_parsing_never_raises(content):
    """The parser and the liveness check take any bytes (the part of the run above that reads them)."""
    holder = cli.lock.parse_lock(content)
    if holder is not None:
        assert isinstance(holder["pid"], int) and 1 <= holder["pid"] < 2**31
        assert isinstance(cli.lock.holder_alive(holder, 0.0), bool)
