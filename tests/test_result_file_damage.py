"""load_result refuses record times that are not finite, decreasing or past the run's
t_end, costs that are not finite and formats it does not know (issue 22: such a file
loaded, and ``truncflow plot`` then failed with "cannot convert float NaN")."""
from __future__ import annotations

import json

import numpy as np
import pytest

import truncflow as tf
from conftest import make_problem
from truncflow.cli import main

T_END = 0.25


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{method: entries of a saved result file}: rk45 to t_end, gd with t_end not a multiple
    of lr (its last record is at the time of its last step, 3 steps of 0.1 = 0.3 > t_end)."""
    folder = tmp_path_factory.mktemp("results")
    prob = make_problem(3, L=2, M=2, N=60, Q=2)
    params, ds = prob.params, prob.dataset("input")
    out = {}
    for method, kw in (("rk45", {}), ("gd", dict(lr=0.1))):
        r = tf.simulate(params, ds, T_END, method=method, n_records=6, **kw)
        assert r.status == "t_end"
        with np.load(r.save(folder / method), allow_pickle=False) as z:
            out[method] = {k: z[k] for k in z.files}
    assert out["gd"]["t"][-1] == pytest.approx(0.3)
    return out


def _meta(entries):
    return json.loads(str(entries["__meta__"]))


def _write(tmp_path, entries, **changes):
    entries = dict(entries)
    for key, value in changes.items():
        if key == "meta":
            entries["__meta__"] = np.array(json.dumps(value))
        elif value is None:
            entries.pop(key)
        else:
            entries[key] = value
    path = tmp_path / "damaged.npz"
    np.savez(path, **entries)
    return path


def _times(entries, fn):
    t = np.array(entries["t"], dtype=np.float64)
    return fn(t)


def _set_last(value):
    def fn(t):
        t[-1] = value
        return t
    return fn


def _meta_with(**items):
    return lambda e: dict(_meta(e), **items)


def _meta_without(key):
    return lambda e: {k: v for k, v in _meta(e).items() if k != key}


DAMAGE = {
    "t_all_nan": ("rk45", "t", lambda e: np.full_like(e["t"], np.nan), r"array 't' contains \d+ non-finite"),
    "t_one_nan": ("gd", "t", lambda e: _times(e, _set_last(np.nan)), r"array 't' contains 1 non-finite"),
    "t_inf": ("rk45", "t", lambda e: _times(e, _set_last(np.inf)), r"array 't' contains 1 non-finite"),
    "t_decreasing": ("rk45", "t", lambda e: e["t"][::-1].copy(), r"array 't' is not in increasing order"),
    "t_negative": ("gd", "t", lambda e: e["t"] - 1.0, r"array 't' holds a negative record time"),
    "t_complex": ("rk45", "t", lambda e: e["t"].astype(np.complex128), r"array 't' is complex"),
    "t_past_t_end": ("rk45", "t", lambda e: _times(e, _set_last(10 * T_END)), r"past the run's t_end = 0.25"),
    "t_just_past_t_end": ("rk45", "t", lambda e: _times(e, _set_last(T_END * (1 + 1e-6))), r"past the run's t_end"),
    "t_past_the_last_gd_step": ("gd", "t", lambda e: _times(e, _set_last(0.5)), r"past the run's t_end"),
    "cost_nan": ("gd", "cost", lambda e: np.full_like(e["cost"], np.nan), r"array 'cost' contains \d+ non-finite"),
    "format_99": ("rk45", "meta", _meta_with(format=99), r"has format 99; this truncflow reads result files of "
                                                        r"format 1"),
    "format_a_string": ("gd", "meta", _meta_with(format="1"), r"has format '1'"),
    "format_true": ("gd", "meta", _meta_with(format=True), r"has format True"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_result_file_is_refused(saved, tmp_path, name):
    method, key, make, pattern = DAMAGE[name]
    entries = saved[method]
    path = _write(tmp_path, entries, **{key: make(entries)})
    with pytest.raises(ValueError, match=rf"{path}.*{pattern}") as info:
        tf.load_result(path)
    assert "\n" not in str(info.value)


ACCEPTED = {
    "unmodified_rk45": ("rk45", {}),
    "unmodified_gd_last_step_past_t_end": ("gd", {}),
    "no_format_entry_is_format_1": ("rk45", {"meta": _meta_without("format")}),
    "within_the_slack_of_t_end": ("rk45", {"t": lambda e: _times(e, _set_last(T_END * (1 + 1e-12)))}),
    "no_t_end_in_the_config": ("rk45", {"meta": lambda e: dict(_meta(e), config={}),
                                        "t": lambda e: _times(e, _set_last(10 * T_END))}),
    "repeated_time": ("gd", {"t": lambda e: _times(e, lambda t: np.append(t[:-1], t[-2]))}),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_consistent_result_file_loads(saved, tmp_path, name):
    method, changes = ACCEPTED[name]
    entries = saved[method]
    path = _write(tmp_path, entries, **{k: make(entries) for k, make in changes.items()})
    result = tf.load_result(path)
    assert result.n_records == len(entries["t"]) and result.summary().startswith("status: t_end")


def test_result_files_are_written_in_format_1(saved):
    assert all(_meta(entries)["format"] == 1 for entries in saved.values())


@pytest.mark.parametrize("name", ["t_all_nan", "format_99", "t_past_t_end"])
def test_plot_of_a_damaged_result_file_is_one_line_exit_2(saved, tmp_path, capsys, name):
    method, key, make, pattern = DAMAGE[name]
    entries = saved[method]
    path = _write(tmp_path, entries, **{key: make(entries)})
    code = main(["plot", str(path), "--out", str(tmp_path / "plots")])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("truncflow: error: "), err
    assert "Traceback" not in err and str(path) in lines[0]
    assert not (tmp_path / "plots").exists()
