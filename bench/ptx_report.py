"""Static counts of the CUDA gradient kernels' code for sm_90, without a GPU (issue 26, item 6).

    CUDA_HOME=/usr/local/cuda python bench/ptx_report.py [--M 8 --L 3 --dtype float64]

Compiles the generic gradient kernel (``kernels.cuda.gradient``: run-time shapes, scratch in
global memory, owner threads) and the kernel compiled for the shape (``kernels.cuda.sweep``) to
PTX for sm_90 with the argument types the device dataset passes them, assembles both with
``ptxas -v`` and prints, per kernel:
  - registers, spill stores/loads, stack frame and static shared memory (ptxas);
  - PTX instructions in all, and the global loads among them;
  - the forward products: PTX instructions from the first to the last rounded product
    (``mul.rn``), per rounded product, and the global loads in that stretch;
  - every innermost loop: its instructions, its loads (global, shared, generic) and its
    floating-point operations (the sums over points are the loops over a tile's points).
Static counts, not timings: what each point costs in instructions, read from the code.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

import numpy as np


def compile_ptx(kernel, args) -> str:
    from numba import cuda, typeof
    code, _ = cuda.compile_ptx(kernel.py_func, tuple(typeof(a) for a in args), cc=(9, 0))
    return code


def ptxas(code: str) -> dict:
    exe = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        open(path, "w").write(code)
        out = subprocess.run([exe, "-v", "-arch=sm_90", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    grab = lambda pattern: int(re.search(pattern, out).group(1))
    return dict(registers=grab(r"Used (\d+) registers"), spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"), stack=grab(r"(\d+) bytes stack frame"),
                shared=grab(r"(\d+) bytes smem"))


def instructions(lines):
    return [l.strip() for l in lines
            if l.startswith("\t") and l.strip() and not l.strip().startswith(("//", ".", "{", "}"))]


def innermost_loops(lines):
    """(label, body lines) of each loop (a backward branch) that contains no other loop."""
    labels = {m.group(1): n for n, l in enumerate(lines) if (m := re.match(r"^(\$L__BB\d+_\d+):", l))}
    loops = []
    for n, l in enumerate(lines):
        m = re.search(r"bra(?:\.uni)?\s+(\$L__BB\d+_\d+);", l)
        if m and m.group(1) in labels and labels[m.group(1)] < n:
            loops.append((labels[m.group(1)], n, m.group(1)))
    inner = [(a, b, name) for a, b, name in loops if not any(a <= c and d <= b and (c, d) != (a, b)
                                                             for c, d, _ in loops)]
    return [(name, lines[a:b + 1]) for a, b, name in inner]


def report(name: str, code: str, dtype: str) -> dict:
    lines = code.splitlines()
    ins = instructions(lines)
    op = "mul.rn.f64" if dtype == "float64" else "mul.rn.f32"
    at = [n for n, l in enumerate(lines) if op in l]
    forward = instructions(lines[at[0]:at[-1] + 1]) if at else []
    products = sum(op in i for i in forward)
    out = dict(kernel=name, **ptxas(code), ptx_instructions=len(ins),
               global_loads=sum(i.startswith("ld.global") for i in ins),
               forward_instructions=len(forward), forward_products=products,
               forward_per_product=len(forward) / max(products, 1),
               forward_global_loads=sum(i.startswith("ld.global") for i in forward), loops=[])
    for label, body in innermost_loops(lines):
        b = instructions(body)
        kinds = collections.Counter(i.split()[0].split(".")[0] for i in b)
        out["loops"].append(dict(label=label, instructions=len(b),
                                 global_loads=sum(i.startswith("ld.global") for i in b),
                                 shared_loads=sum(i.startswith("ld.shared") for i in b),
                                 generic_loads=sum(re.match(r"ld\.[fusb]\d", i) is not None for i in b),
                                 float_ops=sum(re.match(r"(add|sub|mul|fma|neg)\.(rn\.)?f(32|64)", i) is not None
                                               for i in b),
                                 integer_ops=sum(re.match(r"(add|sub|mul|shl|shr|and|or|selp)\.(s|u|b|lo)", i)
                                                 is not None for i in b),
                                 top=", ".join(f"{k} {v}" for k, v in kinds.most_common(6))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--L", type=int, default=3)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = ap.parse_args()
    from numba.cuda import dispatcher

    class Sm90:
        compute_capability = (9, 0)
    dispatcher.get_current_device = lambda: Sm90()          # device functions compile for sm_90 without a GPU
    from truncflow.kernels.cuda import gradient, sweep
    M, L, f = args.M, args.L, np.dtype(args.dtype)
    G, T, Mp = 4, 128, M + (-M) % 4
    generic = compile_ptx(gradient.build(args.dtype), (
        np.zeros((100, M)), np.zeros(100, np.int64), 100, 0, 8, np.zeros((1, Mp), f), np.zeros((L, Mp, Mp), f),
        np.zeros((L, Mp), f), np.zeros((L, Mp, Mp), f), np.zeros((L, Mp, Mp), f), np.zeros((0, Mp), f), np.zeros(0, f),
        False, False, False, False, M, np.zeros(9, np.int64), np.zeros((G, L + 1, Mp, T), f),
        np.zeros((G, L, Mp, T), f), np.zeros((G, 2, Mp, T), f), np.zeros((G, Mp, T), f), np.zeros((G, T)), f.type(0),
        np.zeros((G, 1, 50)), np.zeros((100, L, 1), np.uint64), np.zeros(100, np.uint8)))
    shape = sweep.plan(args.dtype, M, L, 0, False, 1, False)
    special = compile_ptx(sweep.build(shape), (
        np.zeros((100, M)), np.zeros(100, np.int64), 100, 0, 8, np.zeros(500, f), np.zeros((4, 1, 300)),
        np.zeros((100, L, 1), np.uint64), np.zeros(100, np.uint8)))
    print(f"M = {M}, L = {L}, {args.dtype} sweep, input cost, totals (S = 1); sm_90; tile of the shape's kernel: "
          f"T = {shape.T}")
    for rep in (report("generic (kernels.cuda.gradient)", generic, args.dtype),
                report("for the shape (kernels.cuda.sweep)", special, args.dtype)):
        print(f"\n{rep['kernel']}: {rep['registers']} registers, {rep['spill_stores']}/{rep['spill_loads']} bytes "
              f"spilled (stores/loads), {rep['stack']} bytes stack, {rep['shared']} bytes shared; "
              f"{rep['ptx_instructions']} PTX instructions, {rep['global_loads']} global loads")
        print(f"  forward products: {rep['forward_instructions']} instructions for {rep['forward_products']} rounded "
              f"products ({rep['forward_per_product']:.1f} a product), {rep['forward_global_loads']} global loads")
        print("  innermost loops: instructions | loads global/shared/generic | float ops | integer ops | most common")
        for loop in rep["loops"]:
            print(f"    {loop['label']:>12}: {loop['instructions']:4d} | {loop['global_loads']:3d} "
                  f"{loop['shared_loads']:3d} {loop['generic_loads']:3d} | {loop['float_ops']:3d} | "
                  f"{loop['integer_ops']:3d} | {loop['top']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
