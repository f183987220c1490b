"""The GPU backend is optional: without numba-cuda (or a GPU) truncflow works as before, and
asking for "cuda" says what is missing, in one line on the command line."""
import subprocess
import sys

import numpy as np
import pytest

import truncflow as tf
from truncflow import device


def test_importing_truncflow_does_not_import_numba_cuda():
    code = "import sys, truncflow; print('numba.cuda' in sys.modules, 'numba_cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_without_numba_cuda_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(device, "_numba_cuda_installed", lambda: False)
    ds = tf.Dataset(np.zeros((4, 2)), np.zeros(4, dtype=int), np.zeros((1, 2)))
    with pytest.raises(tf.CudaUnavailableError, match=r'numba-cuda, which is not installed: pip install '
                                                      r'"truncflow\[cuda\]"'):
        ds.to("cuda")
    assert ds.to("cpu") is ds
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        ds.to("tpu")


@pytest.mark.skipif(not device._numba_cuda_installed() or device._simulator_requested(),
                    reason="needs numba-cuda installed and the simulator off")
def test_without_a_gpu_the_error_names_the_driver():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(tf.CudaUnavailableError, match="no usable CUDA GPU .*NVIDIA driver"):
        tf.Dataset(np.zeros((4, 2)), np.zeros(4, dtype=int), np.zeros((1, 2))).to("cuda")


JOB = """
[data]
source = "gaussian"
n_points = 50
centers = [[-2.0, -2.0], [2.0, 2.0]]
targets = "centers"
[network]
init = "{init}"
layers = 2{network}
[flow]
method = "{method}"
{flow}
t_end = 0.1
[run]
{run}
"""


def job(tmp_path, method="gd", flow="lr = 0.05", run=""):
    path = tmp_path / "job.toml"
    init, network, flow = (("aligned", "\nthresholds = [[-50.0, -50.0], [-50.0, -50.0]]", 'wrt = "aligned"\n' + flow)
                           if method == "events" else ("random", "", flow))
    path.write_text(JOB.format(method=method, flow=flow, run=run, init=init, network=network))
    return str(path)


def test_a_gpu_run_without_numba_cuda_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    from truncflow.cli import main
    monkeypatch.setattr(device, "_numba_cuda_installed", lambda: False)
    out = tmp_path / "out"
    assert main(["run", job(tmp_path), "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'pip install "truncflow[cuda]"' in err
    assert not out.exists()
    # --check says what would run, GPU or not
    assert main(["run", job(tmp_path, run='device = "cuda"\nprecision = "float32"'), "--check"]) == 0
    assert "float32 sweep" in capsys.readouterr().out


@pytest.mark.parametrize("method,flow,run,message", [
    ("gd", "lr = 0.05", 'device = "gpu"', "device"),
    ("gd", "lr = 0.05", 'precision = "float16"', "precision"),
    ("kinks", "", 'precision = "float32"', "applies to method"),
    ("events", "", 'device = "cuda"', "a GPU runs method"),
])
def test_run_section_refusals(tmp_path, capsys, method, flow, run, message):
    from truncflow.cli import main
    assert main(["run", job(tmp_path, method, flow, run), "--check"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_device_and_cluster_together_are_refused(tmp_path, capsys):
    from truncflow.cli import main
    path = job(tmp_path, run='device = "cuda"\n[cluster]\nlocal = 2')
    assert main(["run", path, "--check"]) == 2
    assert "a GPU or to a Dask cluster, not both" in capsys.readouterr().err


def test_command_line_overrides_are_checked_against_the_method(tmp_path, capsys):
    from truncflow.cli import main
    path = job(tmp_path, "events", "")
    assert main(["run", path, "--device", "cuda", "--check"]) == 2
    assert "--device cuda: a GPU runs method" in capsys.readouterr().err
    path = job(tmp_path, "kinks", "")
    assert main(["run", path, "--device", "cuda", "--check"]) == 0      # kinks runs on a GPU
    capsys.readouterr()
    assert main(["run", path, "--precision", "float32", "--check"]) == 2
    assert "--precision float32 applies to method" in capsys.readouterr().err
    assert main(["run", path, "--device", "cpu", "--precision", "float64", "--check"]) == 0
