"""Where one gradient's time goes: the stages of one tile timed alone (one thread).

    python bench/profile_tile.py          # M = 8, L = 3; prints ns per point per stage

Each stage of ``truncflow.kernels.gradient`` runs 20,000 times on the same tile of
``TILE`` points (it stays in cache, as in the streaming kernel); the matrix-vector
products and the gradient sums are also timed on their own, so the remainder of each
sweep is its element-wise passes (truncation masks, residuals and cost).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from truncflow.compute import tile_arrays  # noqa: E402
from truncflow.kernels import gradient as kern  # noqa: E402


@njit
def _load(n, points, labels, z, lab):
    for _ in range(n):
        kern._load_tile(points, labels, 0, kern.TILE, z[0], lab)


@njit
def _forward(n, cw, cb, inv, z, act, cn):
    for _ in range(n):
        kern._forward_tile(cw, cb, inv, z, act, cn, kern.TILE)


@njit
def _reverse(n, back, targets, ow, ob, z, act, lab, u, u_next, um, r, wt, sq, gw, gb, gow, gob):
    for _ in range(n):
        kern._tile_gradient(back, targets, ow, ob, False, 1, z, act, lab, kern.TILE,
                            u, u_next, um, r, wt, sq, gw, gb, gow, gob)


@njit
def _product(n, w, x, y, bias):
    for _ in range(n):
        kern._matvec(w, x, y, y, bias, kern._FROM_BIAS, kern.TILE)


@njit
def _back_product(n, w, u, a, y):
    for _ in range(n):
        kern._back_product(w, u, a, y, kern.TILE)


@njit
def _sums(n, u, a, z, xt, gw, gb):
    for _ in range(n):
        kern._layer_sums(u, a, z, xt, kern.TILE, gw, gb)


def _ns_per_point(fn, *args, n=20000, repeats=5):
    fn(2, *args)
    best = min(_timed(fn, n, args) for _ in range(repeats))
    return best / n / kern.TILE * 1e9


def _timed(fn, n, args):
    t0 = time.perf_counter()
    fn(n, *args)
    return time.perf_counter() - t0


def stage_times(m: int = 8, layers: int = 3) -> dict[str, float]:
    """ns per point of each stage of one tile, one thread: {stage name: time}."""
    from report import problem
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        params, data = problem(kern.TILE, m, layers)
        targets, cw, cb, inv, back, ow, ob = tile_arrays(params, data.targets, "input")
        mp = cw.shape[1]
        z, act, cn, u, u_next, um, r, wt, lab = kern._tile_buffers(layers, mp, 0)
        points, labels = np.array(data.points), np.array(data.labels)
        sq, gw, gb = np.zeros(1), np.zeros((1, layers, mp, mp)), np.zeros((1, layers, mp))
        gow, gob = np.zeros((1, 0, mp)), np.zeros((1, 0))
        load = _ns_per_point(_load, points, labels, z, lab)
        forward = _ns_per_point(_forward, cw, cb, inv, z, act, cn)
        reverse = _ns_per_point(_reverse, back, targets, ow, ob, z, act, lab, u, u_next, um, r, wt,
                                sq, gw, gb, gow, gob)
        back_product = _ns_per_point(_back_product, back[0], u, act[0], u_next)
        product = _ns_per_point(_product, cw[0], z[0], act[0], cb[0])
        sums = _ns_per_point(_sums, u, act[0], z[0], z[1], gw[0, 0], gb[0, 0])
    finally:
        numba.set_num_threads(old)
    return {
        "load the tile (points to feature-major)": load,
        f"forward: {2 * layers} matrix-vector products": 2 * layers * product,
        "forward: truncation masks": forward - 2 * layers * product,
        f"reverse: {layers} matrix-vector products (one on the residuals, {layers - 1} on free parts)":
            product + (layers - 1) * back_product,
        f"reverse: {layers} gradient sums": layers * sums,
        "reverse: residuals and cost": reverse - product - (layers - 1) * back_product - layers * sums,
    }


if __name__ == "__main__":
    for name, t in stage_times().items():
        print(f"{t:6.1f} ns/point  {name}")
