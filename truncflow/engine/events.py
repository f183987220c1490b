"""``simulate(..., method="events")``: the aligned model solved exactly, event to event.

Applies to aligned parameters (:meth:`Params.aligned`), the input cost, ``train``
"all" or "biases", and one layer or clusters separated by the layers (MODEL.md
section 9; checked on the data first, and along the run). Each layer and
coordinate is a scalar problem over the sorted coordinates of the points the layer
sees (``kernels.events``): sorting costs O(N log N), the events O(N) in all.
Records are observed with the ordinary kernels, like any run.

Along the run the hypothesis is checked three ways: exactly for the points of the
clusters a layer has not reached yet (their lowest coordinate is a wall the
threshold must not reach), exactly at every record for every point (the
observations), and between records for the images of clusters already processed
by a sufficient bound (their bounding box); when only that bound fails, a warning
says the hypothesis could not be proved between records.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from ..aligned import ALIGNED_TRAIN, layer_point_sets, separation_report
from ..compute import gradient
from ..params import Params
from .control import stop_reason
from .methods import Status
from .record import Recorder
from ..kernels.events import sort_problem_rows, threshold_events_kernel

__all__ = ["run_events", "SeparationWarning"]


class SeparationWarning(UserWarning):
    """The cluster-separated hypothesis could be verified at the records only."""


def check_events_problem(problem):
    """Raise ValueError unless the exact solver applies to this FlowProblem."""
    params, dataset = problem.params, problem.dataset
    if problem.wrt != "aligned":
        raise ValueError(f"method='events' solves the aligned flow: pass wrt='aligned' (got wrt={problem.wrt!r})")
    if not params.is_aligned:
        raise ValueError("method='events' solves the aligned model: build params with Params.aligned")
    if problem.kind != "input":
        raise ValueError(f"method='events' needs the input cost (kind='input'), got kind={problem.kind!r}")
    if problem.train not in ALIGNED_TRAIN:
        raise ValueError(f"method='events' needs train='all' or 'biases', got train={problem.train!r}")
    if params.n_layers > 1:
        report = separation_report(params, dataset)
        if not report.holds:
            raise ValueError(f"method='events' with {params.n_layers} layers needs the cluster-separated "
                             f"case of MODEL.md section 9, which fails: {report.reason}")


class _Problems:
    """The scalar threshold problems of every layer and coordinate, in the kernel's flat layout."""

    def __init__(self, params: Params, dataset, train: str, frozen_layers):
        L, M, Q = params.n_layers, params.width, dataset.n_clusters
        self.L, self.M, self.N = L, M, dataset.n_points
        self.biases_only = train == "biases"
        lam, b = params.scales, params.cum_biases
        self.coef = (lam * lam if self.biases_only else lam * lam + b * b).ravel()
        self.t0 = params.thresholds.ravel().copy()
        self.frozen = np.zeros((L, M), dtype=bool)
        for layer in frozen_layers:
            self.frozen[layer - 1] = True
        self.frozen = self.frozen.ravel()
        self.sets = layer_point_sets(params, dataset)
        self.frames = params.frames
        self.lam0, self.b0 = lam, b
        eta = np.einsum("lkj,qj->lkq", params.frames, dataset.targets)         # (L, M, Q)
        self.eta = np.ascontiguousarray(eta.reshape(L * M, Q))
        self.walls = np.full((L, M), np.inf)
        self.wall_cluster = np.full((L, M), -1)
        w_parts, c_parts, point_parts, sizes = [], [], [], []
        for l, idx in enumerate(self.sets):
            w_rows = params.frames[l] @ np.asarray(dataset.points[idx], dtype=np.float64).T   # (M, n_l)
            n = len(idx)
            w, cls, col = np.empty(M * n), np.empty(M * n, dtype=np.int64), np.empty(M * n, dtype=np.int64)
            sort_problem_rows(np.ascontiguousarray(w_rows), np.ascontiguousarray(dataset.labels[idx]), w, cls, col)
            w_parts.append(w)
            c_parts.append(cls)
            point_parts.append(idx[col])
            sizes += [n] * M
            for c in range(l + 1, L):            # later clusters: the layer sees their original points
                own = dataset.labels == c
                if own.any():
                    lowest = (np.asarray(dataset.points[own], dtype=np.float64) @ params.frames[l].T).min(axis=0)
                    self.wall_cluster[l] = np.where(lowest < self.walls[l], c, self.wall_cluster[l])
                    self.walls[l] = np.minimum(self.walls[l], lowest)
        self.walls = self.walls.ravel()
        self.w = np.concatenate(w_parts)
        self.cls = np.concatenate(c_parts)
        self.point = np.concatenate(point_parts)       # original index of each flat entry
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def box(self, l):
        """(lo, hi) (M,) of the coordinates of layer l's points in frame l (from the sorted
        rows: first and last), or None without points. In the separated case these are
        cluster l's points, and the box bounds their images after layer l."""
        first, last = self.offsets[l * self.M:(l + 1) * self.M], self.offsets[l * self.M + 1:(l + 1) * self.M + 1] - 1
        if np.any(last < first):
            return None
        return self.w[first], self.w[last]

    def solve(self, record_times):
        trunc = np.empty(self.w.size)
        values, events, wall_time = threshold_events_kernel(
            self.w, self.cls, self.eta, self.offsets, self.t0, self.coef, self.biases_only, self.frozen,
            self.walls, self.N, np.ascontiguousarray(record_times, dtype=np.float64), trunc)
        L, M = self.L, self.M
        return values.reshape(L, M, -1), events.sum(axis=0), wall_time.reshape(L, M), trunc

    def params_at(self, thresholds, out_weight=None, out_bias=None) -> Params:
        """Aligned params with the given (L, M) thresholds: lambda fixed (biases flow), or
        ``lambda = r / sqrt(1 + t^2)``, ``b = -lambda t`` (both flow, r conserved)."""
        t = thresholds
        if self.biases_only:
            lam = self.lam0
        else:
            r2 = self.coef.reshape(self.L, self.M)
            lam = np.sqrt(r2 / (1.0 + t * t))
        frozen = self.frozen.reshape(self.L, self.M)
        lam = np.where(frozen, self.lam0, lam)
        b = np.where(frozen, self.b0, -lam * t)
        return Params.aligned(self.frames, lam, b, out_weight, out_bias)

    def truncation_times(self, trunc) -> np.ndarray:
        """(N, L, M) first truncation times from the kernel's flat per-problem array."""
        out = np.full((self.N, self.L, self.M), np.inf)
        for pr in range(self.L * self.M):
            l, k = divmod(pr, self.M)
            a, b = self.offsets[pr], self.offsets[pr + 1]
            out[self.point[a:b], l, k] = trunc[a:b]
        return out

    def box_separated(self, values) -> bool:
        """Sufficient condition that no layer truncates the images of an earlier cluster
        at any time: the images of cluster c after layer c lie in the box
        ``[max(lo, min_s t), max(hi, max_s t)]`` of frame c (thresholds move monotonically,
        so their extremes over the run are at the records' ends), and layer l's
        coordinates over that box stay above layer l's highest threshold."""
        t_min, t_max = values.min(axis=2), values.max(axis=2)       # (L, M)
        for c in range(self.L):
            box = self.box(c)
            if box is None:
                continue
            lo, hi = np.maximum(box[0], t_min[c]), np.maximum(box[1], t_max[c])
            for l in range(c + 1, self.L):
                coef = self.frames[l] @ self.frames[c].T                 # (M, M): w^(l) = coef v
                lowest = np.minimum(coef * lo, coef * hi).sum(axis=1)    # min over the box, per k
                if np.any(lowest <= t_max[l]):
                    return False
        return True


def run_events(problem, t_end, schedule, recorder: Recorder, rules, callback,
               record_truncation_times: bool, guard=None):
    """Solve ``problem`` (a FlowProblem accepted by :func:`check_events_problem`) exactly."""
    started = time.monotonic()
    check_events_problem(problem)
    params, dataset = problem.params, problem.dataset
    problems = _Problems(params, dataset, problem.train, problem.frozen_layers)
    schedule = np.unique(np.append(np.asarray(schedule, dtype=np.float64), t_end))   # t_end is recorded
    wall_detail, first_wall = "", np.inf
    if np.isfinite(problems.walls).any():   # a first pass finds where the hypothesis would break
        wall_time = problems.solve(schedule[-1:])[2]
        first_wall = float(wall_time.min())
        if np.isfinite(first_wall):
            l, k = np.unravel_index(int(np.argmin(wall_time)), wall_time.shape)
            wall_detail = (f"at t = {first_wall:.10g} the threshold of layer {l + 1}, coordinate {k} reaches a "
                           f"point of cluster {problems.wall_cluster[l, k]}: the cluster-separated hypothesis "
                           f"breaks there, so the exact solution stops")
            schedule = np.append(schedule[schedule < first_wall], first_wall)
    values, events, _, trunc = problems.solve(schedule)
    counters = {"accepted": 0, "rejected": 0, "evaluations": 0}
    status, detail = None, ""
    for i, s in enumerate(schedule):
        p = problems.params_at(values[:, :, i], params.out_weight, params.out_bias)
        c, g = gradient(p, dataset, "input", "aligned")
        gn = float(np.linalg.norm(problem.gradient_vector(g)))
        counters["accepted"] = int(events[i])
        counters["evaluations"] = i + 1
        recorder.record(float(s), p, gn, counters)
        if callback is not None:
            callback(float(s), c)
        stop = stop_reason(c, gn, 0, started, rules)
        if stop is not None and i < len(schedule) - 1:
            status = stop
            break
        if guard is not None and guard.received is not None and i < len(schedule) - 1:
            status, detail = Status.INTERRUPTED, f"signal {guard.received}"   # a signal: keep the records made
            break
    if wall_detail and status is None:
        status, detail = Status.FAILED, wall_detail
    if problems.L > 1:
        crossed = _first_crossing_record(recorder)
        if crossed is not None and wall_detail and crossed[0] == recorder.n_records - 1:
            crossed = None       # the record at the wall itself: the wall's message is the precise one
        if crossed is not None:  # a break before the wall (or without one)
            i, l, c = crossed
            status = Status.FAILED
            detail = (f"by the record at t = {recorder.times[i]:.10g} layer {l + 1} truncates points of cluster {c}: "
                      f"the cluster-separated hypothesis broke between the records at t = "
                      f"{recorder.times[i - 1]:.10g} and {recorder.times[i]:.10g}; later records are not exact")
        elif not problems.box_separated(values[:, :, :recorder.n_records]):
            warnings.warn("method='events': the cluster-separated hypothesis holds at every record, but a bound "
                          "could not prove it between records (record more often to check more closely)",
                          SeparationWarning, stacklevel=3)
    result_status = status or Status.T_END
    if record_truncation_times:
        times = problems.truncation_times(trunc)
        times[times > recorder.last_time] = np.inf
        recorder.arrays["truncation_times"] = times
    return recorder.result(result_status, detail)


def _first_crossing_record(recorder):
    """(record, layer, cluster) of the first record where a layer truncates a cluster not its own."""
    frac = np.asarray(recorder.column("coordinate_truncated_fraction"))   # (T, L, Q, M)
    T, L, Q, _ = frac.shape
    off = np.ones((L, Q), dtype=bool)
    off[np.arange(L), np.arange(L)] = False
    bad = np.nan_to_num(frac).sum(axis=3)[:, off.nonzero()[0], off.nonzero()[1]] > 0   # (T, n_off)
    if not bad.any():
        return None
    i, j = np.argwhere(bad)[0]
    return int(i), int(off.nonzero()[0][j]), int(off.nonzero()[1][j])
