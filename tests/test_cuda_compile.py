"""The CUDA kernels compile to PTX for a data-centre GPU (sm_90), float64 and float32, with the
argument types the device dataset passes them: a check of typing and code generation where
there is a CUDA toolkit (NVVM, NVRTC) but no GPU. Skipped under the simulator and without one.

Where ``ptxas`` is there too (``$CUDA_HOME/bin``, ``/usr/local/cuda/bin`` or the PATH), the
gradient kernel compiled for the shape of issue 26's targets (M = 8, L = 3) is assembled for
sm_90 and held to its budget: at most 96 registers a thread, no spills and no stack, and no
global (or local) load inside the forward products, whose weights come from shared memory.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("numba_cuda")
from numba import config as numba_config  # noqa: E402

pytestmark = pytest.mark.cuda
if numba_config.ENABLE_CUDASIM:
    pytest.skip("the simulator compiles nothing", allow_module_level=True)

from numba import cuda, typeof, types  # noqa: E402

CC = (9, 0)


def ptx(kernel, *args):
    sig = tuple(typeof(a) for a in args)
    code, _ = cuda.compile_ptx(kernel.py_func, sig, cc=CC)
    return code


class _Sm90:
    """What ``get_current_device`` gives the compiler of device functions, without a driver."""
    compute_capability = CC


@pytest.fixture(scope="module", autouse=True)
def toolkit():
    from numba.cuda import dispatcher
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Sm90()       # device functions compile for sm_90 too
    yield from _probe()
    dispatcher.get_current_device = saved


def _probe():
    def probe(a):
        a[0] = 1.0
    try:
        cuda.compile_ptx(probe, (types.float64[:],), cc=CC)
    except Exception as exc:       # no NVVM / NVRTC here
        pytest.skip(f"no CUDA toolkit to compile with ({type(exc).__name__})")
    yield


def arrays(dtype, L=3, Mp=8, M=7, P=2, G=4, T=128, S=3, K=50):
    f = np.dtype(dtype)
    return dict(points=np.zeros((100, M)), labels=np.zeros(100, np.int64), targets=np.zeros((S, Mp), f),
                cw=np.zeros((L, Mp, Mp), f), cb=np.zeros((L, Mp), f), inv=np.zeros((L, Mp, Mp), f),
                back=np.zeros((L, Mp, Mp), f), out_w=np.zeros((P, Mp), f), out_b=np.zeros(P, f),
                offsets=np.zeros(9, np.int64), z=np.zeros((G, L + 1, Mp, T), f), act=np.zeros((G, L, Mp, T), f),
                u=np.zeros((G, 2, Mp, T), f), r=np.zeros((G, Mp, T), f), rr=np.zeros((G, T)),
                acc=np.zeros((G, S, K)), zero=f.type(0))


@pytest.mark.parametrize("dtype,frozen", [("float64", False), ("float32", False), ("float64", True)])
def test_gradient_kernel_compiles(dtype, frozen):
    from truncflow.kernels.cuda import gradient
    a = arrays(dtype)
    code = ptx(gradient.build(dtype, frozen), a["points"], a["labels"], 100, 0, 8, a["targets"], a["cw"], a["cb"], a["inv"],
               a["back"], a["out_w"], a["out_b"], True, True, not frozen, not frozen, 7, a["offsets"], a["z"],
               a["act"], a["u"], a["r"], a["rr"], a["zero"], a["acc"], np.zeros((100, 3, 1), np.uint64),
               np.zeros(100, np.uint8))
    # the forward sweep's products and sums are the rounded, never-contracted ones
    op = "mul.rn.f64" if dtype == "float64" else "mul.rn.f32"
    assert op in code


def test_forward_observe_and_sums_kernels_compile():
    from truncflow.kernels.cuda import forward, launch, observe
    a = arrays("float64")
    truncate_kernel, patterns_kernel = forward.build("float64")[2:4]
    ptx(truncate_kernel, a["points"].astype(np.float32), 2, a["cw"], a["cb"], a["inv"], a["z"], a["act"], 0.0,
        np.zeros((100, 7)))
    ptx(patterns_kernel, a["points"], a["cw"], a["cb"], a["inv"], a["z"], a["act"], 0.0,
        np.zeros((100, 3, 1), np.uint64))
    ptx(observe.build(), a["points"], a["labels"], 100, 0, 8, np.zeros((3, 7)), np.zeros((3, 7)), a["cw"], a["cb"],
        a["inv"], a["out_w"], a["out_b"], False, a["z"], a["act"], a["rr"], 0.0, np.zeros(100, np.uint64),
        a["acc"])
    ptx(observe.cluster_sums_kernel, a["points"], a["labels"], 100, 0, 8, a["acc"])
    ptx(observe.gather_rows_kernel, a["points"], a["labels"], np.zeros(5, np.int64), np.zeros((5, 7)),
        np.zeros(5, np.int64))
    ptx(launch._fold_kernel, np.zeros((10, 150)), 10, np.zeros((1, 150)))
    ptx(launch._zero_kernel, np.zeros(10))
    ptx(launch._count_nonfinite_kernel, a["points"], np.zeros(1, np.int64))


def test_the_kink_integrators_kernels_compile():
    from truncflow.kernels.cuda import frozen
    k = frozen.build()
    N, L, M = 100, 3, 7
    pts, pats = np.zeros((N, M)), np.zeros((N, L, 1), np.uint64)
    cw, cb = np.zeros((L, M, M)), np.zeros((L, M))
    a, flags = np.zeros((N, L, M)), np.zeros(N, np.uint8)
    code = ptx(k["ends"], pts, pats, cw, cb, cw, cw, cb, cw, np.zeros((64, M)), np.zeros((64, M)), a, a)
    assert "mul.rn.f64" in code and "fma" not in code.split("// .globl")[1]     # rounded as on the CPU
    ptx(k["dips"], pats, a, a, a, a, 0.1, 0.5, flags)
    ptx(k["flips"], pats, a, a, flags)
    ptx(k["absmax"], a, np.zeros(1))
    ptx(k["near"], a, np.zeros((2, 2), np.int64), 1e-12, np.zeros(N, np.uint64))
    ptx(k["take"], np.zeros((N, 3), np.uint64), np.zeros(5, np.int64), np.zeros((5, 3), np.uint64))
    ptx(k["put"], np.zeros((N, 3), np.uint64), np.zeros(5, np.int64), np.zeros((5, 3), np.uint64))


# ------------------------------------------------------------------ the shape's kernel, assembled
def ptxas() -> str:
    for folder in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if folder and os.path.exists(os.path.join(folder, "bin", "ptxas")):
            return os.path.join(folder, "bin", "ptxas")
    found = shutil.which("ptxas")
    if not found:
        pytest.skip("no ptxas (CUDA toolkit) to assemble with")
    return found


def assemble(code: str, tmp_path) -> dict:
    """``ptxas -v`` for sm_90: registers, spill stores and loads, stack frame (bytes)."""
    path = tmp_path / "kernel.ptx"
    path.write_text(code)
    out = subprocess.run([ptxas(), "-v", "-arch=sm_90", str(path), "-o", str(tmp_path / "kernel.cubin")],
                         capture_output=True, text=True, check=True).stderr
    return dict(registers=int(re.search(r"Used (\d+) registers", out).group(1)),
                spill_stores=int(re.search(r"(\d+) bytes spill stores", out).group(1)),
                spill_loads=int(re.search(r"(\d+) bytes spill loads", out).group(1)),
                stack=int(re.search(r"(\d+) bytes stack frame", out).group(1)))


def sweep_ptx(dtype, M=8, L=3, P=0, S=1, frozen=False):
    from truncflow.kernels.cuda import sweep
    shape = sweep.plan(dtype, M, L, P, P > 0, S, frozen)
    assert shape is not None
    f = np.dtype(dtype)
    return ptx(sweep.build(shape), np.zeros((100, M)), np.zeros(100, np.int64), 100, 0, 8, np.zeros(500, f),
               np.zeros((4, S, 300)), np.zeros((100, L, 1), np.uint64), np.zeros(100, np.uint8))


def forward_products(code: str, dtype: str) -> list:
    """The PTX lines from the first to the last rounded product (the forward sweep's ``mul.rn``:
    nothing else in the kernel rounds a product on its own)."""
    op = "mul.rn.f64" if dtype == "float64" else "mul.rn.f32"
    lines = code.splitlines()
    at = [n for n, line in enumerate(lines) if op in line]
    return lines[at[0]:at[-1] + 1]


@pytest.mark.parametrize("dtype,P,S,frozen", [("float64", 0, 1, False), ("float64", 2, 1, False),
                                              ("float64", 0, 1, True), ("float64", 2, 3, False),
                                              ("float32", 0, 1, False)])
def test_the_kernel_for_m8_l3_fits_in_registers_and_reads_weights_from_shared_memory(dtype, P, S, frozen, tmp_path):
    code = sweep_ptx(dtype, P=P, S=S, frozen=frozen)
    report = assemble(code, tmp_path)
    assert report["registers"] <= 96, report
    assert report["spill_stores"] == report["spill_loads"] == report["stack"] == 0, report
    forward = forward_products(code, dtype)
    op = "mul.rn.f64" if dtype == "float64" else "mul.rn.f32"
    assert sum(op in line for line in forward) >= 2 * 8 * 8              # a layer's products, unrolled
    # weights and the point's state: shared memory and registers, never global or local memory (a
    # frozen pass reads its point's pattern words there: one a layer)
    assert not [line for line in forward if re.search(r"ld\.(global|local)\.f", line) or "ld.local" in line]
    assert sum("ld.global" in line for line in forward) <= (3 if frozen else 0)
    assert sum("ld.shared" in line for line in forward) >= 2 * 8 * 8     # the weights, from shared memory
    assert "fma" not in "\n".join(forward)                              # rounded one by one, as on the CPU


def test_the_generic_kernel_is_what_the_shape_kernel_replaces(tmp_path):
    """The budget is a real constraint: the generic kernel, with the same shape, breaks it (its
    registers and its global loads in the forward products), so the checks above can fail."""
    from truncflow.kernels.cuda import gradient
    a = arrays("float64", L=3, Mp=8, M=8, P=0, S=1)
    code = ptx(gradient.build("float64"), a["points"], a["labels"], 100, 0, 8, a["targets"], a["cw"], a["cb"],
               a["inv"], a["back"], np.zeros((0, 8)), np.zeros(0), False, False, False, False, 8, a["offsets"],
               a["z"], a["act"], a["u"], a["r"], a["rr"], a["zero"], a["acc"], np.zeros((100, 3, 1), np.uint64),
               np.zeros(100, np.uint8))
    assert assemble(code, tmp_path)["registers"] > 96
    assert [line for line in forward_products(code, "float64") if "ld.global" in line]



@pytest.mark.parametrize("dtype,M,L,P,S", [("float64", 15, 3, 0, 1), ("float32", 3, 2, 2, 2)])
def test_the_planned_block_fits_its_static_shared_memory(dtype, M, L, P, S, tmp_path):
    """``sweep.plan`` picks the tile from ``sweep.shared_bytes``, which must not undercount what
    ptxas allocates (a block over 48 KiB of static shared memory does not launch): M = 15, L = 3
    is the widest float64 shape at L = 3."""
    from truncflow.kernels.cuda import sweep
    shape = sweep.plan(dtype, M, L, P, P > 0, S, False)
    f = np.dtype(dtype)
    code = ptx(sweep.build(shape), np.zeros((100, M)), np.zeros(100, np.int64), 100, 0, 8, np.zeros(500, f),
               np.zeros((4, S, 300)), np.zeros((100, L, 1), np.uint64), np.zeros(100, np.uint8))
    path = tmp_path / "kernel.ptx"
    path.write_text(code)
    out = subprocess.run([ptxas(), "-v", "-arch=sm_90", str(path), "-o", str(tmp_path / "k.cubin")],
                         capture_output=True, text=True, check=True).stderr
    allocated = int(re.search(r"(\d+) bytes smem", out).group(1))
    assert allocated <= sweep.shared_bytes(dtype, M, L, P, P > 0, S, shape.T) <= sweep.SHARED_BYTES
    if dtype == "float64":
        assert sweep.plan(dtype, M + 1, L, P, P > 0, S, False) is None      # the widest that fits
