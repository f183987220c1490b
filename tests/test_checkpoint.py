"""Checkpoints of simulate (rk45 and gd): a run stopped and resumed gives the records of
a run never stopped, bit for bit; a checkpoint of another run is refused.

(Real kills of real processes: tests/test_interrupt.py.)
"""
from __future__ import annotations

import numpy as np
import pytest

import truncflow as tf
from conftest import make_problem

OPTIONS = {"rk45": dict(rtol=1e-7, atol=1e-10), "gd": dict(lr=0.01)}


def problem(kind):
    prob = make_problem(11, L=2, M=3, N=400, Q=2, P=2 if kind == "output" else None)
    return prob.params, prob.dataset(kind)


def assert_same_records(a, b):
    assert a.status == b.status
    assert a.series.keys() == b.series.keys()
    for name in a.series:
        assert np.array_equal(a.series[name], b.series[name]), name


@pytest.mark.parametrize("method", ["rk45", "gd"])
@pytest.mark.parametrize("kind,wrt", [("input", "cumulative"), ("output", "layers")])
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, method, kind, wrt):
    params, ds = problem(kind)
    kw = dict(kind=kind, wrt=wrt, method=method, n_records=25, **OPTIONS[method])
    whole = tf.simulate(params, ds, 2.0, **kw)
    assert whole.status == "t_end"
    ck = tmp_path / "run.ckpt"
    stops = [whole.evaluations[-1] // 4, whole.evaluations[-1] // 2]
    first = tf.simulate(params, ds, 2.0, checkpoint=ck, checkpoint_every=3600, max_evals=stops[0], **kw)
    assert first.status == "max_evals" and ck.is_file()
    # resumed twice (a longer budget, then none), each from the checkpoint the last stop wrote
    second = tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, max_evals=stops[1], **kw)
    assert second.status == "max_evals" and second.t[-1] > first.t[-1]
    done = tf.simulate(params, ds, 2.0, checkpoint=ck, resume=True, **kw)
    assert_same_records(done, whole)
    assert not ck.exists()          # a finished run removes its checkpoint


def test_checkpoint_of_another_run_is_refused(tmp_path):
    params, ds = problem("input")
    ck = tmp_path / "run.ckpt"
    tf.simulate(params, ds, 1.0, method="gd", lr=0.01, checkpoint=ck, max_evals=5)
    other = tf.Dataset(ds.points + 1e-9, ds.labels, ds.targets)
    with pytest.raises(ValueError, match="does not belong to this run: the data"):
        tf.simulate(params, other, 1.0, method="gd", lr=0.01, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="options differ.*lr"):
        tf.simulate(params, ds, 1.0, method="gd", lr=0.02, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="record times"):
        tf.simulate(params, ds, 1.0, method="gd", lr=0.01, n_records=7, checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="method='gd' run, not 'rk45'"):
        tf.simulate(params, ds, 1.0, method="rk45", checkpoint=ck, resume=True)
    with pytest.raises(ValueError, match="initial parameters"):
        tf.simulate(tf.Params.random(2, 3, seed=1), ds, 1.0, method="gd", lr=0.01, checkpoint=ck, resume=True)


def test_checkpoint_options_are_checked(tmp_path):
    params, ds = problem("input")
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        tf.simulate(params, ds, 1.0, resume=True)
    with pytest.raises(ValueError, match="checkpoint not found"):
        tf.simulate(params, ds, 1.0, checkpoint=tmp_path / "none.ckpt", resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        tf.simulate(params, ds, 1.0, checkpoint=tmp_path / "c", checkpoint_every=-1)
    (tmp_path / "junk").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a truncflow checkpoint"):
        tf.simulate(params, ds, 1.0, checkpoint=tmp_path / "junk", resume=True)


def test_interrupted_run_keeps_its_last_state_and_checkpoint(tmp_path):
    """A signal (here: raised by the callback's os.kill) stops the run between steps."""
    import os
    import signal

    params, ds = problem("input")
    seen = []

    def callback(t, cost):
        seen.append(t)
        if len(seen) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    ck = tmp_path / "run.ckpt"
    r = tf.simulate(params, ds, 1.0, method="gd", lr=0.01, callback=callback, checkpoint=ck, checkpoint_every=3600)
    assert r.status == "interrupted" and "SIGTERM" in r.message
    assert r.t[-1] == seen[-1] and r.steps_accepted[-1] == 7
    assert r.cost[-1] == pytest.approx(tf.cost(r.final, ds), rel=1e-13)
    done = tf.simulate(params, ds, 1.0, method="gd", lr=0.01, checkpoint=ck, resume=True)
    assert_same_records(done, tf.simulate(params, ds, 1.0, method="gd", lr=0.01))


def test_signal_before_the_run_stops_it_after_its_first_record():
    """A command line guards its whole job: a signal noted before simulate starts stops it
    at once, with the initial record kept (and no exception)."""
    import os
    import signal

    from truncflow.engine.control import SignalGuard

    params, ds = problem("input")
    before = signal.getsignal(signal.SIGINT)     # Python's default, or SIG_IGN under a background job
    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        r = tf.simulate(params, ds, 1.0)
    assert guard.received == "SIGINT"
    assert r.status == "interrupted" and r.n_records >= 1 and r.t[0] == 0.0
    assert signal.getsignal(signal.SIGINT) is before                          # handlers restored


def test_signal_during_the_exact_solver_keeps_the_records_made():
    import os
    import signal

    from problems import one_layer_problem

    params, ds = one_layer_problem()
    seen = []

    def callback(t, cost):
        seen.append(t)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    r = tf.simulate(params, ds, 5.0, wrt="aligned", method="events", train="biases", callback=callback)
    assert r.status == "interrupted" and "SIGTERM" in r.message
    assert r.n_records == 3 and np.array_equal(r.t, seen)
    with pytest.raises(ValueError, match="checkpoint applies to method 'rk45' or 'gd'"):
        tf.simulate(params, ds, 5.0, wrt="aligned", method="events", train="biases", checkpoint="x.ckpt")


def test_runs_in_worker_threads_do_not_share_signal_state():
    """Two flows in threads (no handlers there: signals reach the main thread only) finish
    independently and leave the main thread's handlers untouched."""
    import signal
    import threading

    params, ds = problem("input")
    results = {}
    before = signal.getsignal(signal.SIGINT)

    def run(name):
        results[name] = tf.simulate(params, ds, 0.5, method="gd", lr=0.01)

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"].status == results["b"].status == "t_end"
    assert np.array_equal(results["a"].cost, results["b"].cost)
    assert signal.getsignal(signal.SIGINT) is before
