"""Dask is optional: without it, truncflow works and asking for a cluster says what to install."""
import sys

import numpy as np
import pytest

import truncflow as tf


def test_without_dask_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)       # "import distributed" fails
    with pytest.raises(ImportError, match=r'pip install "truncflow\[distributed\]"'):
        tf.distribute(np.zeros((4, 2)), np.zeros(4, dtype=int), np.zeros((1, 2)), client=None)


JOB = """
[data]
source = "gaussian"
n_points = 200
centers = [[-2.0, -2.0], [2.0, 2.0]]
targets = "centers"
[network]
init = "random"
layers = 2
[flow]
method = "gd"
lr = 0.05
t_end = 0.1
"""


@pytest.mark.parametrize("cluster,message", [
    ("local = 2\nscheduler = 'tcp://h:1'", "either scheduler"),
    ("threads_per_worker = 2", "applies to local"),
    ("local = 0", "local"),
    ("nodes = 2", "unknown key 'nodes' in \\[cluster\\]"),
])
def test_cluster_section_refusals(tmp_path, capsys, cluster, message):
    from truncflow.cli import main
    job = tmp_path / "job.toml"
    job.write_text(JOB + "[cluster]\n" + cluster + "\n")
    assert main(["run", str(job), "--out", str(tmp_path / "o"), "--check"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err


def test_a_cluster_run_without_dask_is_one_line_saying_what_to_install(tmp_path, capsys, monkeypatch):
    from truncflow.cli import main
    monkeypatch.setitem(sys.modules, "distributed", None)
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    assert main(["run", str(job), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'pip install "truncflow[distributed]"' in err
