"""The compiled RK45 steps (engine/stepper.py, kernels/dopri.py) against SciPy's RK45 (issue 12).

On a problem of one chunk ``simulate(method="rk45")`` runs SciPy's rules as one compiled
call per step. The same run with SciPy's stepper (forced here) must take the same
steps (accepted, rejected, evaluations) and reach the same state up to round-off:
only the order of a few sums differs. (Where rk45 grinds through kinks with thousands
of steps, the round-off difference can change a late step-size decision: the problems
here are smooth over the horizon.)
"""
import numpy as np
import pytest

import truncflow as tf
from truncflow.engine import integrate
from truncflow.engine.rhs import FlowProblem
from truncflow.engine.stepper import CompiledRK45

from conftest import make_problem


def scipy_stepper(monkeypatch):
    original = FlowProblem._prepare_fast_path

    def one_chunk_but_scipy(self):
        original(self)
        self.serial = False               # evaluations through prepare/pass/finish, SciPy's RK45 steps
    monkeypatch.setattr(FlowProblem, "_prepare_fast_path", one_chunk_but_scipy)


@pytest.mark.parametrize("kind,wrt,extra", [("input", "layers", {}),
                                            ("output", "cumulative", {"first_step": 1e-3, "max_step": 0.02})])
def test_compiled_steps_are_scipys_rk45(kind, wrt, extra, monkeypatch):
    pr = make_problem(8, L=2, M=3, N=200, Q=2, P=2, scale=0.2)
    options = {**dict(kind=kind, wrt=wrt, rtol=1e-6, atol=1e-9, n_records=15), **extra}
    compiled = tf.simulate(pr.params, pr.dataset(kind), 1.0, **options)
    scipy_stepper(monkeypatch)
    reference = tf.simulate(pr.params, pr.dataset(kind), 1.0, **options)
    assert compiled.status == reference.status == "t_end"
    for k in ("steps_accepted", "steps_rejected", "evaluations"):
        assert np.array_equal(compiled.series[k], reference.series[k]), k
    assert np.array_equal(compiled.t, reference.t)
    for k in ("cum_weights", "cum_biases", "cost"):
        np.testing.assert_allclose(compiled.series[k], reference.series[k], rtol=1e-9, atol=1e-10)   # round-off


def test_a_flow_into_a_singular_state_diverges_with_the_reason():
    # the cumulative weight W^(1) driven towards 0: the evaluator reports the singular matrix
    x = np.array([[1.0, 0.5], [0.5, 1.0], [1.5, 1.2], [0.8, 1.4]])
    ds = tf.Dataset(x, np.zeros(4, dtype=int), np.zeros((1, 2)))
    p = tf.Params.from_cumulative(np.eye(2)[None] * 0.5, np.full((1, 2), 2.0))
    problem = FlowProblem(p, ds, wrt="cumulative")
    assert problem.serial
    r = tf.simulate(p, ds, 1e4, wrt="cumulative", train="weights")
    assert r.status in ("diverged", "t_end"), r.message
    if r.status == "diverged":
        assert "singular" in r.message or "cannot evaluate" in r.message


def test_the_stepper_refuses_to_step_when_finished():
    pr = make_problem(1, L=1, M=2, N=10)
    problem = FlowProblem(pr.params, pr.dataset())
    fun = integrate._Evaluator(problem)
    s = CompiledRK45(fun, 0.0, problem.pack(pr.params), 0.01, rtol=1e-6, atol=1e-9)
    while s.status == "running":
        s.step()
    assert s.status == "finished" and s.t == 0.01
    with pytest.raises(RuntimeError):
        s.step()
