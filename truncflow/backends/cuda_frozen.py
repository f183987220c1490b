"""The kink integrator's per-point side on a GPU (``backends.frozen`` says what it is).

The points' frozen patterns live in device memory next to the (resident) points; every pass
over all points is a kernel of ``kernels.cuda.frozen`` or the frozen-pattern gradient kernel
(``kernels.cuda.sweep`` with its frozen flag; the generic ``kernels.cuda.gradient`` for wide
networks), and what comes back to the host is the
sums, one byte of flags per point, and the rows of the few points the integrator works on,
which it keeps. Pre-activations at a step's ends stay on the device. The patterns, the
pre-activations and their rates are the CPU's bit for bit (rounded arithmetic); the gradient's
sums are added in the GPU's fixed order, so a flow on a GPU follows the CPU's to round-off, not
bit for bit. Streamed datasets (points in host memory) are refused: the passes need the points
resident.
"""
from __future__ import annotations

import math

import numpy as np

from ..tiles import pad_to_width, padded_width
from .base import BackendLacks
from .frozen import KeptRows

__all__ = ["DeviceFrozenPoints"]

#: Threads per block of the per-point kernels.
THREADS = 128


class DeviceFrozenPoints(KeptRows):
    """The frozen patterns of a resident :class:`~truncflow.backends.cuda.DeviceDataset`'s points
    and the passes over them, on its GPU."""

    def __init__(self, dataset, kern, chunk):
        if not dataset.resident:
            raise BackendLacks("frozen_points", "CUDA", "method='kinks' needs the points resident on the GPU; "
                                                       "these are streamed from host memory (use dataset.to('cpu'))")
        from ..kernels.cuda import forward as fk
        from ..kernels.cuda.frozen import build
        from ..kernels.cuda.launch import geometry
        self.ds = dataset
        self.cuda = cuda = dataset._cuda
        self.n_points = N = dataset.n_points
        cw, cb, et = kern
        L, M = cw.shape[0], cw.shape[1]
        self.L, self.M, self.W, self.row_dtype = L, M, (M + 63) // 64, np.float64
        self.k = build()
        self.blocks = max(1, min(math.ceil(N / THREADS), 4096))
        n_threads = self.blocks * THREADS
        self.z, self.dz = (cuda.device_array((n_threads, M)) for _ in range(2))
        self.flags = cuda.device_array(N, dtype=np.uint8)
        self._pat = cuda.device_array((N, L, self.W), dtype=np.uint64)
        # the patterns at the start: the forward kernel on the padded tile layout (A^(l) from edges_t)
        Mp = padded_width(M)
        padded = (pad_to_width(cw, Mp, (1, 2)), pad_to_width(cb, Mp, (1,)),
                  pad_to_width(np.swapaxes(et, 1, 2), Mp, (1, 2)))
        G, T = geometry(N, 0)
        z = cuda.to_device(np.zeros((G, L + 1, Mp, T)))
        act = cuda.device_array((G, L, Mp, T))
        fk.build("float64")[3][G, T](dataset.points, *(cuda.to_device(np.ascontiguousarray(a)) for a in padded), z,
                                     act, np.float64(0.0), self._pat)
        self._keep_rows()

    # ------------------------------------------------------------ helpers
    def _up(self, *arrays):
        return [self.cuda.to_device(np.ascontiguousarray(a)) for a in arrays]

    def _flush(self):
        changes = self._take_changes()
        if changes is not None:
            idx, pats = changes
            d_idx, d_rows = self._up(idx, pats.reshape(idx.size, -1))
            self.k["put"][math.ceil(idx.size / THREADS), THREADS](self._pat.reshape(self.n_points, -1), d_idx,
                                                                   d_rows)

    def _flagged(self):
        return np.flatnonzero(self.flags.copy_to_host())

    # ------------------------------------------------------------ what the kept rows fetch
    def _fetch_patterns(self, idx):
        out = self.cuda.device_array((idx.size, self.L * self.W), dtype=np.uint64)
        self.k["take"][math.ceil(idx.size / THREADS), THREADS](self._pat.reshape(self.n_points, -1),
                                                                *self._up(idx), out)
        return out.copy_to_host().reshape(-1, self.L, self.W)

    def _fetch_rows(self, idx):
        return self.ds.rows(idx)

    # ------------------------------------------------------------ patterns
    def whole_pattern(self):
        self._flush()
        return self._pat.copy_to_host()

    def restore_pattern(self, pat):
        self._forget()
        self._pat.copy_to_device(np.ascontiguousarray(pat, dtype=np.uint64))

    # ------------------------------------------------- passes over all points
    def frozen_gradient(self, tiles, output, chunk):
        self._flush()
        from ..kernels.cuda.launch import zero
        zero(self.flags)
        s = self.ds._gradient_pass(*tiles, output, 1, False, False, frozen=(self._pat, self.flags))
        sums = tuple(s[name][None] for name in ("sq", "g_w", "g_b", "g_ow", "g_ob"))
        return sums, self._flagged()

    def ends(self, kern, tangent):
        self._flush()
        N, L, M = self.n_points, self.L, self.M
        a, da = (self.cuda.device_array((N, L, M)) for _ in range(2))
        self.k["ends"][self.blocks, THREADS](self.ds.points, self._pat, *self._up(*kern, *tangent), self.z, self.dz,
                                             a, da)
        return a, da

    def dips(self, ends0, ends1, h, margin):
        self._flush()
        self.k["dips"][self.blocks, THREADS](self._pat, *ends0, *ends1, float(h), float(margin), self.flags)
        return self._flagged()

    def flips(self, kern, tangent):
        a, da = self.ends(kern, tangent)
        self.k["flips"][self.blocks, THREADS](self._pat, a, da, self.flags)
        return self._flagged()

    def near_planes(self, kern, tangent, planes, extra, rel):
        a, _ = self.ends(kern, tangent)
        top = self.cuda.to_device(np.zeros(1))
        self.k["absmax"][self.blocks, THREADS](a, top)
        zero = rel * max(1.0, float(top.copy_to_host()[0]))
        order = list(planes)
        near = {}
        for s in range(0, len(order), 64):          # 64 hyperplanes a pass (one bit each)
            part = order[s:s + 64]
            words = self.cuda.device_array(self.n_points, dtype=np.uint64)
            self.k["near"][self.blocks, THREADS](a, *self._up(np.array(part, np.int64).reshape(-1, 2)), zero, words)
            host = words.copy_to_host()
            for p, plane in enumerate(part):
                near[plane] = np.flatnonzero((host >> np.uint64(p)) & np.uint64(1))
        want = np.union1d(np.asarray(extra, np.int64), np.concatenate([np.zeros(0, np.int64), *near.values()]))
        rows = np.zeros((want.size, self.L * self.M))
        if want.size:
            out = self.cuda.device_array((want.size, self.L * self.M))
            self.k["take"][math.ceil(want.size / THREADS), THREADS](a.reshape(self.n_points, -1), *self._up(want), out)
            rows = out.copy_to_host()
        return zero, near, dict(zip(want.tolist(), rows.reshape(-1, self.L, self.M)))
