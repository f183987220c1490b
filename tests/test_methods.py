"""The method registry and the statuses (issue 23 item 2): what each method declares is
what simulate, simulate_ensemble and the configuration do, and refusals are worded from
the registry."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import truncflow as tf
from problems import one_layer_problem
from truncflow.config import ConfigError, parse_config
from truncflow.engine import ensemble as ensemble_module
from truncflow.engine.ensemble import _simulate_defaults
from truncflow.engine.integrate import (ADAPTIVE_METHODS, CHECKPOINT_METHODS, DISTRIBUTED_METHODS, METHODS,
                                        MIN_RTOL, _plan)
from truncflow.engine.methods import (ADAPTIVE_OPTIONS, DEVICE, DISTRIBUTED, HERE, METHOD_NAMES, METHOD_OPTIONS,
                                      REGISTRY, SUCCESS_STATUSES, Status, checkpoint_refusal, cluster_refusal,
                                      float32_refusal, gpu_refusal, methods_taking, placement_refusal,
                                      precision_refusal, spec, supporting)
from truncflow.engine.record import STATUS_MESSAGES, SUCCESS

ALL = list(REGISTRY.values())


def method_options(m):
    """Options under which each method plans on the aligned one-layer problem."""
    extra = {"gd": dict(lr=0.01), "sgd": dict(lr=0.01, batch_size=10), "events": dict(wrt="aligned")}
    return dict(method=m.name, **extra.get(m.name, {}))


def plan(m, **options):
    params, ds = one_layer_problem()
    return _plan(params, ds, 1.0, **_simulate_defaults({**method_options(m), **options}))


def test_registry_entries_are_the_methods_and_the_old_names_are_derived():
    assert METHOD_NAMES == METHODS == ("rk45", "gd", "sgd", "events", "kinks")
    assert CHECKPOINT_METHODS == tuple(m.name for m in ALL if m.checkpoints) == ("rk45", "gd", "sgd", "kinks")
    assert DISTRIBUTED_METHODS == tuple(m.name for m in ALL if m.runs_on(DISTRIBUTED)) == ("rk45", "gd", "sgd", "kinks")
    assert ADAPTIVE_METHODS == tuple(m.name for m in ALL if m.adaptive) == ("rk45", "kinks")
    assert supporting(HERE) == METHOD_NAMES
    assert supporting(DEVICE) == supporting(DISTRIBUTED) == ("rk45", "gd", "sgd", "kinks")
    for m in ALL:
        assert spec(m.name) is m and m.description and "\n" not in m.description
        assert dataclasses.is_dataclass(m)
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.adaptive = not m.adaptive
    with pytest.raises(ValueError, match="unknown method 'rk4'.*'rk45', 'gd', 'sgd', 'events', 'kinks'"):
        spec("rk4")


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.name)
def test_checkpoints_as_declared(m, tmp_path):
    path = tmp_path / "run.ckpt"
    if m.checkpoints:
        assert plan(m, checkpoint=path).checkpoint == path
    else:
        with pytest.raises(ValueError) as info:
            tf.simulate(*one_layer_problem(), 1.0, checkpoint=path, **method_options(m))
        assert str(info.value) == checkpoint_refusal(m.name)
        assert "applies to method 'rk45' or 'gd'" in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.name)
def test_float32_as_declared(m):
    if m.float32:
        assert plan(m, precision="float32").flow_options["precision"] == "float32"
    else:
        with pytest.raises(ValueError) as info:
            tf.simulate(*one_layer_problem(), 1.0, precision="float32", **method_options(m))
        assert str(info.value) == precision_refusal(m.name, "float32")
        assert str(info.value).startswith("precision='float32' applies to method 'rk45' or 'gd' or 'sgd'; ")


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.name)
def test_adaptive_as_declared(m):
    """An adaptive method honours rtol (a too small one is raised to MIN_RTOL, with a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = plan(m, rtol=1e-20)
    clamped = any("smallest relative tolerance" in str(w.message) for w in caught)
    assert clamped == m.adaptive
    assert p.opts["rtol"] == (MIN_RTOL if m.adaptive else 1e-20)
    assert m.adaptive == set(ADAPTIVE_OPTIONS).issubset(m.options)


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.name)
def test_ensembles_as_declared(m, monkeypatch):
    """compiled: members step together in compiled code; shared plan: the first member's checked
    options serve the others; one by one: each member is planned as simulate would."""
    liked, together, simulated = [], [], []
    real_like = ensemble_module._plan_like
    monkeypatch.setattr(ensemble_module, "_plan_like", lambda *a: liked.append(1) or real_like(*a))
    monkeypatch.setattr(ensemble_module, "_descend_together", lambda plans: together.append(1) or ["together"])
    monkeypatch.setattr(ensemble_module, "simulate", lambda *a, **k: simulated.append(1) or "alone")
    params, ds = one_layer_problem()
    out = tf.simulate_ensemble([params, params], ds, 1.0, workers=1, **method_options(m))
    assert bool(together) == (m.ensembles == "compiled")
    assert bool(liked) == (m.ensembles in ("compiled", "shared plan"))
    assert out == (["together"] if m.ensembles == "compiled" else ["alone", "alone"])


def config_text(method, flow="", run="", cluster=""):
    flow_lines = {"gd": "lr = 0.01\n", "sgd": "lr = 0.01\nbatch_size = 10\n",
                  "events": 'wrt = "aligned"\n'}.get(method, "") + flow
    text = f"""
[data]
source = "gaussian"
n_points = 30
centers = [[0.0, 0.0], [3.0, 3.0]]
targets = "centers"
seed = 0
[network]
layers = 1
init = "{'aligned' if method == 'events' else 'identity'}"
{'thresholds = [[-5.0, -5.0]]' if method == 'events' else ''}
[flow]
method = "{method}"
t_end = 1.0
{flow_lines}
"""
    if run:
        text += f"[run]\n{run}\n"
    if cluster:
        text += f"[cluster]\n{cluster}\n"
    return text


@pytest.mark.parametrize("m", ALL, ids=lambda m: m.name)
def test_configuration_asks_the_registry(m):
    cfg = parse_config(config_text(m.name))
    assert cfg.simulate_kwargs["method"] == m.name
    assert ("rtol" in cfg.simulate_kwargs) == m.adaptive
    for option in METHOD_OPTIONS:
        if option in m.options:
            continue
        value = "true" if option == "record_truncation_times" else ("10" if option == "max_evals" else "0.1")
        with pytest.raises(ConfigError) as info:
            parse_config(config_text(m.name, flow=f"{option} = {value}\n"))
        allowed = " or ".join(map(repr, methods_taking(option)))
        assert str(info.value).endswith(f"[flow] {option}: applies only to method = {allowed}, not {m.name!r}")
    checks = [('precision = "float32"', m.float32, '[run] precision: "float32" ' + float32_refusal(m.name, '"')),
              ('device = "cuda"', m.runs_on(DEVICE), "[run] device: " + gpu_refusal(m.name, '"'))]
    for run, supported, message in checks:
        if supported:
            parse_config(config_text(m.name, run=run))
        else:
            with pytest.raises(ConfigError) as info:
                parse_config(config_text(m.name, run=run))
            assert str(info.value).endswith(message), str(info.value)
            assert '"rk45" or "gd"' in message
    if m.runs_on(DISTRIBUTED):
        assert parse_config(config_text(m.name, cluster="local = 2")).cluster == {"local": 2, "threads_per_worker": 1}
    else:
        with pytest.raises(ConfigError) as info:
            parse_config(config_text(m.name, cluster="local = 2"))
        assert str(info.value).endswith("[cluster] " + cluster_refusal(m.name, '"'))


@pytest.mark.dask
def test_placements_as_declared():
    distributed = pytest.importorskip("distributed")
    params, ds = one_layer_problem()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        dist = tf.distribute(ds.points, ds.labels, ds.targets, client)
        for m in ALL:
            if m.runs_on(DISTRIBUTED):
                continue
            with pytest.raises(ValueError) as info:
                tf.simulate(params, dist, 1.0, **method_options(m))
            assert str(info.value) == placement_refusal(m.name, DISTRIBUTED)
            assert "needs the points here" in str(info.value)


def test_status_values_are_todays_strings():
    assert [s.value for s in Status] == ["t_end", "cost_tol", "grad_tol", "max_evals", "max_time", "diverged",
                                         "failed", "interrupted"]
    assert SUCCESS == SUCCESS_STATUSES == ("t_end", "cost_tol", "grad_tol")
    assert STATUS_MESSAGES == {s.value: s.message for s in Status}
    assert Status.T_END == "t_end" and f"{Status.MAX_TIME}" == str(Status.MAX_TIME) == "max_time"
    assert {"t_end": 1}[Status.T_END] == 1
    assert [s for s in Status if s.ended_early] == [Status.MAX_EVALS, Status.MAX_TIME, Status.INTERRUPTED]


def test_status_round_trips_through_a_saved_result(tmp_path):
    params, ds = one_layer_problem()
    r = tf.simulate(params, ds, 0.5, method="gd", lr=0.1, n_records=3)
    assert type(r.status) is str and r.status == "t_end" and r.success
    assert r.message == Status.T_END.message
    for s in Status:
        saved = dataclasses.replace(r, status=s.value, message=s.message + ": detail")
        back = tf.load_result(saved.save(tmp_path / f"{s.value}.npz"))
        assert type(back.status) is str and back.status == s.value
        assert Status(back.status) is s and back.success == s.success
        assert back.message == f"{s.message}: detail"
        assert np.array_equal(back.t, r.t)
