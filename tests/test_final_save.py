"""SIGKILL while a finished run saves: the folder still completes with --resume.

The checkpoint of a finished run stays until result.npz and both plots are written
and renamed; a kill at any of those moments leaves a folder that ``truncflow run
--resume`` completes, with the uninterrupted run's result, array for array, and no
checkpoint or temporary file left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf
from truncflow.cli import main

from jobs import cones_job

JOB = cones_job(4000, 'method = "{method}"\nt_end = 2.0\n{step}', 30, "final-save")

#: The moments a finished run's files are being written (the temporary file exists),
#: and the moment after the last of them (the result and plots renamed, the checkpoint not yet removed).
MOMENTS = (".result.npz.", ".plot.png.", ".snapshots.png.")


def _job(tmp_path, method):
    step = "rtol = 1e-6\natol = 1e-9" if method in ("rk45", "kinks") else "lr = 0.01"
    path = tmp_path / f"{method}.toml"
    path.write_text(JOB.format(method=method, step=step))
    return path


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tf.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _kill_when_writing(job, folder, prefix, timeout=120.0):
    """Run the job in a process; SIGKILL it as soon as a temporary file starting with ``prefix``
    appears in ``folder``. True if it was killed there, False if the run ended first."""
    proc = subprocess.Popen([sys.executable, "-m", "truncflow", "run", str(job), "--out", str(folder), "--quiet"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < end:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                names = []
            if any(n.startswith(prefix) and n.endswith(".tmp") for n in names):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return True
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    return False


def _same_result(a, b):
    assert a.status == b.status and a.message == b.message
    assert set(a.series) == set(b.series)
    for name, series in b.series.items():
        assert np.array_equal(a.series[name], series, equal_nan=True), name
    assert set(a.arrays) == set(b.arrays)
    for name, array in b.arrays.items():
        assert np.array_equal(a.arrays[name], array, equal_nan=True), name


@pytest.mark.long
@pytest.mark.parametrize("method", ["rk45", "gd", "kinks"])
def test_sigkill_while_saving_then_resume_completes_the_folder(tmp_path, method):
    job = _job(tmp_path, method)
    assert main(["run", str(job), "--out", str(tmp_path / "whole"), "--quiet"]) == 0      # also compiles
    expected = tf.load_result(tmp_path / "whole" / "result.npz")
    hits = {moment: 0 for moment in MOMENTS}
    for trial in range(3 * len(MOMENTS)):
        moment = MOMENTS[trial % len(MOMENTS)]
        if hits[moment] >= 1:                       # each moment caught once (each kill costs a run)
            continue
        folder = tmp_path / f"killed{trial}"
        if not _kill_when_writing(job, folder, moment):
            continue                                # the file came and went between two looks
        hits[moment] += 1
        assert (folder / "checkpoint.npz").is_file(), sorted(os.listdir(folder))
        resume = subprocess.run([sys.executable, "-m", "truncflow", "run", "--resume", str(folder), "--quiet"],
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert resume.returncode == 0, resume.stderr
        _same_result(tf.load_result(folder / "result.npz"), expected)
        left = sorted(os.listdir(folder))
        assert left == sorted(["config.toml", "result.npz", "plot.png", "snapshots.png"]), left
    assert all(hits.values()), f"a moment was never caught: {hits}"


def test_a_finished_checkpoint_resumes_to_the_same_result(tmp_path):
    """The API: keep_checkpoint leaves the finished run's checkpoint; resuming it steps no more."""
    p = tf.Dataset(np.random.default_rng(0).standard_normal((300, 2)), np.arange(300) % 2, [[1.0, 1.0], [-1, 0.5]])
    params = tf.Params.from_layers(np.eye(2)[None] * 1.1, np.array([[0.2, -0.1]]))
    ck = tmp_path / "ck.npz"
    first = tf.simulate(params, p, 0.5, checkpoint=ck, checkpoint_every=0, keep_checkpoint=True)
    assert first.status == "t_end" and ck.is_file()
    again = tf.simulate(params, p, 0.5, checkpoint=ck, resume=True, keep_checkpoint=True)
    _same_result(again, first)
    assert again.evaluations[-1] == first.evaluations[-1]
    tf.simulate(params, p, 0.5, checkpoint=ck, resume=True)      # without keep_checkpoint: removed
    assert not ck.exists()
