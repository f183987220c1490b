"""The command line: `truncflow run` / `truncflow info`, run configurations, plots.

Runs use small configurations (a few thousand points) so the file stays fast once
the kernels are compiled; the built-in default job is only loaded and validated.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import truncflow
from truncflow.cli import main
from truncflow.config import ConfigError, RunConfig, default_config_text, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]

# Mirrors the built-in default (same geometry and flow) with 3,000 points.
SMALL = """
description = "small copy of the default job"
seed = 0

[data]
source = "gaussian"
n_points = 3000
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]

[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]

[flow]
kind = "input"
t_end = 60.0
rtol = 1e-5
atol = 1e-8

[record]
n_records = 30
t_first = 0.001

[output]
folder = "out"
name = "small"
"""


def write(tmp_path, text, name="job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def replace(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("truncflow: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, err)


# ------------------------------------------------------------ default job
def test_builtin_default_loads_and_shows_truncation_setup():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.dataset.n_points >= 100_000
    assert cfg.dataset.n_clusters >= 2
    assert cfg.simulate_kwargs["kind"] == "input"
    assert cfg.simulate_kwargs["method"] == "rk45"
    assert cfg.text == default_config_text()
    # Some cluster's target lies beyond all its points in every coordinate of some cone,
    # and the cone starts with a seed of truncated points in that cluster.
    p, ds = cfg.params, cfg.dataset
    found = False
    for l in range(p.n_layers):
        W, b = p.cum_weights[l], p.cum_biases[l]
        for q in range(ds.n_clusters):
            a = ds.points[ds.labels == q] @ W.T + b
            a_target = W @ ds.targets[q] + b
            if np.all(a_target >= a.max(axis=0)) and np.any(np.all(a <= 0, axis=1)):
                found = True
    assert found


def test_run_check_validates_default_without_running(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "run", "--check")
    assert code == 0, err
    assert "default" in out and "N=150000" in out and "configuration OK" in out
    assert not (tmp_path / "truncflow-out").exists()


# ----------------------------------------------------------------- runs
def test_run_small_config_writes_result_plot_and_config(capsys, tmp_path):
    cfg_path = write(tmp_path, SMALL)
    out_dir = tmp_path / "results"
    code, out, err = run_cli(capsys, "run", cfg_path, "--out", out_dir)
    assert code == 0, err
    assert "truncflow: small: input cost" in out.splitlines()[0]
    assert "status: t_end" in out and "cluster 1:" in out
    for name in ("result.npz", "plot.png", "config.toml"):
        assert (out_dir / name).is_file(), name
        assert str(out_dir / name) in out
    assert (out_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "config.toml").read_text() == SMALL
    r = truncflow.load_result(out_dir / "result.npz")
    assert r.status == "t_end" and r.success
    assert r.t[-1] == pytest.approx(60.0)
    assert r.config["name"] == "small" and r.config["seed"] == 0
    # The dynamical truncation the default job shows: cluster 1 collapses in the last layer,
    # cluster 0 in the first; their costs go to 0 while cluster 2 keeps its spread.
    assert r.collapsed_fraction[0, -1, 1] < 0.5
    assert r.collapsed_fraction[-1, -1, 1] == 1.0
    assert r.collapsed_fraction[-1, 0, 0] == 1.0
    assert r.cost_per_cluster[-1, 1] < 1e-6 < r.cost_per_cluster[-1, 2]
    assert "flow time" in err  # the progress bar


def test_run_quiet_and_output_folder_from_config(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = write(tmp_path, replace(SMALL, "t_end = 60.0", "t_end = 1.0"))
    code, out, err = run_cli(capsys, "run", cfg_path, "--quiet", "--threads", "1")
    assert code == 0, err
    assert out == "" and err == ""
    assert (tmp_path / "out" / "result.npz").is_file()


def test_gd_layer_flow_with_record_times(capsys, tmp_path):
    text = replace(SMALL, 'kind = "input"', 'kind = "input"\nwrt = "layers"\nmethod = "gd"\nlr = 0.05')
    text = replace(text, "rtol = 1e-5\natol = 1e-8\n", "")
    text = replace(text, "t_end = 60.0", "t_end = 2.0")
    text = replace(text, "n_records = 30\nt_first = 0.001", "times = [0.5, 1.0, 1.5]")
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "gd")
    assert code == 0, err
    r = truncflow.load_result(tmp_path / "gd" / "result.npz")
    assert r.config["method"] == "gd" and r.config["wrt"] == "layers"
    np.testing.assert_allclose(r.t, [0.0, 0.5, 1.0, 1.5, 2.0], rtol=1e-9)


@pytest.mark.long  # end-to-end run on float32 points: compiles their kernels
def test_output_cost_onehot_and_file_data(capsys, tmp_path):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(-2, 0.5, (1500, 2)), rng.normal(2, 0.5, (1500, 2))])
    labels = np.repeat([0, 1], 1500)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "pts.npz", X=pts, y=labels)
    text = """
[data]
source = "file"
path = "data/pts.npz"
points_key = "X"
labels_key = "y"
dtype = "float32"
targets = "onehot"
[network]
init = "random"
layers = 2
scale = 0.3
seed = 4
out_dim = 2
[flow]
kind = "output"
t_end = 2.0
rtol = 1e-4
atol = 1e-7
"""
    cfg_path = write(tmp_path, text, "sub.toml")
    cfg = load_config(cfg_path)  # the data path is relative to the config file, not the cwd
    assert cfg.dataset.points.dtype == np.float32 and cfg.params.out_dim == 2
    np.testing.assert_array_equal(cfg.dataset.targets, np.eye(2))
    code, out, err = run_cli(capsys, "run", cfg_path, "--out", tmp_path / "o")
    assert code == 0, err
    r = truncflow.load_result(tmp_path / "o" / "result.npz")
    assert r.cost[-1] < r.cost[0]


def test_means_targets_from_csv(tmp_path):
    rng = np.random.default_rng(1)
    table = np.column_stack([rng.normal(size=(200, 2)), np.arange(200) % 2])
    np.savetxt(tmp_path / "pts.csv", table, delimiter=",")
    cfg = parse_config('[data]\nsource = "file"\npath = "pts.csv"\ntargets = "means"\n'
                       '[network]\nlayers = 1\n[flow]\nt_end = 1.0\n', base_dir=tmp_path)
    np.testing.assert_allclose(cfg.dataset.targets[1], table[1::2, :2].mean(axis=0))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_validate(path):
    cfg = load_config(path)
    assert cfg.description
    assert path.read_text().lstrip().startswith("#")  # a comment header says what it shows


# ------------------------------------------------------- stops and signals
def test_run_met_cost_tol_at_start_is_success_with_one_record(capsys, tmp_path):
    text = replace(SMALL, "atol = 1e-8", "atol = 1e-8\ncost_tol = 1e6")
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o")
    assert code == 0, err
    r = truncflow.load_result(tmp_path / "o" / "result.npz")
    assert r.status == "cost_tol" and r.n_records == 1
    assert (tmp_path / "o" / "plot.png").is_file()


def test_run_that_stops_early_saves_and_exits_1(capsys, tmp_path):
    text = replace(SMALL, "atol = 1e-8", "atol = 1e-8\nmax_evals = 10")
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o")
    assert code == 1
    assert "run stopped: max_evals" in err and "Traceback" not in err
    r = truncflow.load_result(tmp_path / "o" / "result.npz")
    assert r.status == "max_evals"
    assert (tmp_path / "o" / "plot.png").is_file()


DIVERGES = """
[data]
source = "gaussian"
n_points = 3000
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = "onehot"
[network]
init = "random"
layers = 2
scale = 0.3
seed = 0
out_dim = 3
[flow]
kind = "output"
method = "gd"
lr = 20.0
t_end = 400.0
"""


def test_diverged_run_saves_and_exits_1(capsys, tmp_path):
    text = DIVERGES
    code, out, err = run_cli(capsys, "run", write(tmp_path, text), "--out", tmp_path / "o")
    assert code == 1, (out, err)
    r = truncflow.load_result(tmp_path / "o" / "result.npz")
    assert r.status in ("diverged", "failed")
    assert f"run stopped: {r.status}" in err
    assert (tmp_path / "o" / "plot.png").is_file()


def signal_after_steps(monkeypatch, n_steps, sig):
    """Make the command line's simulate send ``sig`` to this process after ``n_steps``
    accepted steps (a real signal, caught by the run's guard); returns the real simulate."""
    real = truncflow.simulate

    def interrupted(*args, callback, **kwargs):
        steps = []

        def cb(t, cost):
            callback(t, cost)
            steps.append(t)
            if len(steps) == n_steps:
                os.kill(os.getpid(), sig)
        return real(*args, callback=cb, **kwargs)

    monkeypatch.setattr(truncflow, "simulate", interrupted)
    return real


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_run_saves_and_exits_128_plus_signal(capsys, tmp_path, monkeypatch, sig, code):
    """A real signal, sent to this process after the third step (subprocess tests: test_interrupt.py)."""
    signal_after_steps(monkeypatch, 3, sig)
    got, out, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", tmp_path / "o")
    assert got == code
    assert f"interrupted ({sig.name})" in err.strip().splitlines()[-1]
    r = truncflow.load_result(tmp_path / "o" / "result.npz")
    assert r.status == "interrupted" and sig.name in r.message
    assert r.steps_accepted[-1] == 3 and r.t[-1] > 0


def test_interrupt_before_run_exits_130(capsys, monkeypatch):
    import truncflow.config

    def boom(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(truncflow.config, "load_config", boom)
    code, out, err = run_cli(capsys, "run")
    assert code == 130
    assert err.strip() == "truncflow: interrupted"


# ---------------------------------------------------------- user errors
BAD = {
    # name: (edit of SMALL as (old, new) or full text, words the one-line message contains)
    "toml_syntax": (("t_end = 60.0", "t_end = = 60"), ["invalid TOML", "line"]),
    "unknown_section": (("[record]", "[recording]"), ["unknown section [recording]", "[record]", "allowed"]),
    "unknown_key": (("rtol = 1e-5", "rtoll = 1e-5"), ["unknown key 'rtoll'", "[flow]", "did you mean 'rtol'",
                                                     "allowed keys"]),
    "unknown_top_level_key": (("seed = 0", "sed = 0"), ["unknown top-level key 'sed'"]),
    "wrong_type": (("t_end = 60.0", 't_end = "long"'), ["[flow] t_end", "must be a number", "string"]),
    "wrong_type_bool": (("n_points = 3000", "n_points = true"), ["n_points", "integer", "boolean"]),
    "wrong_shape_targets": (("targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]",
                             "targets = [[-1.0, -1.0], [1.5, 1.5]]"), ["targets", "2 rows", "Q=3"]),
    "wrong_width_targets": (("targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]",
                             "targets = [[-1.0, -1.0, 0.0], [1.5, 1.5, 0.0], [0.25, 0.25, 0.0]]"),
                            ["targets", "shape 3x3", "expected ?x2"]),
    "ragged": (("centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]",
                "centers = [[-4.0, -4.0], [4.0], [0.25, 0.25]]"), ["centers", "different lengths"]),
    "negative_t_end": (("t_end = 60.0", "t_end = -1.0"), ["t_end", "> 0"]),
    "unknown_method": (("kind = \"input\"", "kind = \"input\"\nmethod = \"euler\""),
                       ["method", "'euler'", "'rk45'", "'gd'"]),
    "lr_with_rk45": (("rtol = 1e-5", "rtol = 1e-5\nlr = 0.1"), ["lr", "method = 'gd'"]),
    "gd_without_lr": (("rtol = 1e-5\natol = 1e-8", "method = \"gd\""), ["lr", "required"]),
    "missing_t_end": (("t_end = 60.0", ""), ["t_end", "required"]),
    "negative_std": (("std = [0.5, 0.4, 0.2]", "std = [0.5, -0.4, 0.2]"), ["std", ">= 0"]),
    "frozen_out_of_range": (("kind = \"input\"", "kind = \"input\"\nfrozen_layers = [3]"),
                            ["frozen_layers", "[1, 2]"]),
    "singular_edges": (("edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]",
                        "edges = [[[1.0, 1.0], [1.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]"), ["edges", "singular"]),
    "apexes_layers_mismatch": (("apexes = [[-4.0, -4.0], [4.0, 4.0]]", "apexes = [[-4.0, -4.0], [4.0, 4.0]]\nlayers = 3"),
                               ["apexes", "2 layers", "layers = 3"]),
    "key_for_other_init": (("init = \"cones\"", "init = \"cones\"\nscale = 0.5"), ["scale", "init = 'random'"]),
    "output_cost_without_layer": (("kind = \"input\"", "kind = \"output\""), ["output layer", "out_dim"]),
    "record_times_beyond_t_end": (("n_records = 30\nt_first = 0.001", "times = [1.0, 99.0]"), ["times", "t_end"]),
    "missing_data_file": (("source = \"gaussian\"\nn_points = 3000\ncenters = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]\n"
                           "std = [0.5, 0.4, 0.2]", "source = \"file\"\npath = \"nowhere.npz\""),
                          ["[data] path", "data file not found", "nowhere.npz"]),
    "data_key_for_other_source": (("n_points = 3000", "n_points = 3000\npath = \"x.npz\""),
                                  ["path", "source = 'file'", "not 'gaussian'"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_line_exit_2(case, capsys, tmp_path):
    (old, new), words = BAD[case]
    path = write(tmp_path, replace(SMALL, old, new))
    code, out, err = run_cli(capsys, "run", path, "--out", tmp_path / "o")
    assert_user_error(code, err, *words)
    assert str(path) in err  # the message names the file
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError):
        load_config(path)


def test_missing_config_file(capsys, tmp_path):
    code, out, err = run_cli(capsys, "run", tmp_path / "nope.toml")
    assert_user_error(code, err, "config file not found", "nope.toml")


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError, match=r"section \[data\] is required"):
        parse_config("[flow]\nt_end = 1.0\n")


def test_usage_errors_are_one_line(capsys):
    code, out, err = run_cli(capsys, "run", "--bogus")
    assert_user_error(code, err, "unrecognized arguments: --bogus")
    code, out, err = run_cli(capsys, "frobnicate")
    assert_user_error(code, err, "invalid choice")
    code, out, err = run_cli(capsys, "run", "--threads", "0", "--check")
    assert_user_error(code, err, "--threads")


def test_output_folder_is_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, out, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", tmp_path / "taken", "--quiet")
    assert_user_error(code, err, "not a folder")


# ------------------------------------------------------------------ info
def test_info(capsys):
    code, out, err = run_cli(capsys, "info")
    assert code == 0, err
    import numba
    import numpy
    import scipy
    for text in (f"truncflow {truncflow.__version__}", f"numpy     {numpy.__version__}",
                 f"numba     {numba.__version__}", f"scipy     {scipy.__version__}", "python",
                 "threads   ", "threading layer", "cpus", "kernel cache", "gradient.gradient_kernel"):
        assert text in out, text


# ------------------------------------------------------------ subprocess
def test_subprocess_module_entry_point(tmp_path):
    bad = write(tmp_path, replace(SMALL, "[record]", "[recordz]"))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "truncflow", "run", str(bad)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("truncflow: error: ") and "unknown section [recordz]" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "truncflow", "info"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"truncflow {truncflow.__version__}" in proc.stdout


# ------------------------------------------------ aligned model, events, plot
ALIGNED = """
seed = 1
[data]
source = "gaussian"
n_points = 2000
centers = [[0.0, 0.0]]
std = 1.0
targets = [[3.0, 3.0]]
[network]
init = "aligned"
frames = "random"
scales = 2.0
thresholds = [[-1.0, -0.5]]
[flow]
wrt = "aligned"
method = "events"
train = "biases"
t_end = 20.0
record_truncation_times = true
[record]
n_records = 12
"""


def test_aligned_events_config_runs_and_plot_command_redraws(capsys, tmp_path):
    out_dir = tmp_path / "al"
    code, out, err = run_cli(capsys, "run", write(tmp_path, ALIGNED), "--out", out_dir)
    assert code == 0, err
    assert "aligned flow (exact event-driven solution)" in out
    r = truncflow.load_result(out_dir / "result.npz")
    assert r.final.is_aligned and r.truncation_times.shape == (2000, 1, 2)
    assert np.all(r.scales == 2.0)                                   # biases only
    assert r.thresholds[-1, 0, 0] > r.thresholds[0, 0, 0]            # rising towards the target
    assert r.sample_points.shape == (2000, 2)
    for name in ("plot.png", "snapshots.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    redraw = tmp_path / "redraw"
    code, out, err = run_cli(capsys, "plot", out_dir / "result.npz", "--out", redraw, "--snapshots", 3)
    assert code == 0, err
    for name in ("plot.png", "snapshots.png"):
        assert (redraw / name).stat().st_size > 10_000 and str(redraw / name) in out


@pytest.mark.parametrize("M", [1, 3, 5])
def test_snapshots_in_every_dimension(tmp_path, M):
    from truncflow.plot import plot_snapshots
    rng = np.random.default_rng(M)
    ds = truncflow.Dataset(rng.standard_normal((300, M)), np.arange(300) % 2, rng.standard_normal((2, M)))
    r = truncflow.simulate(truncflow.Params.random(2, M, scale=0.3, seed=M), ds, 0.5, n_records=3)
    path = plot_snapshots(r, tmp_path / f"s{M}.png", n_snapshots=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, words", [
    (["plot", "missing.npz"], ["result file not found", "missing.npz"]),
    (["plot", "CONFIG"], ["not a truncflow result file"]),
    (["plot", "RESULT", "--snapshots", "0"], ["--snapshots", "between 1 and 12"]),
])
def test_plot_command_user_errors(capsys, tmp_path, argv, words):
    config = write(tmp_path, ALIGNED)
    np.savez(tmp_path / "r.npz", x=np.zeros(2))
    argv = [str(config) if a == "CONFIG" else str(tmp_path / "r.npz") if a == "RESULT" else a for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert_user_error(code, err, *words)


BAD_ALIGNED = {
    "events_without_aligned": (('wrt = "aligned"', 'wrt = "cumulative"'), ["[flow]", "method='events'", "aligned"]),
    "events_train_weights": (('train = "biases"', 'train = "weights"'), ["train='all' or 'biases'"]),
    "truncation_times_with_rk45": (('method = "events"', 'method = "rk45"'),
                                   ["record_truncation_times", "method = 'events'"]),
    "frames_not_orthogonal": (('frames = "random"', "frames = [[[1.0, 0.5], [0.0, 1.0]]]"), ["not orthogonal"]),
    "frames_word": (('frames = "random"', 'frames = "rotated"'), ["frames", '"identity", "random"']),
    "scales_negative": (("scales = 2.0", "scales = -1.0"), ["scales", "> 0"]),
    "thresholds_shape": (("thresholds = [[-1.0, -0.5]]", "thresholds = [[-1.0]]"), ["thresholds"]),
    "aligned_key_for_cones": (('init = "aligned"', 'init = "cones"\napexes = [[0.0, 0.0]]'),
                              ["init = 'aligned'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ALIGNED))
def test_bad_aligned_config_is_one_line_exit_2(case, capsys, tmp_path):
    (old, new), words = BAD_ALIGNED[case]
    path = write(tmp_path, replace(ALIGNED, old, new))
    code, out, err = run_cli(capsys, "run", path, "--out", tmp_path / "o")
    assert_user_error(code, err, *words)


@pytest.mark.parametrize("script", sorted((REPO / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_scripts_parse_their_arguments(script):
    """Each example imports and parses its command line (running them all is the README's job)."""
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--out" in proc.stdout


# ------------------------------------------------------------ output folder
def test_non_empty_output_folder_is_refused_before_the_run(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", out)
    assert_user_error(code, err, "not empty", "notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_an_earlier_run(capsys, tmp_path):
    config = write(tmp_path, SMALL)
    assert run_cli(capsys, "run", config, "--out", tmp_path / "o", "--quiet")[0] == 0
    first = (tmp_path / "o" / "result.npz").stat().st_mtime_ns
    code, _, err = run_cli(capsys, "run", config, "--out", tmp_path / "o", "--quiet")
    assert_user_error(code, err, "not empty", "--overwrite")
    assert run_cli(capsys, "run", config, "--out", tmp_path / "o", "--quiet", "--overwrite")[0] == 0
    assert (tmp_path / "o" / "result.npz").stat().st_mtime_ns > first
    assert not (tmp_path / "o" / ".truncflow.lock").exists()


def test_folder_in_use_by_a_live_run_is_refused(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".truncflow.lock").write_text(f"{holder.pid}\n")
        code, _, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", out, "--overwrite")
        assert_user_error(code, err, "in use", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is taken over
    code, _, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", out, "--overwrite", "--quiet")
    assert code == 0, err


def test_unwritable_output_folder_is_refused_before_the_run(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "run", write(tmp_path, SMALL), "--out", blocker / "sub")
    assert_user_error(code, err, "cannot create the output folder")


def test_resume_usage_errors(capsys, tmp_path):
    config = write(tmp_path, SMALL)
    code, _, err = run_cli(capsys, "run", config, "--resume", tmp_path)
    assert_user_error(code, err, "--resume FOLDER takes the configuration")
    code, _, err = run_cli(capsys, "run", "--resume", tmp_path / "nothing")
    assert_user_error(code, err, "cannot resume", "config.toml")
    assert run_cli(capsys, "run", config, "--out", tmp_path / "o", "--quiet")[0] == 0
    code, _, err = run_cli(capsys, "run", "--resume", tmp_path / "o")
    assert_user_error(code, err, "cannot resume", "checkpoint.npz", "finished")


def test_interrupted_run_resumes_to_the_uninterrupted_records(capsys, tmp_path, monkeypatch):
    config = write(tmp_path, SMALL)
    assert run_cli(capsys, "run", config, "--out", tmp_path / "whole", "--quiet")[0] == 0
    expected = truncflow.load_result(tmp_path / "whole" / "result.npz")
    real = signal_after_steps(monkeypatch, 5, signal.SIGINT)
    assert run_cli(capsys, "run", config, "--out", tmp_path / "o", "--quiet")[0] == 130
    monkeypatch.setattr(truncflow, "simulate", real)
    assert truncflow.load_result(tmp_path / "o" / "result.npz").steps_accepted[-1] == 5
    assert run_cli(capsys, "run", "--resume", tmp_path / "o", "--quiet")[0] == 0
    resumed = truncflow.load_result(tmp_path / "o" / "result.npz")
    for name, series in expected.series.items():
        assert np.array_equal(resumed.series[name], series), name
