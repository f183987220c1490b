"""Sweeps from the command line: [sweep] in a run configuration (issue 12, item 3)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

import truncflow as tf
from truncflow.config import parse_config

from test_cli import assert_user_error, replace, run_cli, write

BASE = """
[data]
source = "gaussian"
n_points = 40
centers = [[-2.0, -2.0], [2.0, 2.0]]
std = 0.5
seed = 0
targets = [[-1.0, -1.0], [1.5, 1.5]]

[network]
init = "random"
layers = 2
scale = 0.3
bias_scale = 0.5

[flow]
wrt = "layers"
method = "gd"
lr = 0.02
t_end = 2.0

[record]
n_records = 6
t_first = 0.1

[output]
folder = "out"
"""


def member_text(base, **values):
    """The configuration of one member, written by hand (the independent reference): each
    "section.key" set in its section, replacing the line that sets it there if any."""
    lines = base.splitlines()
    for key, value in values.items():
        section, name = key.split(".")
        start = lines.index(f"[{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        found = [i for i in range(start + 1, end) if lines[i].startswith(f"{name} = ")]
        if found:
            lines[found[0]] = f"{name} = {value}"
        else:
            lines.insert(start + 1, f"{name} = {value}")
    return "\n".join(lines) + "\n"


@pytest.mark.long  # end-to-end sweep against single runs: compiles the ensemble kernels
def test_a_sweep_writes_one_result_per_member_equal_to_its_single_run(tmp_path, capsys):
    text = BASE + '\n[sweep]\n"network.seed" = [3, 4, 5]\n"flow.lr" = { start = 0.01, stop = 0.02, num = 2 }\n'
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o", "-q")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "o" / "summary.csv")))
    assert len(rows) == 6 and (tmp_path / "o" / "summary.png").is_file()
    assert [(r["network.seed"], r["flow.lr"]) for r in rows] == [
        (s, lr) for s in ("3", "4", "5") for lr in ("0.01", "0.02")]
    for i, row in enumerate(rows):
        got = tf.load_result(tmp_path / "o" / "members" / str(i) / "result.npz")
        cfg = parse_config(member_text(BASE, **{"network.seed": row["network.seed"], "flow.lr": row["flow.lr"]}))
        want = tf.simulate(cfg.params, cfg.dataset, **cfg.simulate_kwargs)
        assert got.status == want.status == row["status"] == "t_end"
        for k in want.series:
            assert np.array_equal(got.series[k], want.series[k]), (i, k)
        assert float(row["cost"]) == want.series["cost"][-1]
        assert got.config["sweep_values"] == {"network.seed": int(row["network.seed"]),
                                              "flow.lr": float(row["flow.lr"])}


def test_a_kinks_sweep_gives_each_member_its_single_run(tmp_path, capsys):
    base = BASE.replace('method = "gd"\nlr = 0.02\nt_end = 2.0', 'method = "kinks"\nrtol = 1e-6\natol = 1e-8\nt_end = 1.0')
    assert 'method = "kinks"' in base
    text = base + '\n[sweep]\n"network.seed" = [3, 4]\n'
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o", "-q")
    assert code == 0, err
    for i, seed in enumerate((3, 4)):
        got = tf.load_result(tmp_path / "o" / "members" / str(i) / "result.npz")
        cfg = parse_config(member_text(base, **{"network.seed": seed}))
        want = tf.simulate(cfg.params, cfg.dataset, **cfg.simulate_kwargs)
        assert got.status == want.status == "t_end"
        for k in want.series:
            assert np.array_equal(got.series[k], want.series[k]), (i, k)
        assert got.config["kinks"] == want.config["kinks"]


def test_collapse_times_and_truncated_fractions_in_the_summary(tmp_path, capsys):
    # one layer, biases only, a cone at cluster 0 (two_clusters_collapse.toml, small): cluster 0 collapses
    text = """seed = 0
[data]
source = "gaussian"
n_points = 200
centers = [[0.0, 0.0], [6.0, 6.0]]
std = 0.5
targets = [[2.5, 2.5], [6.0, 6.0]]

[network]
init = "cones"
apexes = [[0.0, 0.0]]

[flow]
method = "rk45"
train = "biases"
t_end = 30.0

[record]
n_records = 40
t_first = 0.01

[sweep]
seed = [1, 2]
"""
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o")
    assert code == 0, err
    assert "2 members, 2 succeeded" in out
    rows = list(csv.DictReader(open(tmp_path / "o" / "summary.csv")))
    for i, row in enumerate(rows):
        r = tf.load_result(tmp_path / "o" / "members" / str(i) / "result.npz")
        hit = np.nonzero(r.collapsed_fraction[:, -1, 0] >= 0.99)[0]
        assert hit.size and float(row["collapse_time_0"]) == r.t[hit[0]] > 0
        assert row["collapse_time_1"] == ""                  # cluster 1 stays free
        single = text.replace("seed = 0", f"seed = {row['seed']}").replace("[sweep]\nseed = [1, 2]\n", "")
        labels = parse_config(single).dataset.labels
        sizes = np.bincount(labels, minlength=2)
        assert float(row["truncated_last_layer"]) == np.dot(r.truncated_fraction[-1, -1], sizes) / sizes.sum()


@pytest.mark.parametrize("sweep,words", [
    ('"network.sede" = [1, 2]', ["network.sede", "not a configuration key"]),
    ('"output.folder" = ["a", "b"]', ["output", "cannot be swept"]),
    ('seed = []', ["seed", "empty list"]),
    ('seed = { start = 0, stop = 0 }', ["seed", "empty"]),
    ('seed = { start = 0.5, stop = 3 }', ["seed", "integers"]),
    ('seed = { start = 0, stop = 3, numb = 2 }', ["seed", "range"]),
    ('seed = 3', ["seed", "list of values"]),
    ('"network.layers" = [2, 0]', ["sweep member network.layers = 0", "layers"]),
])
def test_bad_sweeps_are_one_line_errors(tmp_path, capsys, sweep, words):
    code, out, err = run_cli(capsys, "run", write(tmp_path, BASE + "\n[sweep]\n" + sweep + "\n"),
                             "--out", tmp_path / "o")
    assert_user_error(code, err, *words)
    assert not (tmp_path / "o").exists()


@pytest.mark.long  # three end-to-end gd sweeps: compile the ensemble kernels
def test_a_sweep_is_not_resumed_and_overwrite_replaces_its_members(tmp_path, capsys):
    path = write(tmp_path, BASE + '\n[sweep]\n"network.seed" = [1, 2, 3]\n')
    assert run_cli(capsys, "run", path, "--out", tmp_path / "o", "-q")[0] == 0
    path.write_text(BASE + '\n[sweep]\n"network.seed" = [1, 2]\n')
    assert run_cli(capsys, "run", path, "--out", tmp_path / "o", "-q", "--overwrite")[0] == 0
    assert sorted(p.name for p in (tmp_path / "o" / "members").iterdir()) == ["0", "1"]
    code, out, err = run_cli(capsys, "run", "--resume", tmp_path / "o")
    assert_user_error(code, err, "sweep", "not checkpointed")
