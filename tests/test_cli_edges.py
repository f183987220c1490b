"""The command line at the edges of a long run (issue 22): lock files of every kind,
file modes under the umask, stray temporaries, runs that stop before their flow starts,
the Dask connect timeout, and the checkpoint of a finished run.

Runs are tiny (300 points, a short flow); most replace the two plots by a stub that
writes a small file the same way (atomically), as drawing them takes longer than the
flow. Subprocess tests use real processes and real signals.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import truncflow
from truncflow import cli
from truncflow.cli import main

REPO = Path(__file__).resolve().parents[1]
LOCK = ".truncflow.lock"

TINY = """
seed = 0
[data]
source = "gaussian"
n_points = 300
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]
[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]
[flow]
kind = "input"
t_end = 2.0
[record]
n_records = 5
[output]
name = "tiny"
"""

#: Points so large that the first gradient overflows: the flow cannot start.
LATE_FAILURE = TINY.replace("centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]",
                            "centers = [[-4e200, -4e200], [4e200, 4e200], [0.25, 0.25]]").replace(
                            "std = [0.5, 0.4, 0.2]", "std = [1e199, 1e199, 0.2]")

TMP_NAMES = [".checkpoint.npz.k3j_x9.tmp", ".result.npz.abcd1234.tmp", ".plot.png.q.tmp",
             ".snapshots.png.zz_top.tmp", ".config.toml.8f2a.tmp"]
#: Not truncflow's temporaries: never removed.
USER_NAMES = ["notes.tmp", ".notes.txt.a1.tmp", ".result.npz.tmp", "result.npz.x.tmp", ".plot.png.x.tmp.keep"]


def _engine_supports_keep_checkpoint() -> bool:
    from truncflow.engine import integrate
    return "keep_checkpoint" in inspect.signature(integrate.simulate).parameters


needs_keep_checkpoint = pytest.mark.skipif(not _engine_supports_keep_checkpoint(),
                                           reason="simulate has no keep_checkpoint yet (issue 22, engine part)")


def job(tmp_path, text=TINY, name="job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("truncflow: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, err)


def assert_clean_run(code, err, out_dir):
    assert code == 0, err
    assert "Traceback" not in err
    assert all(line.startswith("truncflow: warning: ") for line in err.strip().splitlines()), err
    assert len(err.strip().splitlines()) <= 1, err
    assert truncflow.load_result(out_dir / "result.npz").status == "t_end"
    assert (out_dir / "config.toml").is_file()
    assert not (out_dir / LOCK).exists()
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(LOCK)]


def listing(folder: Path) -> dict:
    """name -> (size, mtime_ns, bytes) of every entry: to show that a folder is as it was."""
    got = {}
    for p in sorted(folder.iterdir()):
        st = p.lstat()
        got[p.name] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                       p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return got


def write_lock(folder: Path, pid: int, started, token="0123abcd", host=None) -> Path:
    """A lock as truncflow writes it: the process id, its start time and a token."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    lock.write_text(json.dumps({"pid": pid, "started": started, "token": token,
                                "host": socket.gethostname() if host is None else host}) + "\n")
    return lock


def proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (Linux), read here independently of truncflow."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def _env():
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_process(*argv, timeout=180, **kw):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, env=_env(),
                          timeout=timeout, **kw)


@pytest.fixture
def fast_plots(monkeypatch):
    """The two plots replaced by a small file written atomically (drawing them is the slow part)."""
    import truncflow.plot as plot
    from truncflow._files import atomic_write

    def stub(result, path, title=None, **kw):
        with atomic_write(path) as handle:
            handle.write(b"\x89PNG stub for " + str(result.status).encode())
        return Path(path)

    monkeypatch.setattr(plot, "plot_result", stub)
    monkeypatch.setattr(plot, "plot_snapshots", stub)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile (or load) the kernels the tiny job needs, once."""
    folder = tmp_path_factory.mktemp("compile")
    (folder / "job.toml").write_text(TINY)
    assert main(["run", str(folder / "job.toml"), "--out", str(folder / "o"), "--quiet"]) == 0
    return folder


# ------------------------------------------------------------------ lock files
MALFORMED = {
    "empty": b"",
    "garbage": b"not a lock at all\n",
    "huge number": b"99999999999999999999\n",
    "negative": b"-1\n",
    "zero": b"0\n",
    "init (pid 1, no start time)": b"1\n",
    "non-UTF-8": b"\xff\xfe\x00\x80lock\xc3\x28",
    "JSON list": b"[1, 2, 3]",
    "JSON without pid": b'{"started": 5, "token": "x"}',
    "JSON huge pid": b'{"pid": 99999999999999999999, "started": 1, "token": "x"}',
    "JSON pid is true": b'{"pid": true, "started": 1, "token": "x"}',
    "JSON start NaN": b'{"pid": 1, "started": NaN, "token": "x"}',
    "init with a wrong start time": b'{"pid": 1, "started": 123456789012, "token": "x"}',
    "deeply nested": b"[" * 3000 + b"]" * 3000,
    "very long": b"7" * 100_000,
}


@pytest.mark.parametrize("content", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_or_stale_lock_is_taken_over(compiled, fast_plots, capsys, tmp_path, content):
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK).write_bytes(content)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_clean_run(code, err, out)


def test_lock_that_is_a_folder_is_a_one_line_refusal(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    (out / LOCK).mkdir(parents=True)
    (out / LOCK / "inside").write_text("x")
    before = listing(out)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
    assert_user_error(code, err, "folder named .truncflow.lock", str(out))
    assert listing(out) == before
    assert (out / LOCK / "inside").read_text() == "x"


def test_lock_that_is_a_fifo_or_a_dangling_link_is_taken_over_without_hanging(compiled, fast_plots, capsys,
                                                                              tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    os.mkfifo(out / LOCK)          # reading it would block: it must not be read that way
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_clean_run(code, err, out)
    (out / LOCK).symlink_to(tmp_path / "nowhere")
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
    assert_clean_run(code, err, out)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_lock_is_taken_over(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    write_lock(out, os.getpid(), cli.lock.process_start(os.getpid())).chmod(0)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_clean_run(code, err, out)


def test_lock_that_cannot_be_removed_is_a_one_line_refusal(compiled, fast_plots, capsys, tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK).write_bytes(b"garbage")
    real_unlink = os.unlink

    def refuse(path, *a, **k):                    # the take-over removes the stale lock with unlink
        if Path(path).name == LOCK:
            raise PermissionError(1, "Operation not permitted")
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(os, "unlink", refuse)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    err = "\n".join(line for line in err.splitlines() if not line.startswith("truncflow: warning: "))
    assert_user_error(code, err, "cannot remove the stale lock file", "not permitted")
    assert (out / LOCK).read_bytes() == b"garbage"
    assert sorted(p.name for p in out.iterdir()) == [LOCK]


def test_lock_of_this_live_process_is_refused(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    lock = write_lock(out, os.getpid(), cli.lock.process_start(os.getpid()))
    before = lock.read_bytes()
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
    assert_user_error(code, err, "in use by another truncflow run", f"process {os.getpid()}")
    assert lock.read_bytes() == before          # another run's lock is left alone
    assert sorted(p.name for p in out.iterdir()) == [LOCK]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="Linux /proc")
def test_lock_written_by_a_run_holds_pid_start_time_and_token(compiled, capsys, tmp_path, monkeypatch):
    """While a run goes, its lock holds this process's id and /proc start time (read here
    independently) and a random token; a second run into the folder is refused."""
    seen = []
    real = truncflow.simulate

    def watching(*args, **kwargs):
        callback = kwargs["callback"]

        def spy(t, cost):
            if not seen:
                seen.append(json.loads((tmp_path / "o" / LOCK).read_text()))
                other = job(tmp_path, name="other.toml")
                seen.append(main(["run", str(other), "--out", str(tmp_path / "o"), "--overwrite", "--quiet"]))
            callback(t, cost)
        kwargs["callback"] = spy
        return real(*args, **kwargs)

    monkeypatch.setattr(truncflow, "simulate", watching)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    lock, inner = seen
    assert lock["pid"] == os.getpid()
    assert lock["started"] == proc_start_ticks(os.getpid())
    assert isinstance(lock["token"], str) and len(lock["token"]) >= 8 and int(lock["token"], 16) >= 0
    assert inner == 2 and "in use by another truncflow run" in err
    assert not (tmp_path / "o" / LOCK).exists()


def test_lock_with_a_live_pid_but_another_start_time_is_taken_over(compiled, fast_plots, capsys, tmp_path):
    """A killed run's process id given to another process since: the start time differs."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "o"
        started = cli.lock.process_start(holder.pid)
        assert started is not None
        write_lock(out, holder.pid, started + 1)
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
        assert_clean_run(code, err, out)
        assert err.strip() == ""          # a stale lock is replaced without a word
        write_lock(out, os.getpid(), cli.lock.process_start(os.getpid()) + 7)
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
        assert_clean_run(code, err, out)
        # the holder's own lock (right start time) is live
        write_lock(out, holder.pid, started)
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
        assert_user_error(code, err, "in use", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
    # and stale once it is gone
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--overwrite")
    assert_clean_run(code, err, out)


def test_old_style_lock_of_a_pid_reused_since_is_taken_over(compiled, fast_plots, capsys, tmp_path):
    """An earlier truncflow's lock ("PID\\n"): live only if that process started before the lock
    was written; a process started after it cannot have written it."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "o"
        out.mkdir()
        lock = out / LOCK
        lock.write_text(f"{holder.pid}\n")
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
        assert_user_error(code, err, "in use", str(holder.pid))
        hour_ago = time.time() - 3600
        os.utime(lock, (hour_ago, hour_ago))            # written before the holder started
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
        assert_clean_run(code, err, out)
    finally:
        holder.kill()
        holder.wait()


def test_lock_from_another_host_is_taken_over_with_one_warning(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    write_lock(out, os.getpid(), cli.lock.process_start(os.getpid()), host="some-other-node.example")
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_clean_run(code, err, out)
    assert "some-other-node.example" in err and err.startswith("truncflow: warning: ")


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from truncflow.cli.outputs import OutputFolder as _OutputFolder
    folder, go = Path(sys.argv[1]), Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    try:
        with _OutputFolder(folder, overwrite=True, resume=False):
            print("locked", flush=True)
            time.sleep(float(sys.argv[3]))
    except ValueError as exc:
        print("refused", exc, flush=True)
""")


def test_real_process_holding_the_lock_refuses_a_run_until_it_is_killed(compiled, tmp_path):
    """A real process holds the folder (truncflow's own lock); `python -m truncflow run` into it is
    refused in one line; after SIGKILL its lock is stale and the same command runs."""
    out, go = tmp_path / "o", tmp_path / "go"
    go.touch()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(go), "300"], stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert holder.stdout.readline().strip() == "locked"
        argv = ["-m", "truncflow", "run", job(tmp_path), "--out", out, "--quiet", "--overwrite"]
        proc = run_process(*argv)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith("truncflow: error: ") and f"process {holder.pid}" in proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).exists()          # SIGKILL: nothing removed it
    proc = run_process(*argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "Traceback" not in proc.stderr
    assert truncflow.load_result(out / "result.npz").status == "t_end"
    assert not (out / LOCK).exists()


def test_garbage_lock_in_a_real_process(compiled, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / LOCK).write_bytes(b"99999999999999999999\n")
    proc = run_process("-m", "truncflow", "run", job(tmp_path), "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr
    assert not (out / LOCK).exists() and (out / "result.npz").is_file()


def test_stale_lock_taken_over_by_one_of_several_racing_processes(compiled, tmp_path):
    """Four processes take over the same stale lock at the same moment: exactly one gets it."""
    out, go = tmp_path / "o", tmp_path / "go"
    write_lock(out, 2**22 + 12345, 1)          # no such process
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(go), "3"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    words = [o.split()[0] for o, _ in outs]
    assert sorted(words) == ["locked", "refused", "refused", "refused"], outs
    assert all("in use by another truncflow run" in o for o, _ in outs if o.startswith("refused"))
    assert all(e == "" for _, e in outs), outs
    assert not (out / LOCK).exists()
    assert sorted(p.name for p in out.iterdir()) == []


def test_take_over_never_moves_a_live_lock(tmp_path, monkeypatch):
    """A run that judged the lock stale, when another run has taken the folder since, leaves the
    live lock in place: never renamed away and put back, which left a moment without a lock
    where a third run could take the folder too (two racing takers both held it, seen once in
    test_stale_lock_taken_over_by_one_of_several_racing_processes on a fresh install)."""
    out = tmp_path / "o"
    write_lock(out, 2**22 + 999, 1)                       # no such process: stale
    taker = cli.outputs.OutputFolder(out, overwrite=False, resume=False)
    taker.token = "aaaa1111"
    st, data = taker._read_lock()
    (out / LOCK).unlink()
    live = write_lock(out, os.getpid(), cli.lock.process_start(os.getpid()), token="bbbb2222")
    touched = []
    for name in ("rename", "unlink", "link"):
        real = getattr(os, name)
        monkeypatch.setattr(cli.lock.os, name, lambda *a, _real=real, _name=name: (touched.append((_name, a)),
                                                                                  _real(*a))[1])
    taker._set_aside(st, data)
    assert not [t for t in touched if any(str(x) == str(live) for x in t[1])], touched
    assert (out / LOCK).read_bytes() == live.read_bytes()


def test_take_over_never_removes_a_lock_another_run_took_meanwhile(tmp_path):
    """The window of a take-over, made deterministic: run A judged the lock stale; before it
    sets that lock aside, run B took the folder (a live lock in its place). A must leave B's."""
    out = tmp_path / "o"
    write_lock(out, 2**22 + 999, 1)                       # no such process: stale
    taker = cli.outputs.OutputFolder(out, overwrite=False, resume=False)
    taker.token = "aaaa1111"
    st, data = taker._read_lock()
    assert not cli.lock.holder_alive(cli.lock.parse_lock(data), st.st_mtime)
    (out / LOCK).unlink()
    live = write_lock(out, os.getpid(), cli.lock.process_start(os.getpid()), token="bbbb2222")
    fresh = live.read_bytes()
    taker._set_aside(st, data)
    assert live.read_bytes() == fresh
    assert sorted(p.name for p in out.iterdir()) == [LOCK]
    taker._set_aside(*taker._read_lock())                 # what it judged is what is there: removed
    assert sorted(p.name for p in out.iterdir()) == []


# --------------------------------------------------------------- modes, umask
UMASK_SCRIPT = textwrap.dedent("""
    import os, sys
    from truncflow.cli import main
    os.umask(int(sys.argv[1], 8))
    sys.exit(main(["run", sys.argv[2], "--out", sys.argv[3], "--quiet"]))
""")


@pytest.mark.parametrize("umask,mode", [("022", 0o644), ("077", 0o600), ("002", 0o664)])
def test_output_files_follow_the_umask(compiled, tmp_path, umask, mode):
    out = tmp_path / "o"
    proc = run_process("-c", UMASK_SCRIPT, umask, job(tmp_path), out)
    assert proc.returncode == 0, proc.stderr
    names = ["result.npz", "config.toml", "plot.png", "snapshots.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


def test_atomic_write_gives_the_mode_of_open(tmp_path):
    from truncflow._files import atomic_write, current_umask
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        with atomic_write(tmp_path / "a.bin") as handle:
            handle.write(b"x")
        with open(tmp_path / "b.bin", "wb") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "b.bin").stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


# ----------------------------------------------------------- stray temporaries
def _plant(folder: Path, names) -> None:
    for name in names:
        (folder / name).write_bytes(b"left by a killed run")


def test_stray_temporaries_are_removed_on_overwrite_and_user_files_kept(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    config = job(tmp_path)
    assert run_cli(capsys, "run", config, "--out", out, "--quiet")[0] == 0
    _plant(out, TMP_NAMES + USER_NAMES)
    (out / ".result.npz.dir.tmp").mkdir()           # a folder of that name is not a temporary file
    code, _, err = run_cli(capsys, "run", config, "--out", out, "--quiet", "--overwrite")
    assert code == 0, err
    left = {p.name for p in out.iterdir()}
    assert not left & set(TMP_NAMES)
    assert set(USER_NAMES) | {".result.npz.dir.tmp"} <= left


def test_a_folder_with_only_stray_temporaries_is_not_refused_as_not_empty(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    _plant(out, [".config.toml.x7.tmp"])          # killed while writing its config: nothing else
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_clean_run(code, err, out)
    assert not (out / ".config.toml.x7.tmp").exists()


def test_clean_exit_removes_temporaries_left_during_the_run(compiled, fast_plots, capsys, tmp_path, monkeypatch):
    real = truncflow.simulate

    def leaving(*args, **kwargs):
        result = real(*args, **kwargs)
        _plant(tmp_path / "o", [".checkpoint.npz.late.tmp", ".plot.png.late.tmp"])
        return result

    monkeypatch.setattr(truncflow, "simulate", leaving)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet")
    assert_clean_run(code, err, tmp_path / "o")
    assert not list((tmp_path / "o").glob(".*.tmp"))


SLOW_RUN = textwrap.dedent("""
    import sys, time
    import truncflow
    from truncflow.cli import main
    real = truncflow.simulate
    def slow(*args, **kwargs):
        callback = kwargs["callback"]
        def sleepy(t, cost):
            time.sleep(0.05)
            callback(t, cost)
        kwargs["callback"] = sleepy
        return real(*args, **kwargs)
    truncflow.simulate = slow
    sys.exit(main(["run", sys.argv[1], "--out", sys.argv[2], "--quiet", "--checkpoint-every", "0"]))
""")


def test_sigkill_then_resume_removes_strays_and_finishes(compiled, fast_plots, capsys, tmp_path):
    """A real run killed with SIGKILL after its first checkpoints leaves its lock and (here,
    planted) temporaries; --resume takes the folder, removes them and finishes the run."""
    out = tmp_path / "o"
    config = job(tmp_path, TINY.replace("t_end = 2.0", "t_end = 60.0"))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(config), str(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.npz").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (out / LOCK).exists() and not (out / "result.npz").exists()
    _plant(out, TMP_NAMES)
    code, _, err = run_cli(capsys, "run", "--resume", out, "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    assert truncflow.load_result(out / "result.npz").status == "t_end"
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "plot.png", "result.npz", "snapshots.png"]


# ------------------------------------------------- runs that do not start
def test_failure_before_the_flow_leaves_no_folder_and_the_rerun_works(compiled, fast_plots, capsys, tmp_path,
                                                                      monkeypatch):
    real = truncflow.simulate

    def failing(*args, **kwargs):
        raise ValueError("simulated failure before the first record")

    out = tmp_path / "new" / "deeper" / "o"
    monkeypatch.setattr(truncflow, "simulate", failing)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert_user_error(code, err, "simulated failure")
    assert not (tmp_path / "new").exists()            # every folder it created is gone
    monkeypatch.setattr(truncflow, "simulate", real)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")   # the same command again
    assert_clean_run(code, err, out)


def test_failure_before_the_flow_leaves_an_existing_folder_as_it_was(compiled, fast_plots, capsys, tmp_path,
                                                                     monkeypatch):
    def failing(*args, **kwargs):
        raise ValueError("simulated failure")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(truncflow, "simulate", failing)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", empty, "--quiet")
    assert_user_error(code, err, "simulated failure")
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_failure_before_the_flow_with_overwrite_keeps_the_earlier_run(compiled, fast_plots, capsys, tmp_path,
                                                                      monkeypatch):
    """--overwrite replaces an earlier run's files only once the new flow has started."""
    out = tmp_path / "o"
    assert run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")[0] == 0
    (out / "notes.txt").write_text("mine")
    before = listing(out)

    def failing(*args, **kwargs):
        raise ValueError("simulated failure")

    monkeypatch.setattr(truncflow, "simulate", failing)
    other = job(tmp_path, TINY.replace('name = "tiny"', 'name = "other"'), name="other.toml")
    code, _, err = run_cli(capsys, "run", other, "--out", out, "--quiet", "--overwrite")
    assert_user_error(code, err, "simulated failure")
    after = listing(out)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name][3] == before[name][3], name        # the same bytes: config.toml put back
    assert 'name = "tiny"' in (out / "config.toml").read_text()


def test_data_that_cannot_be_flowed_is_one_line_and_leaves_no_folder(compiled, fast_plots, capsys, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", job(tmp_path, LATE_FAILURE), "--out", out, "--quiet")
    assert_user_error(code, err, "initial state cannot be flowed", "overflow")
    assert not out.exists()


def test_signal_during_setup_leaves_the_folder_as_it_was(compiled, fast_plots, capsys, tmp_path, monkeypatch):
    """A real SIGINT after the folder is taken but before the flow starts: exit 130, nothing written."""
    def interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        return True

    monkeypatch.setattr(cli.run, "kernels_cached", interrupt)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out)
    assert code == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("truncflow: interrupted (SIGINT) before the run started")
    assert not out.exists()


def test_gpu_unavailable_touches_no_folder(capsys, tmp_path):
    from truncflow.device import CudaUnavailableError, require_cuda
    try:
        require_cuda()
    except CudaUnavailableError:
        pass
    else:
        pytest.skip("a GPU is available here")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--device", "cuda")
    assert_user_error(code, err)
    assert not out.exists()


# ------------------------------------------------------------------- Dask
def test_connect_timeout_usage_errors(capsys, tmp_path):
    for value in ("0", "-3", "nan", "inf", "soon"):
        code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--scheduler",
                               "tcp://127.0.0.1:1", "--connect-timeout", value)
        assert_user_error(code, err, "--connect-timeout")
    assert not (tmp_path / "o").exists()


@pytest.mark.dask
def test_unreachable_scheduler_fails_fast_in_one_line_and_leaves_no_folder(compiled, capsys, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    began = time.monotonic()
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--scheduler",
                           "tcp://127.0.0.1:1")
    took = time.monotonic() - began
    assert_user_error(code, err, "tcp://127.0.0.1:1", f"{cli.parser.DEFAULT_CONNECT_TIMEOUT:g} s")
    assert took < 10.0, took
    assert not out.exists()
    # the same command again is not refused as "not empty"; a shorter timeout is said
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet", "--scheduler",
                           "tcp://127.0.0.1:1", "--connect-timeout", "0.5")
    assert_user_error(code, err, "tcp://127.0.0.1:1", "0.5 s")
    assert not out.exists()


@pytest.mark.dask
def test_connect_timeout_from_the_cluster_section(compiled, capsys, tmp_path, monkeypatch):
    """[cluster] connect_timeout (once the configuration knows it) is what the client waits."""
    pytest.importorskip("distributed")
    import truncflow.config as config

    real = config.load_config

    def with_timeout(path=None):
        cfg = real(path)
        cfg.cluster = {"scheduler": "tcp://127.0.0.1:1", "connect_timeout": 0.7}
        return cfg

    monkeypatch.setattr(config, "load_config", with_timeout)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet")
    assert_user_error(code, err, "0.7 s")
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet",
                           "--connect-timeout", "0.4")                 # the flag wins
    assert_user_error(code, err, "0.4 s")


@pytest.mark.dask
def test_connect_timeout_in_the_job_file(compiled, capsys, tmp_path):
    """A job file's [cluster] connect_timeout = 2: an unreachable scheduler is given up after 2 s, not 5."""
    pytest.importorskip("distributed")
    text = TINY + '[cluster]\nscheduler = "tcp://127.0.0.1:1"\nconnect_timeout = 2\n'
    out = tmp_path / "o"
    began = time.monotonic()
    code, _, err = run_cli(capsys, "run", job(tmp_path, text), "--out", out, "--quiet")
    took = time.monotonic() - began
    assert_user_error(code, err, "tcp://127.0.0.1:1")
    assert "within 2 s" in err or "timeout 2 s" in err, err
    assert took < 6.0, took
    assert not out.exists()


@pytest.mark.parametrize("cluster, words", [
    ("connect_timeout = 2", ["connect_timeout", "scheduler"]),
    ("local = 2\nconnect_timeout = 2", ["connect_timeout", "scheduler"]),
    ('scheduler = "tcp://127.0.0.1:1"\nconnect_timeout = 0', ["connect_timeout", "> 0"]),
    ('scheduler = "tcp://127.0.0.1:1"\nconnect_timeout = true', ["connect_timeout", "number"]),
    ('scheduler = "tcp://127.0.0.1:1"\nconnect_timeout = "5"', ["connect_timeout", "number"]),
])
def test_connect_timeout_in_the_job_file_is_checked(capsys, tmp_path, cluster, words):
    """[cluster] connect_timeout is a number of seconds > 0, and only with scheduler (a cluster the
    run connects to): refused in one line by --check, before anything is connected or written."""
    code, _, err = run_cli(capsys, "run", job(tmp_path, TINY + "[cluster]\n" + cluster + "\n"), "--check", "--quiet")
    assert_user_error(code, err, "[cluster]", *words)


@pytest.mark.dask
def test_unknown_scheduler_protocol_and_info_are_one_line(capsys, tmp_path):
    pytest.importorskip("distributed")
    began = time.monotonic()
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--scheduler", "foo://x:1")
    assert_user_error(code, err, "foo://x:1", "unknown address scheme")
    assert time.monotonic() - began < 5.0
    code, _, err = run_cli(capsys, "info", "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "0.5")
    assert_user_error(code, err, "tcp://127.0.0.1:1", "0.5 s")


@pytest.mark.dask
def test_unreachable_scheduler_in_a_real_process(compiled, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    began = time.monotonic()
    proc = run_process("-m", "truncflow", "run", job(tmp_path), "--out", out, "--quiet", "--scheduler",
                       "tcp://127.0.0.1:1", "--connect-timeout", "2")
    assert time.monotonic() - began < 25.0           # not Dask's 30 s
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("truncflow: error: ") and "2 s" in proc.stderr
    assert not out.exists()


# ------------------------------------------- the checkpoint of a finished run
@needs_keep_checkpoint
def test_checkpoint_goes_only_after_result_and_plots_are_written(compiled, fast_plots, capsys, tmp_path,
                                                                 monkeypatch):
    present = []
    real = cli.run.write_outputs

    def watching(result, cfg, folder):
        present.append((folder / "checkpoint.npz").is_file())
        written = real(result, cfg, folder)
        present.append((folder / "checkpoint.npz").is_file())
        return written

    monkeypatch.setattr(cli.run, "write_outputs", watching)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet")
    assert_clean_run(code, err, tmp_path / "o")
    assert present == [True, True]                    # kept while the outputs were written ...
    assert not (tmp_path / "o" / "checkpoint.npz").exists()     # ... removed after


@needs_keep_checkpoint
def test_plot_that_fails_keeps_the_checkpoint_and_resume_finishes(compiled, fast_plots, capsys, tmp_path,
                                                                  monkeypatch):
    import truncflow.plot as plot
    out = tmp_path / "o"
    stub = plot.plot_snapshots

    def broken(*args, **kwargs):
        raise RuntimeError("no snapshots today")

    monkeypatch.setattr(plot, "plot_snapshots", broken)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", out, "--quiet")
    assert "could not write the snapshots" in err
    first = truncflow.load_result(out / "result.npz")
    assert first.status == "t_end"
    assert (out / "checkpoint.npz").is_file()         # the outputs are not all whole: it stays
    monkeypatch.setattr(plot, "plot_snapshots", stub)
    code, _, err = run_cli(capsys, "run", "--resume", out, "--quiet")
    assert code == 0, err
    assert (out / "snapshots.png").is_file() and not (out / "checkpoint.npz").exists()
    again = truncflow.load_result(out / "result.npz")
    for name, series in first.series.items():
        assert np.array_equal(again.series[name], series), name


KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    import truncflow.cli as cli
    from truncflow.cli import main
    def die(result, cfg, folder):
        os.kill(os.getpid(), signal.SIGKILL)          # the run has finished; nothing is saved yet
    cli.run.write_outputs = die
    sys.exit(main(["run", sys.argv[1], "--out", sys.argv[2], "--quiet"]))
""")


@needs_keep_checkpoint
def test_run_killed_after_finishing_but_before_saving_is_resumed_from_its_checkpoint(compiled, fast_plots,
                                                                                    capsys, tmp_path):
    out = tmp_path / "o"
    config = job(tmp_path)
    assert run_cli(capsys, "run", config, "--out", tmp_path / "whole", "--quiet")[0] == 0
    expected = truncflow.load_result(tmp_path / "whole" / "result.npz")
    proc = run_process("-c", KILLED_WHILE_SAVING, config, out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "checkpoint.npz").is_file() and not (out / "result.npz").exists()
    code, _, err = run_cli(capsys, "run", "--resume", out, "--quiet")
    assert code == 0, err
    resumed = truncflow.load_result(out / "result.npz")
    assert resumed.status == "t_end"
    for name, series in expected.series.items():
        assert np.array_equal(resumed.series[name], series), name
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "plot.png", "result.npz", "snapshots.png"]


def test_interrupted_run_keeps_its_checkpoint(compiled, fast_plots, capsys, tmp_path, monkeypatch):
    real = truncflow.simulate

    def interrupted(*args, **kwargs):
        callback = kwargs["callback"]
        steps = []

        def after_two(t, cost):
            steps.append(t)
            if len(steps) == 2:
                os.kill(os.getpid(), signal.SIGINT)
            callback(t, cost)
        kwargs["callback"] = after_two
        return real(*args, **kwargs)

    monkeypatch.setattr(truncflow, "simulate", interrupted)
    code, _, err = run_cli(capsys, "run", job(tmp_path), "--out", tmp_path / "o", "--quiet")
    assert code == 130, err
    assert (tmp_path / "o" / "checkpoint.npz").is_file()
    assert truncflow.load_result(tmp_path / "o" / "result.npz").status == "interrupted"
