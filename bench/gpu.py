"""One run on a GPU machine that settles the CUDA backend's questions (issue 26, item 7).

    pip install ".[cuda]"                       # numba-cuda; an NVIDIA driver and GPU
    python bench/gpu.py --out-dir bench/gpu     # about 5 minutes on an H100; --large adds N = 1e8
    python bench/gpu.py --simulate --out-dir /tmp/gpu --no-torch --no-tests   # the script itself, no GPU

Sections, each written to ``OUT_DIR/gpu.json`` as soon as it is done (a run cut short keeps
what it measured):

  device     GPU model, SMs, clocks, memory, compute capability, driver; the host's CPU.
  tests      ``pytest -m cuda`` on the device (the CUDA tests, the PTX/ptxas checks): its summary line.
  first      the first ``tf.gradient`` on the GPU in a fresh process (compilation included) and the second.
  kernels    per N (1e6, 1e7; 1e8 with --large), precision (float64, float32), M = 8, L = 3: CUDA-event
             times of the specialised gradient kernel alone, of the fixed-order reduction, and of the
             whole ``tf.gradient`` call (median of --repeat); registers, shared memory, grid and the
             occupancy they allow; the fraction of the FP and memory peaks; the CPU's time at 1e6.
  torch      PyTorch CUDA autograd on the same network, float32 and float64 (its out-of-memory caught).
  bits       two calls give the same bits; a streamed dataset gives the resident one's bits.
  transfer   host-to-device bandwidth (pinned), and the streamed gradient's points per second.
  flow       --evaluations (100) back-to-back evaluations with new parameters each (as a flow makes them), per evaluation.

Targets (issue 26): N = 1e7, M = 8, L = 3 in <= 2 ms float64 and <= 1 ms float32, and >= 10x
faster than PyTorch CUDA autograd float32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True, help="folder for gpu.json (made if missing)")
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--large", action="store_true", help="also N = 1e8 (as device memory allows)")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--evaluations", type=int, default=100, help="back-to-back evaluations of the flow section")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch CUDA comparison")
    ap.add_argument("--no-tests", action="store_true", help="skip pytest -m cuda")
    ap.add_argument("--simulate", action="store_true", help="tiny sizes in Numba's CUDA simulator (a smoke test)")
    args = ap.parse_args()
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        args.sizes, args.large, args.repeat, args.layers, args.width = [100], False, 1, 2, 3
        args.evaluations = 2
    if args.large:
        args.sizes = list(args.sizes) + [1e8]
    return args


class Report:
    """The results so far, rewritten to OUT_DIR/gpu.json after every section."""

    def __init__(self, folder: str, simulated: bool):
        self.path = Path(folder) / "gpu.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.data = {"simulated": simulated, "python": sys.version.split()[0], "commit": _commit()}

    def put(self, section: str, value):
        self.data[section] = value
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:           # not a git checkout
        return "unknown"


def problem(N: int, M: int, L: int, dtype, seed: int = 0):
    """N points (a block of 2^20 random points repeated: cheap to make) in 4 clusters, and a network."""
    import truncflow as tf
    rng = np.random.default_rng(seed)
    block = min(N, 1 << 20)
    base = rng.standard_normal((block, M)).astype(dtype)
    points = np.resize(base, (N, M)) if N > block else base
    labels = np.resize(np.arange(block) % 4, N)
    W = np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    params = tf.Params.from_layers(W, 0.3 * rng.standard_normal((L, M)))
    return params, tf.Dataset(points, labels, rng.standard_normal((4, M)))


def event_ms(cuda, fn, repeat: int) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events on the default stream (after one warm-up)."""
    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def wall_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------ sections
def device_section(cuda) -> dict:
    dev = cuda.get_current_device()
    out = {"host_cpu": platform.processor() or platform.machine()}
    name = getattr(dev, "name", b"simulator")
    out["name"] = name.decode() if isinstance(name, bytes) else str(name)
    for attr in ("MULTIPROCESSOR_COUNT", "CLOCK_RATE", "MEMORY_CLOCK_RATE", "GLOBAL_MEMORY_BUS_WIDTH",
                 "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", "MAX_REGISTERS_PER_MULTIPROCESSOR",
                 "MAX_THREADS_PER_MULTI_PROCESSOR"):
        try:
            out[attr.lower()] = int(getattr(dev, attr))
        except Exception:       # the simulator has few attributes
            out[attr.lower()] = None
    try:
        out["compute_capability"] = list(dev.compute_capability)
        out["memory_total"] = int(cuda.current_context().get_memory_info()[1])
        out["driver"] = ".".join(map(str, cuda.cudadrv.driver.driver.get_version()))
    except Exception:
        pass
    if out["clock_rate"]:
        sms, clock = out["multiprocessor_count"], out["clock_rate"] * 1e3
        cc = tuple(out.get("compute_capability", (0, 0)))
        fp64_lanes = {(8, 0): 32, (9, 0): 64, (10, 0): 64}.get(cc, 2)       # FMA lanes per SM per clock
        out["fp64_peak"] = 2.0 * fp64_lanes * sms * clock
        out["fp32_peak"] = 2.0 * 128 * sms * clock
        out["bandwidth_peak"] = 2.0 * out["memory_clock_rate"] * 1e3 * out["global_memory_bus_width"] / 8
    return out


def tests_section(timeout: int = 240) -> dict:
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               "tests/test_cuda.py", "tests/test_cuda_optional.py", "tests/test_cuda_compile.py"],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        tail = proc.stdout.strip().splitlines()[-1:] or [proc.stderr[-300:]]
        return {"returncode": proc.returncode, "summary": tail[0], "seconds": time.perf_counter() - started,
                "failures": [line for line in proc.stdout.splitlines() if line.startswith("FAILED")][:20]}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout} s"}


FIRST_CALL = """
import time, numpy as np
started = time.perf_counter()
import truncflow as tf
rng = np.random.default_rng(0)
ds = tf.Dataset(rng.standard_normal((100000, {M})), np.arange(100000) % 4, rng.standard_normal((4, {M}))).to("cuda")
p = tf.Params.from_layers(np.eye({M}) + 0.1 * rng.standard_normal(({L}, {M}, {M})), 0.1 * rng.standard_normal(({L}, {M})))
imported = time.perf_counter()
tf.gradient(p, ds)
first = time.perf_counter()
tf.gradient(p, ds)
print(imported - started, first - imported, time.perf_counter() - first)
"""


def first_call_section(M: int, L: int) -> dict:
    """A fresh process: import + data to the GPU, the first gradient (compiles), the second."""
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL.format(M=M, L=L)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if proc.returncode:
        return {"error": proc.stderr[-500:]}
    setup, first, second = map(float, proc.stdout.split()[-3:])
    return {"import_and_upload_s": setup, "first_gradient_s": first, "second_gradient_s": second}


def kernel_parts(params, dev, precision: str):
    """(launch the specialised kernel alone, reduce its rows, kernel, shape, grid): the same launch as
    ``DeviceDataset._specialised_gradient_pass`` makes, rebuilt here to time its parts."""
    from numba import cuda
    from truncflow.kernels.cuda import launch as lc
    from truncflow.kernels.cuda import sweep
    from truncflow.tiles import sweep_arrays, tile_arrays
    targets, cw, cb, inv, back, out_w, out_b = sweep_arrays(tile_arrays(params, dev.targets, "input"), precision)
    M, L = dev.width, cw.shape[0]
    shape = sweep.plan(cw.dtype.name, M, L, 0, False, 1, False)
    kernel = sweep.build(shape)
    K = sweep.layout(M, L, 0)["K"]
    chunk, R = lc.chunking(dev.n_points, K * 8)
    par = cuda.to_device(sweep.pack(cw, cb, inv, back, out_w, out_b, targets, M))
    acc = cuda.device_array((R, 1, K))
    fold = cuda.device_array(lc.fold_scratch_rows(R) * K)
    out = cuda.device_array((1, K))
    pats, flags = cuda.device_array((1, 1, 1), dtype=np.uint64), cuda.device_array(1, dtype=np.uint8)

    def run_kernel():
        kernel[R, shape.T](dev.points, dev.labels, dev.n_points, 0, chunk // shape.T, par, acc, pats, flags)

    def run_reduce():
        lc.reduce_chunks(acc, R, fold, out)
    return run_kernel, run_reduce, kernel, shape, (R, shape.T)


def occupancy(info: dict, regs: int, smem: int, T: int) -> dict:
    if not info.get("max_registers_per_multiprocessor"):
        return {}
    by_regs = info["max_registers_per_multiprocessor"] // max(1, ((regs + 7) // 8 * 8) * T)
    by_smem = info["max_shared_memory_per_multiprocessor"] // max(1, smem + 1024)
    by_threads = info["max_threads_per_multi_processor"] // T
    blocks = max(0, min(by_regs, by_smem, by_threads, 32))
    return {"blocks_per_sm": blocks, "limited_by": min((by_regs, "registers"), (by_smem, "shared memory"),
                                                         (by_threads, "threads"))[1],
            "occupancy": blocks * T / info["max_threads_per_multi_processor"]}


def kernels_section(cuda, tf, info, args) -> list:
    rows = []
    M, L = args.width, args.layers
    for precision, dtype in (("float64", np.float64), ("float32", np.float32)):
        n_cpu = int(min(1e6, min(args.sizes)))
        p_cpu, ds_cpu = problem(n_cpu, M, L, dtype)
        cpu_ms = wall_ms(lambda: tf.gradient(p_cpu, ds_cpu, precision=precision), 3) / n_cpu * 1e6
        for N in map(int, args.sizes):
            need = N * (M * np.dtype(dtype).itemsize + 16)
            free = cuda.current_context().get_memory_info()[0]
            if need > 0.7 * free:
                rows.append({"N": N, "precision": precision, "skipped": f"{need / 2**30:.1f} GiB of points"})
                continue
            params, ds = problem(N, M, L, dtype)
            dev = ds.to("cuda")
            run_kernel, run_reduce, kernel, shape, grid = kernel_parts(params, dev, precision)
            row = {"N": N, "M": M, "L": L, "precision": precision, "points_dtype": np.dtype(dtype).name,
                   "T": shape.T, "grid": grid,
                   "kernel_ms": event_ms(cuda, run_kernel, args.repeat),
                   "reduce_ms": event_ms(cuda, run_reduce, args.repeat),
                   "call_ms_events": event_ms(cuda, lambda: tf.gradient(params, dev, precision=precision),
                                              args.repeat),
                   "call_ms_wall": wall_ms(lambda: tf.gradient(params, dev, precision=precision), args.repeat),
                   "cpu_ms_per_1e6": cpu_ms}
            try:
                regs = kernel.get_regs_per_thread()
                smem = kernel.get_shared_mem_per_block()
                row.update(registers=regs, shared_bytes=smem, **occupancy(info, int(regs), int(smem), shape.T))
            except Exception as exc:       # the simulator compiles nothing
                row["registers"] = f"n/a ({type(exc).__name__})"
            if info.get("fp64_peak"):
                flops = 8.0 * L * M * M * N
                row["fp_fraction"] = flops / (row["kernel_ms"] / 1e3) / info[
                    "fp64_peak" if precision == "float64" else "fp32_peak"]
                row["bandwidth_fraction"] = N * (M * np.dtype(dtype).itemsize + 8) / (row["kernel_ms"] / 1e3) / \
                    info["bandwidth_peak"]
            rows.append(row)
            print(f"N={N:.0e} {precision}: kernel {row['kernel_ms']:.3f} ms, reduce {row['reduce_ms']:.3f} ms, "
                  f"tf.gradient {row['call_ms_events']:.3f} ms (wall {row['call_ms_wall']:.3f}); "
                  f"registers {row.get('registers')}, occupancy {row.get('occupancy')}", flush=True)
            del dev
    return rows


def torch_section(tf, args) -> list:
    try:
        import torch
    except ImportError:
        return [{"skipped": "torch not installed"}]
    if not torch.cuda.is_available():
        return [{"skipped": "torch has no CUDA"}]
    rows = []
    M, L = args.width, args.layers
    for N in map(int, args.sizes):
        for precision, tdt in (("float32", torch.float32), ("float64", torch.float64)):
            params, ds = problem(N, M, L, np.float64)
            try:
                dev = torch.device("cuda")
                x = torch.as_tensor(np.asarray(ds.points), device=dev, dtype=tdt)
                lab = torch.as_tensor(np.asarray(ds.labels), device=dev)
                tgt = torch.as_tensor(ds.targets, device=dev, dtype=tdt)
                cw = torch.tensor(np.asarray(params.cum_weights), device=dev, dtype=tdt, requires_grad=True)
                cb = torch.tensor(np.asarray(params.cum_biases), device=dev, dtype=tdt, requires_grad=True)

                def run():
                    cw.grad = cb.grad = None
                    z = x
                    for l in range(cw.shape[0]):
                        a = z @ cw[l].T + cb[l]
                        z = z + torch.relu(-a) @ torch.linalg.inv(cw[l]).T
                    r = z - tgt[lab]
                    (0.5 * (r * r).sum() / N).backward()
                    torch.cuda.synchronize()
                rows.append({"N": N, "precision": precision, "torch_ms": wall_ms(run, args.repeat)})
            except torch.cuda.OutOfMemoryError as exc:
                rows.append({"N": N, "precision": precision, "torch_ms": None, "error": f"out of memory: {exc}"[:200]})
            finally:
                torch.cuda.empty_cache()
    return rows


def bits_section(tf, args) -> dict:
    N = int(min(args.sizes))
    params, ds = problem(N, args.width, args.layers, np.float64, seed=3)
    dev = ds.to("cuda")
    c1, g1 = tf.gradient(params, dev, per_cluster=True)
    c2, g2 = tf.gradient(params, dev, per_cluster=True)
    streamed = ds.to("cuda", batch_points=max(1, N // 5))
    c3, g3 = tf.gradient(params, streamed, per_cluster=True)
    c0, g0 = tf.gradient(params, ds, per_cluster=True)
    return {"N": N, "repeat_identical": bool(np.array_equal(c1, c2) and np.array_equal(g1.weights, g2.weights)),
            "streamed_identical": bool(np.array_equal(c1, c3) and np.array_equal(g1.weights, g3.weights)
                                       and np.array_equal(g1.biases, g3.biases)),
            "rel_diff_vs_cpu": float(np.max(np.abs(g1.weights - g0.weights)) / np.max(np.abs(g0.weights)))}


def transfer_section(cuda, tf, args) -> dict:
    n = (1 << 26) if not os.environ.get("NUMBA_ENABLE_CUDASIM") else 1 << 10       # 512 MiB of float64
    host = cuda.pinned_array(n, dtype=np.float64)
    host[:] = 1.0
    target = cuda.device_array(n)
    ms = event_ms(cuda, lambda: target.copy_to_device(host), 5)
    N = int(max(args.sizes))
    params, ds = problem(N, args.width, args.layers, np.float64)
    streamed = ds.to("cuda", batch_points=1 << 22)
    stream_ms = wall_ms(lambda: tf.gradient(params, streamed), 3)
    return {"h2d_pinned_GBps": 8 * n / (ms / 1e3) / 1e9, "streamed_N": N, "streamed_gradient_ms": stream_ms,
            "streamed_points_per_s": N / (stream_ms / 1e3)}


def flow_section(tf, args) -> dict:
    N = int(max(args.sizes))
    params, ds = problem(N, args.width, args.layers, np.float64)
    dev = ds.to("cuda")
    rng = np.random.default_rng(5)
    versions = [type(params).from_layers(params.weights + 1e-3 * rng.standard_normal(params.weights.shape),
                                         params.biases) for _ in range(10)]
    tf.gradient(versions[0], dev)
    started = time.perf_counter()
    for k in range(args.evaluations):
        tf.gradient(versions[k % 10], dev)
    per = (time.perf_counter() - started) / args.evaluations
    return {"N": N, "evaluations": args.evaluations, "ms_per_evaluation": per * 1e3}


def main():
    args = parse()
    report = Report(args.out_dir, args.simulate)
    import truncflow as tf
    from truncflow import device
    cuda = device.require_cuda()
    info = device_section(cuda)
    report.put("device", info)
    print(f"device: {info['name']}, {info.get('multiprocessor_count')} SMs, cc {info.get('compute_capability')}",
          flush=True)
    if not args.no_tests:
        report.put("tests", tests_section())
        print("tests:", report.data["tests"]["summary"], flush=True)
    if not args.simulate:
        report.put("first_call", first_call_section(args.width, args.layers))
        print("first call:", report.data["first_call"], flush=True)
    report.put("kernels", kernels_section(cuda, tf, info, args))
    if not args.no_torch:
        report.put("torch", torch_section(tf, args))
        print("torch:", report.data["torch"], flush=True)
    report.put("bits", bits_section(tf, args))
    print("bits:", report.data["bits"], flush=True)
    report.put("transfer", transfer_section(cuda, tf, args))
    print("transfer:", report.data["transfer"], flush=True)
    report.put("flow", flow_section(tf, args))
    print("flow:", report.data["flow"], flush=True)
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
