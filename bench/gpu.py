"""GPU benchmark of truncflow's CUDA kernels (issue 13): one self-contained script.

    pip install ".[cuda]"            # numba-cuda; an NVIDIA driver and GPU
    python bench/gpu.py              # N = 1e6, 1e7 (and 1e8 with --large), M = 8, 32, L = 3
    python bench/gpu.py --out bench/gpu.json

For each size, width and precision it times the full gradient pass (cost and
cumulative gradient, points resident on the GPU) and prints
  - ns per point and ms per pass (median of --repeat passes, after one warm-up pass),
  - the achieved fraction of the memory bandwidth: bytes of points and labels read per
    second over the device's peak (memory clock x bus width x 2, from the device
    attributes) and over a measured device-to-device copy,
  - the achieved fraction of the floating-point peak (a count of 8 L M^2 flops per point:
    the forward products W z and A cn, the backward product and the outer-product sums,
    over an FP64 / FP32 peak estimated from the compute capability, SM count and clock),
  - the CPU-to-GPU ratio (truncflow's CPU kernels on this machine's cores at N = 1e6),
  - the ratio to PyTorch CUDA autograd on the same network (where torch with CUDA imports),
  - the relative difference to the CPU result at N = 1e5 (a check, not a timing).
Targets (H100/H200 class): N = 1e7, M = 8, L = 3 float64 gradient <= 2 ms, float32 <= 1 ms,
and >= 10x PyTorch CUDA autograd float32.

``--simulate`` runs a tiny problem in Numba's CUDA simulator to check the script itself
(NUMBA_ENABLE_CUDASIM=1; its timings mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--large", action="store_true", help="also N = 1e8 (as device memory allows)")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch CUDA comparison")
    ap.add_argument("--simulate", action="store_true", help="tiny sizes in Numba's CUDA simulator (a smoke test)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        args.sizes, args.large, args.widths, args.repeat, args.layers = [64], False, [3], 1, 2
    if args.large:
        args.sizes = list(args.sizes) + [1e8]
    return args


def problem(N: int, M: int, L: int, dtype, seed: int = 0):
    """A dataset of N points (a block of 2^20 random points repeated: cheap to make) and a network."""
    import truncflow as tf
    rng = np.random.default_rng(seed)
    block = min(N, 1 << 20)
    base = rng.standard_normal((block, M)).astype(dtype)
    points = np.resize(base, (N, M)) if N > block else base
    labels = np.resize(np.arange(block) % 4, N)
    W = np.eye(M) + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    params = tf.Params.from_layers(W, 0.3 * rng.standard_normal((L, M)))
    return params, tf.Dataset(points, labels, rng.standard_normal((4, M)))


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call (which compiles)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_peaks(cuda) -> dict:
    """Peak memory bandwidth (B/s) from the attributes, a measured device-to-device copy, FP peaks."""
    dev = cuda.get_current_device()
    out = {"name": getattr(dev, "name", b"simulator"), "sms": getattr(dev, "MULTIPROCESSOR_COUNT", 1)}
    if isinstance(out["name"], bytes):
        out["name"] = out["name"].decode()
    try:
        clock_khz, bus_bits = dev.MEMORY_CLOCK_RATE, dev.GLOBAL_MEMORY_BUS_WIDTH
        out["bandwidth_peak"] = 2.0 * clock_khz * 1e3 * bus_bits / 8
        cc = dev.compute_capability
        sm_clock = dev.CLOCK_RATE * 1e3
        # FMA lanes per SM per clock (2 flops each): FP64 and FP32, by architecture
        fp64_lanes = {(6, 0): 32, (7, 0): 32, (8, 0): 32, (9, 0): 64, (10, 0): 64}.get(tuple(cc), 2)
        fp32_lanes = {(6, 0): 64, (7, 0): 64, (8, 0): 64, (9, 0): 128, (10, 0): 128}.get(tuple(cc), 128)
        out["fp64_peak"] = 2.0 * fp64_lanes * out["sms"] * sm_clock
        out["fp32_peak"] = 2.0 * fp32_lanes * out["sms"] * sm_clock
    except AttributeError:          # the simulator
        out.update(bandwidth_peak=float("nan"), fp64_peak=float("nan"), fp32_peak=float("nan"))
    n = 1 << 26 if not os.environ.get("NUMBA_ENABLE_CUDASIM") else 1 << 10     # 512 MiB of float64
    a, b = cuda.device_array(n), cuda.device_array(n)
    copy = timed(lambda: (b.copy_to_device(a), cuda.synchronize()), 5)
    out["bandwidth_copy"] = 2 * 8 * n / copy          # read + write
    return out


def torch_gradient(params, ds, dtype):
    """A function that runs the same network's cost and gradient with PyTorch CUDA autograd, or None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    dev = torch.device("cuda")
    x = torch.as_tensor(np.asarray(ds.points), device=dev, dtype=tdt)
    lab = torch.as_tensor(np.asarray(ds.labels), device=dev)
    tgt = torch.as_tensor(ds.targets, device=dev, dtype=tdt)
    cw = torch.tensor(np.asarray(params.cum_weights), device=dev, dtype=tdt, requires_grad=True)
    cb = torch.tensor(np.asarray(params.cum_biases), device=dev, dtype=tdt, requires_grad=True)
    N = x.shape[0]

    def run():
        cw.grad = cb.grad = None
        z = x
        for l in range(cw.shape[0]):
            a = z @ cw[l].T + cb[l]
            z = z + torch.relu(-a) @ torch.linalg.inv(cw[l]).T       # x~ = z - sum_{a_k <= 0} a_k v_k
        r = z - tgt[lab]
        (0.5 * (r * r).sum() / N).backward()
        torch.cuda.synchronize()
    return run


def main():
    args = parse()
    import truncflow as tf
    from numba import cuda
    from truncflow import device
    device.require_cuda()
    L = args.layers
    peaks = device_peaks(cuda)
    print(f"device: {peaks['name']}, {peaks['sms']} SMs; peak memory bandwidth {peaks['bandwidth_peak'] / 1e9:.0f} GB/s "
          f"(attributes), device-to-device copy {peaks['bandwidth_copy'] / 1e9:.0f} GB/s; FP64 peak "
          f"{peaks['fp64_peak'] / 1e12:.1f} TFLOP/s, FP32 {peaks['fp32_peak'] / 1e12:.1f} TFLOP/s (estimates)")
    print(f"host: {platform.processor() or platform.machine()}, {tf.get_threads()} threads for the CPU kernels")
    rows = []
    for M in args.widths:
        for dtype, precision in ((np.float64, "float64"), (np.float32, "float32")):
            n_cpu = int(min(1e6, min(args.sizes)))
            params, ds_cpu = problem(n_cpu, M, L, dtype)
            cpu_s = timed(lambda: tf.gradient(params, ds_cpu, precision=precision), max(1, args.repeat // 2))
            cpu_ns = cpu_s / n_cpu * 1e9
            check_n = int(min(1e5, n_cpu))
            p_chk, ds_chk = problem(check_n, M, L, dtype, seed=1)
            c_gpu, g_gpu = tf.gradient(p_chk, ds_chk.to("cuda"), precision=precision)
            c_cpu, g_cpu = tf.gradient(p_chk, ds_chk, precision=precision)
            check = max(abs(c_gpu - c_cpu) / abs(c_cpu),
                        float(np.max(np.abs(g_gpu.weights - g_cpu.weights)) / np.max(np.abs(g_cpu.weights))))
            for N in map(int, args.sizes):
                need = N * (M * np.dtype(dtype).itemsize + 8)
                free = cuda.current_context().get_memory_info()[0]
                if need > 0.7 * free:
                    print(f"N={N:.0e} M={M} {precision}: skipped ({need / 2**30:.1f} GiB of points, "
                          f"{free / 2**30:.1f} GiB free)")
                    continue
                params, ds = problem(N, M, L, dtype)
                dev = ds.to("cuda")
                started = time.perf_counter()
                tf.gradient(params, dev, precision=precision)
                first = time.perf_counter() - started
                gpu_s = timed(lambda: tf.gradient(params, dev, precision=precision), args.repeat)
                bytes_read = N * (M * np.dtype(dtype).itemsize + 8)
                flops = 8.0 * L * M * M * N
                fp_peak = peaks["fp64_peak" if precision == "float64" else "fp32_peak"]
                row = dict(N=N, M=M, L=L, precision=precision, ms=gpu_s * 1e3, ns_per_point=gpu_s / N * 1e9,
                           first_call_s=first,
                           bandwidth_fraction_peak=bytes_read / gpu_s / peaks["bandwidth_peak"],
                           bandwidth_fraction_copy=bytes_read / gpu_s / peaks["bandwidth_copy"],
                           fp_fraction=flops / gpu_s / fp_peak, cpu_ns_per_point=cpu_ns,
                           cpu_over_gpu=cpu_ns / (gpu_s / N * 1e9), check_rel_diff_vs_cpu=check)
                run = None if args.no_torch else torch_gradient(params, ds, dtype)
                if run is not None:
                    row["torch_over_truncflow"] = timed(run, args.repeat) / gpu_s
                rows.append(row)
                torch_text = f", PyTorch CUDA / truncflow {row['torch_over_truncflow']:.1f}x" \
                    if "torch_over_truncflow" in row else ""
                print(f"N={N:.0e} M={M:2d} L={L} {precision}: {row['ms']:.3f} ms ({row['ns_per_point']:.3f} ns/pt; "
                      f"first call {first:.1f} s), bandwidth {row['bandwidth_fraction_peak']:.0%} of peak "
                      f"({row['bandwidth_fraction_copy']:.0%} of copy), FP {row['fp_fraction']:.1%} of peak, "
                      f"CPU / GPU {row['cpu_over_gpu']:.0f}x{torch_text}; vs CPU at N={check_n}: {check:.1e}",
                      flush=True)
                del dev
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": peaks, "python": sys.version.split()[0], "rows": rows,
                       "simulated": bool(args.simulate)}, f, indent=1, default=str)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
