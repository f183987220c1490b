"""Checkpoints of method="kinks" (issue 24 item 3): a run stopped anywhere and resumed gives the
records, counts and sliding intervals of the run never stopped, bit for bit (through crossings
located one by one, sliding modes and bulk-corrected steps); a damaged checkpoint is refused with
one sentence naming its entry; a run killed with SIGKILL and resumed from the command line ends
with the uninterrupted run's result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf
from truncflow.cli import main
from truncflow.engine.kinks import KinkOptions

from jobs import cones_job


def small(seed, N=24, M=2, L=2):
    """A random two-layer network on a few points: crossings and a sliding mode within t = 3."""
    rng = np.random.default_rng(seed)
    p = tf.Params.random(L, M, scale=0.5, bias_scale=0.5, seed=seed)
    return p, tf.Dataset(rng.standard_normal((N, M)), np.arange(N) % 2, rng.standard_normal((2, M)))


def clusters(N, seed=0):
    """Three clusters in R^4: hundreds of crossings, corrected in bulk, some steps redone."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 4)) * 1.5
    x, lab = tf.gaussian_clusters(N, centers, std=0.6, seed=seed)
    return tf.Params.random(2, 4, scale=0.3, bias_scale=0.5, seed=seed), tf.Dataset(x, lab, centers + 1.0)


CASES = {
    "sliding": (small(1), 3.0, dict(wrt="layers", rtol=1e-8, atol=1e-10)),
    "bulk": (clusters(800), 0.4, dict(wrt="cumulative", rtol=1e-6, atol=1e-8)),
}


def same_run(a, b):
    assert a.status == b.status and a.message == b.message
    assert a.series.keys() == b.series.keys()
    for name in a.series:
        assert np.array_equal(a.series[name], b.series[name]), name
    assert a.config["kinks"] == b.config["kinks"]
    assert np.array_equal(a.arrays["sliding_intervals"], b.arrays["sliding_intervals"])


@pytest.mark.parametrize("case", ["sliding", pytest.param("bulk", marks=pytest.mark.long)])   # bulk: N = 800, 6 s
def test_stopped_anywhere_and_resumed_equals_the_run_never_stopped(tmp_path, case):
    (params, ds), t_end, kw = CASES[case]
    kw = dict(method="kinks", n_records=15, **kw)
    whole = tf.simulate(params, ds, t_end, **kw)
    k = whole.config["kinks"]
    assert whole.status == "t_end"
    if case == "sliding":
        assert k["sliding_entries"] >= 1 and k["events_located"] >= 1
    else:
        assert k["bulk_steps"] >= 10 and k["redone_steps"] >= 1
    E = int(whole.evaluations[-1])
    for n, stop in enumerate(sorted({7, E // 5, E // 2, (4 * E) // 5})):
        ck = tmp_path / f"run{n}.ckpt"
        first = tf.simulate(params, ds, t_end, checkpoint=ck, checkpoint_every=0, max_evals=stop, **kw)
        assert first.status == "max_evals" and ck.is_file()
        done = tf.simulate(params, ds, t_end, checkpoint=ck, resume=True, **kw)
        same_run(done, whole)
        assert not ck.exists()


def test_a_finished_kinks_checkpoint_resumes_without_stepping(tmp_path):
    (params, ds), t_end, kw = CASES["sliding"]
    ck = tmp_path / "ck.npz"
    first = tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, keep_checkpoint=True, **kw)
    again = tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, resume=True, keep_checkpoint=True, **kw)
    same_run(again, first)
    assert again.evaluations[-1] == first.evaluations[-1] and ck.is_file()
    third = tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, resume=True, **kw)   # kept, resumed again
    same_run(third, first)
    assert not ck.exists()


def test_kinks_checkpoint_of_other_options_is_refused(tmp_path):
    (params, ds), t_end, kw = CASES["sliding"]
    ck = tmp_path / "ck.npz"
    tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, max_evals=20, **kw)
    with pytest.raises(ValueError, match="options differ.*kink_options"):
        tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, resume=True,
                    kink_options=KinkOptions(bulk=False), **kw)
    with pytest.raises(ValueError, match="method='kinks' run, not 'rk45'"):
        tf.simulate(params, ds, t_end, method="rk45", checkpoint=ck, resume=True, **kw)


def _rewrite(ck, state=None, **arrays):
    """The checkpoint ``ck`` with its state's entries and arrays replaced."""
    with np.load(ck, allow_pickle=False) as z:
        content = {k: z[k] for k in z.files}
    meta = json.loads(str(content["__checkpoint__"]))
    meta["state"].update(state or {})
    content["__checkpoint__"] = np.array(json.dumps(meta))
    content.update(arrays)
    np.savez(ck, **content)


DAMAGE = [
    (dict(stepper="RK23"), {}, "'stepper'"),
    (dict(max_step=-1.0), {}, "'max_step'"),
    (dict(last_t=float("nan")), {}, "'last_t'"),
    (dict(last_t=99.0), {}, "'last_t'"),
    (dict(control={"h_cap": 0.0, "redos": 0, "stuck": 0, "located_left": 0}), {}, "'control.h_cap'"),
    (dict(control={"h_cap": None, "redos": -1, "stuck": 0, "located_left": 0}), {}, "'control.redos'"),
    (dict(control={"h_cap": None, "redos": 0, "stuck": 0}), {}, "'control'"),
    (dict(control=[1, 2]), {}, "'control'"),
    (dict(stats={"stepper": "RK45", "bulk_steps": -2}), {}, "'stats.bulk_steps'"),
    (dict(stats={"bulk_steps": 2}), {}, "'stats'"),
    (dict(sliding=[[24, 0, 0]]), {}, "'sliding'"),
    (dict(sliding=[[0, 0, 1], [0, 0, 1]]), {}, "'sliding'"),
    (dict(sliding=[[0, 2, 0]]), {}, "'sliding'"),
    (dict(sliding="all"), {}, "'sliding'"),
    ({}, dict(patterns=np.zeros((24, 2, 1), np.int64)), "'patterns'"),
    ({}, dict(patterns=np.zeros((23, 2, 1), np.uint64)), "'patterns'"),
    ({}, dict(intervals=np.array([[0, 0, 0, -1.0, np.nan]])), "'intervals'"),
    ({}, dict(intervals=np.array([[0, 5, 0, 0.0, np.nan]])), "'intervals'"),
    ({}, dict(intervals=np.zeros((2, 4))), "'intervals'"),
    ({}, dict(last_y=np.zeros(3)), "'last_y'"),
]


@pytest.mark.parametrize("state,arrays,entry", DAMAGE, ids=[d[2] + str(i) for i, d in enumerate(DAMAGE)])
def test_a_damaged_kinks_checkpoint_is_refused_naming_the_entry(tmp_path, state, arrays, entry):
    (params, ds), t_end, kw = CASES["sliding"]
    ck = tmp_path / "ck.npz"
    tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, max_evals=60, **kw)
    assert zipfile.is_zipfile(ck)
    _rewrite(ck, state, **arrays)
    with pytest.raises(ValueError, match=f"is damaged: .*{entry}"):
        tf.simulate(params, ds, t_end, method="kinks", checkpoint=ck, resume=True, **kw)


# ------------------------------------------------------------ a real SIGKILL
JOB = cones_job(1500, 'method = "kinks"\nt_end = 3.0\nrtol = 1e-7\natol = 1e-10', 30, "kinks-kill")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tf.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.long
def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    t0 = time.monotonic()
    assert main(["run", str(job), "--out", str(tmp_path / "whole"), "--quiet"]) == 0      # also compiles
    run_seconds = time.monotonic() - t0
    whole = tf.load_result(tmp_path / "whole" / "result.npz")
    assert whole.config["kinks"]["bulk_steps"] + whole.config["kinks"]["events_located"] >= 5
    rng = np.random.default_rng(0)
    killed = 0
    for trial in range(4):
        folder = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "truncflow", "run", str(job), "--out", str(folder),
                                 "--quiet", "--checkpoint-every", "0"], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 120
        while proc.poll() is None and not (folder / "checkpoint.npz").exists() and time.monotonic() < end:
            time.sleep(0.01)            # the first checkpoint: the flow has started
        time.sleep(rng.uniform(0.0, max(run_seconds, 0.5)))
        if proc.poll() is not None:     # it finished first
            assert proc.returncode == 0, proc.stderr.read()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed += 1
        resume = subprocess.run([sys.executable, "-m", "truncflow", "run", "--resume", str(folder), "--quiet"],
                                env=_env(), capture_output=True, text=True, timeout=600)
        assert resume.returncode == 0, resume.stderr
        same_run(tf.load_result(folder / "result.npz"), whole)
    assert killed >= 2
