"""Signals in every phase of a run, the first compilation included, and runs that cannot finish.

- A signal that arrives while Numba compiles (a first run with an empty cache spends
  minutes there) raises ``Interrupted`` at once; a compilation that starts after a
  signal was noted raises at once too (the run is stopping: nothing is compiled for it).
- The command line, started with an empty Numba cache and sent SIGINT or SIGTERM at
  a random moment (configuration, data, compilation, the flow), exits 130 or 143
  within seconds, with one line on stderr and no traceback; what it recorded is
  saved, and what it did not record leaves no half-made folder behind.
- ``simulate`` refuses runs that imply more steps than can finish, and raises an
  rtol below what the stepper honours to that floor with one warning.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf
from truncflow.engine.control import Interrupted, SignalGuard
from truncflow.engine.integrate import MAX_IMPLIED_STEPS, MIN_RTOL

from conftest import make_problem
from jobs import cones_job

ROOT = Path(tf.__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# ------------------------------------------------------------ compilation
COMPILE_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from numba import njit
    from numba.core import event
    from truncflow.engine.control import Interrupted, SignalGuard

    class SendSignal(event.Listener):          # the signal arrives while Numba compiles
        def on_start(self, ev):
            if sys.argv[1] == "during":
                os.kill(os.getpid(), signal.SIGTERM)
        def on_end(self, ev):
            pass

    event.register("numba:compile", SendSignal())

    @njit
    def f(x):
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] * x[i]
        return s

    @njit
    def g(x):
        return x + 1.0

    import numpy as np
    with SignalGuard() as guard:
        if sys.argv[1] == "before":             # noted first, then a compilation starts
            os.kill(os.getpid(), signal.SIGINT)
        try:
            f(np.ones(3))
        except Interrupted as exc:
            print("interrupted", exc.signal_name, "received", guard.received)
            sys.exit(0)
    print("compiled", f(np.ones(3)))
    sys.exit(1)
""")


@pytest.mark.parametrize("when, name", [("during", "SIGTERM"), ("before", "SIGINT")])
def test_a_signal_stops_a_compilation_at_once(tmp_path, when, name):
    out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, when], env=_env(NUMBA_CACHE_DIR=str(tmp_path)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["interrupted", name, "received", name]


def test_compilation_without_a_signal_is_untouched():
    """The compile watch counts compilations of the main thread and raises nothing by itself."""
    from numba import njit

    from truncflow.engine.control import _COMPILING

    @njit
    def h(x):
        return 2.0 * x

    with SignalGuard():
        assert h(1.5) == 3.0
    assert _COMPILING.depth == 0


def test_interrupted_before_the_first_record_raises(monkeypatch):
    """No record was made: simulate has no Result to return, it raises Interrupted (a KeyboardInterrupt)."""
    p = make_problem(0, L=2, M=2, N=30, Q=2)
    ds = p.dataset()
    from truncflow.engine import record

    real = record.observe_checked

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)     # noted by the guard; the record must stop the run
        raise Interrupted("SIGINT")             # as the compile watch raises during a compilation

    monkeypatch.setattr(record, "observe_checked", signalled)
    with pytest.raises(KeyboardInterrupt):
        tf.simulate(p.params, ds, 1.0)
    monkeypatch.setattr(record, "observe_checked", real)
    assert tf.simulate(p.params, ds, 0.1).status == "t_end"     # the process is usable after it


# ----------------------------------------------- the command line, cold cache
JOB = cones_job(3000, 'method = "rk45"\nt_end = 30.0', 20, "cold")


@pytest.fixture(scope="module")
def import_seconds(tmp_path_factory):
    """How long a fresh process takes to import truncflow's command line here (twice that, for
    margin): before that, Python's own import is under way and a signal has Python's default
    effect (see docs/CLI.md); the run's phases start after it."""
    cache = tmp_path_factory.mktemp("import-cache")
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import truncflow.cli"], env=_env(NUMBA_CACHE_DIR=str(cache)), check=True,
                   timeout=120)
    return 2 * (time.monotonic() - started)


def _cold_run_signalled(tmp_path, sig, delay):
    """`truncflow run` with an empty Numba cache, sent ``sig`` ``delay`` seconds after it starts;
    (returncode, stderr, seconds from the signal to the exit, output folder)."""
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    folder = tmp_path / "out"
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "truncflow", "run", str(job), "--out", str(folder), "--quiet"],
                            env=_env(NUMBA_CACHE_DIR=str(cache)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"{sig.name} {delay:.1f} s after a cold start was not honoured within 60 s")
    return proc.returncode, stderr, time.monotonic() - sent, folder


def _check_signalled_run(code, stderr, waited, folder, sig):
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], stderr
    assert waited < 15, f"exited {waited:.1f} s after {sig.name}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "interrupted" in lines[0] and sig.name in lines[0], stderr
    if (folder / "result.npz").exists():        # it recorded: what it recorded is whole, with its plots
        result = tf.load_result(folder / "result.npz")
        assert result.status == "interrupted" and result.n_records >= 1
        assert "at t = " in lines[0], stderr
        assert {"plot.png", "snapshots.png", "checkpoint.npz"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob(".*.tmp")) if folder.exists() else True
    assert not (folder / ".truncflow.lock").exists()


@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, 1.0), (signal.SIGTERM, 4.0)])
def test_signal_during_a_first_run_with_an_empty_cache(tmp_path, import_seconds, sig, delay):
    _check_signalled_run(*_cold_run_signalled(tmp_path, sig, import_seconds + delay), sig)


@pytest.mark.long  # a cold-cache run in a subprocess (about 40 s)
def test_signal_after_the_first_step_of_a_first_run_saves_everything(tmp_path):
    """SIGINT once the flow has taken its first step, with an empty cache: the plots still have
    their kernels to compile. Those compilations used to raise on the signal already noted, so
    the files stopped after result.npz and the message said nothing was recorded. Now every file
    is written and the message says where the signal landed (in the flow, or while saving)."""
    job = tmp_path / "job.toml"
    job.write_text(JOB.replace("t_end = 30.0", "t_end = 30.0\nrtol = 1e-10\natol = 1e-12"))
    folder, cache = tmp_path / "out", tmp_path / "numba-cache"
    cache.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "truncflow", "run", str(job), "--out", str(folder)],
                            env=_env(NUMBA_CACHE_DIR=str(cache)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    seen, end = "", time.monotonic() + 240
    while "cost " not in seen and proc.poll() is None and time.monotonic() < end:
        seen += proc.stderr.read(1)         # the progress line shows the cost after the first step
    assert "cost " in seen, seen
    proc.send_signal(signal.SIGINT)
    text = seen + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in text, text
    last = text.rsplit("truncflow: ", 1)[-1]
    assert last.startswith("interrupted (SIGINT) at t = ") or last.startswith("interrupted (SIGINT) while saving"), text
    result = tf.load_result(folder / "result.npz")
    assert result.status in ("interrupted", "t_end") and result.n_records >= 1
    assert {"config.toml", "result.npz", "plot.png", "snapshots.png"} <= {p.name for p in folder.iterdir()}
    assert not (folder / ".truncflow.lock").exists()


@pytest.mark.long
@pytest.mark.parametrize("seed", range(4))      # SIGINT, SIGTERM, SIGINT, SIGTERM at random moments
def test_signals_at_random_moments_of_first_runs(tmp_path, import_seconds, seed):
    rng = np.random.default_rng(seed)
    sig = [signal.SIGINT, signal.SIGTERM][seed % 2]
    delay = import_seconds + float(rng.uniform(0.0, 20.0))
    _check_signalled_run(*_cold_run_signalled(tmp_path, sig, delay), sig)


# ------------------------------------------------------- runs that cannot finish
def test_runs_that_cannot_finish_are_refused():
    p = make_problem(1, L=2, M=2, N=20, Q=2)
    ds = p.dataset()
    with pytest.raises(ValueError, match=r"implies 1e\+12 steps.*max_evals or max_time"):
        tf.simulate(p.params, ds, 1.0, method="kinks", max_step=1e-12)
    with pytest.raises(ValueError, match=r"lr=1e-10 implies .*steps"):
        tf.simulate(p.params, ds, 1.0, method="gd", lr=1e-10)
    with pytest.raises(ValueError, match=r"t_end=1e\+308 is beyond"):
        tf.simulate(p.params, ds, 1e308, method="kinks")
    with pytest.raises(ValueError, match=r"t_end=1e\+308 is beyond"):
        tf.simulate(p.params, ds, 1e308)
    # a budget bounds it: accepted, and it stops on the budget
    r = tf.simulate(p.params, ds, 1.0, method="gd", lr=1.0 / (10 * MAX_IMPLIED_STEPS), max_evals=5)
    assert r.status == "max_evals"


def test_an_rtol_below_the_stepper_floor_is_raised_once_with_one_warning():
    p = make_problem(2, L=2, M=2, N=20, Q=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = tf.simulate(p.params, p.dataset(), 0.2, rtol=1e-16, atol=1e-18, max_evals=300)
    ours = [w for w in caught if "rtol=1e-16" in str(w.message)]
    assert len(ours) == 1 and f"{MIN_RTOL:.3g}" in str(ours[0].message)
    assert not [w for w in caught if "too small" in str(w.message)]     # SciPy's own, at every step
    assert r.config["rtol"] == MIN_RTOL and r.status in ("t_end", "max_evals")
