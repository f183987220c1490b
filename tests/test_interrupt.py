"""Real signals and kills sent to real processes: nothing recorded is lost.

- SIGINT and SIGTERM at random moments of a run (inside a Numba kernel, inside
  SciPy's step, between gradient-descent steps), through the API and the command
  line: status "interrupted" naming the signal, exit code 0 from a script that
  calls simulate, 130 / 143 from the command line, every record kept, and the final
  record is the last accepted state (the one the last progress callback saw).
- A signal while the command line writes its files: the files are whole.
- SIGKILL at a random moment, then ``truncflow run --resume``: the same records,
  bit for bit, as a run never stopped.

Each subprocess imports truncflow with the kernels already compiled by earlier
tests of the session (``compiled`` fixture), so it starts in about a second.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf
from truncflow.cli import main

pytestmark = pytest.mark.long     # end-to-end runs in subprocesses, signals at random moments

#: Long enough (a few seconds) that a signal at a random moment falls inside the run.
JOB = """
seed = 0

[data]
source = "gaussian"
n_points = 20000
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]

[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]

[flow]
method = "{method}"
t_end = {t_end}
{step}

[record]
n_records = 40
t_first = 0.001

[output]
name = "signals"
"""

API_SCRIPT = textwrap.dedent("""
    import json, sys
    import truncflow as tf
    from truncflow.config import load_config
    cfg = load_config(sys.argv[1])
    seen = []
    def callback(t, cost):
        seen.append(float(t))
        if len(seen) == 1:
            print("started", flush=True)
    r = cfg.simulate_kwargs
    result = tf.simulate(cfg.params, cfg.dataset, callback=callback, **r)
    result.save(sys.argv[2])
    print(json.dumps({"status": result.status, "message": result.message, "last_seen": seen[-1] if seen else None}),
          flush=True)
""")


def job(tmp_path, method, t_end=None, name="job.toml"):
    step = "rtol = 1e-7\natol = 1e-10" if method == "rk45" else "lr = 0.01"
    t_end = t_end or (60.0 if method == "rk45" else 100.0)   # both outlast the signals (1.5 s)
    path = tmp_path / name
    path.write_text(JOB.format(method=method, t_end=t_end, step=step))
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile (or load from the cache) the kernels a run needs, in this process, once."""
    folder = tmp_path_factory.mktemp("compile")
    text = JOB.format(method="rk45", t_end=0.01, step="rtol = 1e-4").replace("n_points = 20000", "n_points = 300")
    (folder / "tiny.toml").write_text(text)
    assert main(["run", str(folder / "tiny.toml"), "--out", str(folder / "o"), "--quiet"]) == 0


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tf.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _start(argv):
    return subprocess.Popen([sys.executable, *map(str, argv)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=180.0):
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early with code {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("process did not start its run in time")
        time.sleep(0.01)


def _signal_at_random_moments(procs, signals, rng, longest=1.5):
    """Send signals[i] to procs[i] at independent random moments within ``longest`` seconds
    (all processes have started their runs); returns their (returncode, stdout, stderr)."""
    delays = rng.uniform(0.0, longest, len(procs))
    began = time.monotonic()
    for i in np.argsort(delays):
        time.sleep(max(0.0, began + delays[i] - time.monotonic()))
        procs[i].send_signal(signals[i])
    outs = [p.communicate(timeout=300) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _final_state_is_last_accepted(result, last_seen):
    """The final record is the state the last progress callback saw, and it is a valid record."""
    assert result.status == "interrupted"
    assert np.all(np.diff(result.t) > 0)
    if last_seen is not None:
        assert result.t[-1] == last_seen
    assert np.isfinite(result.cost).all()


SIGNALS = [signal.SIGINT, signal.SIGTERM] * 2


# ------------------------------------------------------------------- API
@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_random_signals_through_the_api(compiled, tmp_path, method):
    config = job(tmp_path, method)
    outs = [tmp_path / f"r{i}.npz" for i in range(len(SIGNALS))]
    procs = [_start(["-c", API_SCRIPT, config, out]) for out in outs]
    for p in procs:
        assert p.stdout.readline().strip() == "started"
    done = _signal_at_random_moments(procs, SIGNALS, np.random.default_rng(1 if method == "rk45" else 2))
    for (code, stdout, stderr), sig, out in zip(done, SIGNALS, outs):
        assert code == 0, stderr
        assert "Traceback" not in stderr and "SystemError" not in stderr, stderr
        report = json.loads(stdout.strip().splitlines()[-1])
        assert report["status"] == "interrupted", report
        assert sig.name in report["message"]
        _final_state_is_last_accepted(tf.load_result(out), report["last_seen"])


# ----------------------------------------------------------- command line
@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_random_signals_through_the_command_line(compiled, tmp_path, method):
    config = job(tmp_path, method)
    folders = [tmp_path / f"o{i}" for i in range(len(SIGNALS))]
    procs = [_start(["-m", "truncflow", "run", config, "--out", f, "--quiet", "--checkpoint-every", "0"])
             for f in folders]
    for p, f in zip(procs, folders):
        _wait_for(lambda: (f / "checkpoint.npz").is_file(), p)
    done = _signal_at_random_moments(procs, SIGNALS, np.random.default_rng(3 if method == "rk45" else 4))
    for (code, stdout, stderr), sig, folder in zip(done, SIGNALS, folders):
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and f"interrupted ({sig.name})" in lines[0], stderr
        result = tf.load_result(folder / "result.npz")
        assert result.status == "interrupted" and sig.name in result.message
        assert (folder / "plot.png").is_file() and (folder / "config.toml").is_file()
        assert not (folder / ".truncflow.lock").exists()
        # the checkpoint holds the last accepted state: the final record's
        with np.load(folder / "checkpoint.npz") as z:
            state = json.loads(str(z["__checkpoint__"]))["state"]
        t_ck = state["t"] if method == "rk45" else state["k"] * 0.01
        assert t_ck == pytest.approx(result.t[-1], rel=1e-12, abs=0)


def test_signal_while_writing_the_result_leaves_whole_files(compiled, tmp_path, monkeypatch, capsys):
    """SIGINT twice while the result file is being written: the file is complete, exit 130."""
    import truncflow._files as files

    real = files.atomic_savez
    calls = []

    def interrupting(path, **arrays):
        calls.append(path)
        os.kill(os.getpid(), signal.SIGINT)     # the "second Ctrl-C", during saving
        os.kill(os.getpid(), signal.SIGINT)
        return real(path, **arrays)

    config = job(tmp_path, "gd", t_end=0.1)
    config.write_text(config.read_text().replace("n_points = 20000", "n_points = 500"))
    monkeypatch.setattr("truncflow.engine.record.atomic_savez", interrupting)
    code = main(["run", str(config), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 130 and calls
    assert "while saving" in capsys.readouterr().err
    result = tf.load_result(tmp_path / "o" / "result.npz")   # whole: it loads, every series complete
    assert result.status == "t_end" and result.n_records > 2
    assert not list((tmp_path / "o").glob(".*.tmp"))


# ------------------------------------------------------- kill and resume
@pytest.mark.parametrize("method", ["rk45", "gd"])
def test_sigkill_then_resume_gives_the_same_records_bit_for_bit(compiled, tmp_path, method):
    config = job(tmp_path, method, t_end=5.0 if method == "rk45" else 4.0)
    whole = tmp_path / "whole"
    assert main(["run", str(config), "--out", str(whole), "--quiet"]) == 0
    expected = tf.load_result(whole / "result.npz")
    folders = [tmp_path / f"killed{i}" for i in range(2)]
    procs = [_start(["-m", "truncflow", "run", config, "--out", f, "--quiet", "--checkpoint-every", "0"])
             for f in folders]
    for p, f in zip(procs, folders):
        _wait_for(lambda: (f / "checkpoint.npz").is_file(), p)
    done = _signal_at_random_moments(procs, [signal.SIGKILL] * 2, np.random.default_rng(5 if method == "rk45" else 6))
    for (code, _, _), folder in zip(done, folders):
        assert code == -signal.SIGKILL
        assert (folder / ".truncflow.lock").exists()       # left behind by the killed process
        resume = subprocess.run([sys.executable, "-m", "truncflow", "run", "--resume", str(folder), "--quiet"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert resume.returncode == 0, resume.stderr
        resumed = tf.load_result(folder / "result.npz")
        assert resumed.status == expected.status
        for name, series in expected.series.items():
            assert np.array_equal(resumed.series[name], series), name
        assert not (folder / "checkpoint.npz").exists()      # a finished run leaves no checkpoint
