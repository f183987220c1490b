"""Peer for the work-precision study (issue 11, item 5): mariogeiger/gradientflow on truncflow's problems.

gradientflow (https://github.com/mariogeiger/gradientflow, version 0.0.1, commit 16749d5) integrates
d theta/dt = -grad C(theta) with adaptive *explicit Euler* steps: a trial step of length dt is
accepted when the gradient (and, for ``gradientflow_backprop``, the network outputs) changed little
over it, ``dgrad = |g1 - g2|^2 / (|g1| |g2|) < max_dgrad`` and ``dout = max|out1 - out2| < max_dout``;
otherwise dt /= 10 and the step is retried; after an accepted step with both ratios < 1/2, dt *= 1.1.
Here, on the problems of ``bench/work_precision.py`` (same initial parameters, same data, same
cost, ``wrt="layers"``, every parameter trained), three ways of calling it:

- ``ode``: ``gradientflow.flow_ode(theta0, grad_fn, max_dgrad=K)`` on the flat parameter vector, with
  ``grad_fn = -grad`` of ``tests/torch_reference.py``'s ``torch_cost`` (truncflow's cost with
  autograd). flow_ode has no way to stop at a given time, so its last step overshoots t_end; the
  state at t_end is the linear interpolation between its last two states, which for explicit Euler
  *is* the Euler step of length t_end - t_k from the last state before t_end (exact, not an
  approximation of the method). Knob: max_dgrad.
- ``backprop``: ``gradientflow.gradientflow_backprop(net, x, y, loss, tau=0, max_dgrad=K,
  max_dout=1, checkpoints=[t_end])``, the research entry point, on a ``torch.nn.Module`` whose
  forward is torch_cost's layer-form network (per point: the read-out x~^(L) for the input cost,
  the output layer for the output cost) and ``loss = |out - target|^2 / 2`` per point (gradientflow
  averages over the points, so the total is truncflow's cost). ``tau=0`` is plain gradient flow (no
  momentum); ``max_dout=1`` is the library's default; ``checkpoints=[t_end]`` makes the library
  shorten its last step to land exactly on t_end (no interpolation). Knob: max_dgrad.
- ``dout``: the same call with ``max_dgrad=inf`` (the gradient test off) and the knob max_dout:
  the step is controlled only by the change of the outputs, which is continuous across kinks.

Before any flow, the torch cost and gradient at the initial parameters (both torch_cost and the
Module) are compared with ``truncflow.cost`` / ``truncflow.gradient(..., wrt="layers")``: the run
aborts unless they agree to 1e-12 (relative to the largest gradient entry, at least 1).

Recorded per run: gradient evaluations (calls of the gradient function / of the loss: one forward
and backward pass over all N points each; gradientflow_backprop also makes one forward pass without
gradient at the start, not counted), wall time, the time t reached, and the global error at t_end:
max-abs difference of the final parameters, flat as ``final(r)`` in bench/work_precision.py
(weights (L, M, M), biases (L, M), out_weight, out_bias of the last record), against the
reference ``reference_final`` of ``bench/work_precision/work_precision_<case>.json``. When that
file has no ``reference_final`` (files written before it was added), the reference is recomputed
exactly as work_precision.py computes it (method="kinks" at the stored reference rtol, atol =
rtol/100, ``KinkOptions.bulk`` as stored), its evaluation count is compared with the stored one, and it
is cached in this script's output file (``reference_source`` says which).

Caps per run: ``--max-time`` seconds (a SIGALRM timer: status ``max_time``), and a stall detector:
status ``stalled`` when t advanced less than 1e-9 t_end over the last ``--stall-evals`` gradient
evaluations, or over 20 x that many trial steps. (gradientflow stalls at a kink whose gradient jump
exceeds the dgrad test, e.g. a point held on a hyperplane: every step across it is rejected, dt
shrinks until t + dt == t in floating point, and there flow() takes the unchanged t for the same
state, reuses the cached gradient and accepts the step: the parameters creep along the old gradient
with t frozen and no evaluation; when dt grows past half an ulp of t the next real test rejects
again. Without the detector the run spins there until --max-time.) Stalled and timed-out runs have
error NaN and list the t they reached.

``--verify``: the setup check on the smallest case (small_input_2_N16): errors against a truncflow
reference (kinks, rtol 1e-12) at a horizon t_v before the first activation-pattern change, where
the flow is smooth and gradientflow must converge (at first order in dt, i.e. error ~ max_dgrad^1/2
and ~ max_dout); it fails loudly if the error does not fall as the knob tightens.

Install (a separate venv; nothing of this goes into truncflow's pyproject or CI):

    git --git-dir=<fetched mirror of mariogeiger/gradientflow> archive HEAD | tar -x -C /tmp/gradientflow-src
    python3 -m venv /work/venv-gf
    /work/venv-gf/bin/pip install -e /work/main torch==2.13.0 matplotlib     # pinned CPU torch
    /work/venv-gf/bin/pip install /tmp/gradientflow-src

Runs (one after the other), as behind bench/work_precision/gradientflow_<case>.json:

    NUMBA_NUM_THREADS=1 /work/venv-gf/bin/python bench/peer_gradientflow.py --verify --threads 1
    NUMBA_NUM_THREADS=1 /work/venv-gf/bin/python bench/peer_gradientflow.py \\
        small_input_0_N32 small_output_1_N32 small_input_2_N16 small_output_3_N64 --threads 1 --max-time 60
    /work/venv-gf/bin/python bench/peer_gradientflow.py clusters_N20000 --threads 1 --max-time 150
    # where work_precision_<case>.json has no reference_final yet: --reference later, then --rescore

(--threads is set again before every run: truncflow's Numba kernels, called for the gradient check
and the reference, share PyTorch's OpenMP runtime and reset its thread count to NUMBA_NUM_THREADS.
Two torch threads on the shared 2-core machine under load 4-6 cost 270-375 ms per evaluation at
N = 2e4, one thread 13 ms, two unloaded 3.3 ms: the clusters table was run with --threads 1.)

Options: --dgrads 1,1e-1,... (knobs of ode and backprop) --douts 1e-1,... (knob of dout)
--methods ode,backprop,dout --max-time S --stall-evals N --threads T --dir bench/work_precision
--reference recompute|later (no reference_final stored: recompute it first, or run the flows and
leave the errors NaN) --append (add rows to the case's file, e.g. capped runs again with a longer
--max-time; every row records its own max_time and load average) --rescore (no runs: errors of an existing DIR/gradientflow_<case>.json against
the reference now stored; every row keeps its final parameters for this).
Writes DIR/gradientflow_<case>.json and prints a markdown table per case.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import gradientflow                                   # noqa: E402
import gradientflow._backprop as _gf_backprop         # noqa: E402
import truncflow as tf                                # noqa: E402
import truncflow.engine.kinks as kinks                # noqa: E402
from torch_reference import torch_cost                # noqa: E402  (sets float64 as torch's default)
from work_precision import clusters_problem, final, small_problem   # noqa: E402

torch.set_default_dtype(torch.float64)

SMALL_DGRADS = [1.0, 1e-1, 1e-2, 1e-3, 1e-4]
CLUSTER_DGRADS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
DOUTS = [1e-1, 1e-2, 1e-3, 1e-4]


# ---------------------------------------------------------------- problems

def problem(case):
    """(params, dataset, simulate keywords) exactly as bench/work_precision.py builds the case."""
    m = re.fullmatch(r"small_(input|output)_(\d+)_N(\d+)", case)
    if m:
        kind, seed, n = m.group(1), int(m.group(2)), int(m.group(3))
        p, ds = small_problem(seed, N=n, kind=kind)
        return p, ds, dict(kind=kind, wrt="layers")
    m = re.fullmatch(r"clusters_N(\d+)", case)
    if m:
        p, ds = clusters_problem(N=int(m.group(1)))
        return p, ds, dict(wrt="layers")
    raise SystemExit(f"unknown case {case!r}: small_<kind>_<seed>_N<N> or clusters_N<N>")


def flat_params(p):
    return np.concatenate([p.weights.ravel(), p.biases.ravel()]
                          + ([p.out_weight.ravel(), p.out_bias.ravel()] if p.out_weight is not None else []))


def reference(case, params, ds, sim_kw, out_file, how="recompute"):
    """(reference_final or None, t_end, stored json, source); how: recompute / later (None if not stored)."""
    stored = json.loads((Path(out_file).parent / f"work_precision_{case}.json").read_text())
    t_end = float(stored["t_end"])
    if "reference_final" in stored:
        return np.array(stored["reference_final"]), t_end, stored, "work_precision json"
    if Path(out_file).exists():
        mine = json.loads(Path(out_file).read_text())
        if mine.get("reference_final") is not None and mine.get("t_end") == t_end:
            return np.array(mine["reference_final"]), t_end, stored, mine["reference_source"]
    if how == "later":
        print(f"{case}: no reference_final stored; errors left NaN (--rescore once it is)", flush=True)
        return None, t_end, stored, None
    ref = stored["reference"]
    rtol = float(stored["reference_rtol"])
    print(f"{case}: no reference_final stored; recomputing the reference (kinks rtol {rtol:g}, "
          f"bulk {ref['bulk']}), stored run: {ref['evaluations']} evals, {ref['wall']:.0f} s", flush=True)
    t0 = time.perf_counter()
    with kinks.using(kinks.KinkOptions(bulk=bool(ref["bulk"]))):
        r = tf.simulate(params, ds, t_end, record_times=[t_end], method="kinks", rtol=rtol, atol=rtol * 1e-2,
                        **sim_kw)
    wall = time.perf_counter() - t0
    evals = int(r.evaluations[-1])
    if r.status != "t_end":
        raise SystemExit(f"recomputed reference did not reach t_end: {r.status}")
    same = evals == ref["evaluations"]
    print(f"  recomputed in {wall:.1f} s: {evals} evals, "
          + ("identical count to the stored run" if same else f"WARNING: the stored run had {ref['evaluations']}"),
          flush=True)
    return final(r), t_end, stored, (f"recomputed by peer_gradientflow.py (kinks rtol {rtol:g}, bulk {ref['bulk']}; "
                                     f"{evals} evals, " + ("= stored count)" if same else
                                                           f"stored run {ref['evaluations']})"))


# ---------------------------------------------------------------- torch side

class Net(torch.nn.Module):
    """torch_cost's layer-form network as a Module: per-point read-out (input cost) or output."""

    def __init__(self, p, kind):
        super().__init__()
        t = lambda a: torch.nn.Parameter(torch.tensor(np.array(a, dtype=np.float64)))
        self.kind = kind
        self.W, self.b = t(p.weights), t(p.biases)
        if p.out_weight is not None:
            self.ow, self.ob = t(p.out_weight), t(p.out_bias)

    def forward(self, x):
        W, b = self.W, self.b
        h = x
        for l in range(W.shape[0]):
            h = torch.relu(h @ W[l].T + b[l])
        if self.kind == "output":
            return h @ self.ow.T + self.ob
        M = W.shape[1]
        cw, cb = torch.eye(M, dtype=W.dtype), torch.zeros(M, dtype=W.dtype)
        for l in range(W.shape[0]):
            cw, cb = W[l] @ cw, W[l] @ cb + b[l]
        return torch.linalg.solve(cw, (h - cb).T).T


def half_sq(pred, true):
    return 0.5 * (pred - true).pow(2).sum(dim=1)


class Stop(Exception):
    pass


class Tracker:
    """Counts gradient evaluations; raises Stop on the wall-clock cap (SIGALRM) or a stall."""

    def __init__(self, t_end, max_time, stall_evals):
        self.t_end, self.max_time, self.stall_evals = t_end, max_time, stall_evals
        self.evals = 0
        self.t = 0.0
        self.mark_t, self.mark_evals, self.mark_calls, self.calls = 0.0, 0, 0, 0

    def __enter__(self):
        def alarm(signum, frame):
            raise Stop("max_time")
        self.old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, self.max_time)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        self.wall = time.perf_counter() - self.t0
        return False

    def at(self, t):
        """The flow's current accepted time (called on every trial step)."""
        self.calls += 1
        self.t = t
        if t - self.mark_t > 1e-9 * self.t_end:
            self.mark_t, self.mark_evals, self.mark_calls = t, self.evals, self.calls
        elif self.stall_evals and (self.evals - self.mark_evals > self.stall_evals
                                   or self.calls - self.mark_calls > 20 * self.stall_evals):
            raise Stop("stalled")

    def evaluation(self):
        self.evals += 1
        if self.stall_evals and self.evals - self.mark_evals > self.stall_evals:
            raise Stop("stalled")


def make_grad_fn(p, ds, kind, tracker):
    """-grad C on the flat vector (weights, biases, out_weight, out_bias), through torch_cost."""
    shapes = [a.shape for a in (p.weights, p.biases, p.out_weight, p.out_bias) if a is not None]
    sizes = [int(np.prod(s)) for s in shapes]

    def cost_grad(x):
        a = x.detach().numpy()
        parts = np.split(a, np.cumsum(sizes)[:-1])
        parts = [v.reshape(s) for v, s in zip(parts, shapes)] + [None, None]
        ns = SimpleNamespace(weights=parts[0], biases=parts[1], out_weight=parts[2], out_bias=parts[3])
        costs, leaves = torch_cost(ns, ds.points, ds.labels, ds.targets, kind, "layers")
        grads = torch.autograd.grad(costs.sum(), leaves)
        return costs.sum().item(), torch.cat([g.reshape(-1) for g in grads])

    def grad_fn(x, t):
        if tracker is not None:
            tracker.evaluation()
        return -cost_grad(x)[1]

    return grad_fn, cost_grad


def check_gradients(p, ds, kind):
    """torch_cost and Net against truncflow at the initial parameters; returns the max differences."""
    c, g = tf.gradient(p, ds, kind, wrt="layers")
    gn = np.concatenate([a.ravel() for a in (g.weights, g.biases, g.out_weight, g.out_bias) if a is not None])
    _, cost_grad = make_grad_fn(p, ds, kind, None)
    ct, gt = cost_grad(torch.tensor(flat_params(p)))
    net = Net(p, kind)
    x = torch.tensor(np.asarray(ds.points, dtype=np.float64))
    y = torch.tensor(np.array(ds.targets, dtype=np.float64))[torch.as_tensor(np.array(ds.labels))]
    loss = half_sq(net(x), y).sum() / len(x)
    gm = torch.cat([v.reshape(-1) for v in torch.autograd.grad(loss, list(net.parameters()))])
    scale = max(1.0, float(np.max(np.abs(gn))))
    d = dict(cost_torch_cost=abs(ct - c), grad_torch_cost=float(np.max(np.abs(gt.numpy() - gn))),
             cost_module=abs(loss.item() - c), grad_module=float(np.max(np.abs(gm.numpy() - gn))),
             grad_scale=scale, cost=c)
    bad = [k for k in ("cost_torch_cost", "grad_torch_cost", "cost_module", "grad_module") if d[k] > 1e-12 * scale]
    print("gradient check vs truncflow at theta0: cost " + f"{c:.6g}; " + ", ".join(
        f"{k} {d[k]:.1e}" for k in ("cost_torch_cost", "grad_torch_cost", "cost_module", "grad_module")), flush=True)
    if bad:
        raise SystemExit(f"torch loss does not match truncflow's ({bad}): fix the setup first")
    return d


# ---------------------------------------------------------------- the three drivers

def run_ode(p, ds, kind, t_end, max_dgrad, max_time, stall_evals):
    tr = Tracker(t_end, max_time, stall_evals)
    grad_fn, _ = make_grad_fn(p, ds, kind, tr)
    theta0 = torch.tensor(flat_params(p))
    prev = cur = (0.0, theta0)
    status, steps = "t_end", 0
    with tr:
        try:
            for state, internals in gradientflow.flow_ode(theta0, grad_fn, max_dgrad=max_dgrad):
                prev, cur = cur, (state["t"], internals["x"])
                steps = state["step"]
                if cur[0] >= t_end:
                    break
                tr.at(cur[0])
        except Stop as e:
            status = str(e)
    if status != "t_end":
        return status, tr, cur[0], None, steps
    (t0, x0), (t1, x1) = prev, cur
    if t1 == t_end:
        xf = x1
    else:   # Euler: the chord from x0 is the Euler step of length t_end - t0
        xf = x0 + (t_end - t0) / (t1 - t0) * (x1 - x0)
    return status, tr, t_end, xf.detach().numpy(), steps


def run_backprop(p, ds, kind, t_end, max_dgrad, max_dout, max_time, stall_evals):
    tr = Tracker(t_end, max_time, stall_evals)
    net = Net(p, kind)
    x = torch.tensor(np.asarray(ds.points, dtype=np.float64))
    y = torch.tensor(np.array(ds.targets, dtype=np.float64))[torch.as_tensor(np.array(ds.labels))]

    def loss(pred, true):
        tr.evaluation()
        return half_sq(pred, true)

    # observe the flow's time: wrap the step function handed to gradientflow's own flow() (no change
    # to its logic; needed only for the stall detector, since with checkpoints=[t_end] it yields once)
    orig_flow = _gf_backprop.flow

    def observed_flow(x_0, prepare, make_step, compare, **kw):
        def step(sta, data, t, dt):
            tr.at(t)
            return make_step(sta, data, t, dt)
        return orig_flow(x_0, prepare, step, compare, **kw)

    status, xf, t_reached, steps = "t_end", None, 0.0, 0
    _gf_backprop.flow = observed_flow
    try:
        with tr:
            try:
                for state, internals in gradientflow.gradientflow_backprop(
                        net, x, y, loss, tau=0, max_dgrad=max_dgrad, max_dout=max_dout, checkpoints=[t_end]):
                    t_reached, steps = state["t"], state["step"]
                    xf = torch.cat([v.detach().reshape(-1) for v in internals["f"].parameters()]).numpy()
            except Stop as e:
                status = str(e)
    finally:
        _gf_backprop.flow = orig_flow
    if status != "t_end":
        return status, tr, tr.t, None, steps
    if t_reached != t_end:
        raise RuntimeError(f"gradientflow_backprop stopped at t = {t_reached!r}, not t_end")
    return status, tr, t_end, xf, steps


def sweep(p, ds, kind, t_end, yref, methods, dgrads, douts, max_time, stall_evals, label="", threads=None):
    rows = []
    for method in methods:
        knobs = douts if method == "dout" else dgrads
        for k in knobs:
            if threads:     # truncflow's Numba kernels (OpenMP layer) reset the shared OpenMP thread count
                torch.set_num_threads(threads)
            if method == "ode":
                res = run_ode(p, ds, kind, t_end, k, max_time, stall_evals)
                extra = dict(max_dgrad=k)
            elif method == "backprop":
                res = run_backprop(p, ds, kind, t_end, k, 1.0, max_time, stall_evals)
                extra = dict(max_dgrad=k, max_dout=1.0, tau=0)
            else:
                res = run_backprop(p, ds, kind, t_end, math.inf, k, max_time, stall_evals)
                extra = dict(max_dgrad="inf", max_dout=k, tau=0)
            status, tr, t, xf, steps = res
            err = float(np.max(np.abs(xf - yref))) if xf is not None and yref is not None else float("nan")
            steps = int(steps) if status == "t_end" else None     # accepted steps (known when finished)
            row = dict(method=method, knob=k, status=status, t=float(t), evaluations=tr.evals, steps=steps,
                       wall=tr.wall, error=err, **extra, max_time=max_time, load_average=os.getloadavg()[0],
                       torch_threads=torch.get_num_threads(),
                       final=None if xf is None else xf.tolist())
            rows.append(row)
            print(f"{label}{method:>8} {'max_dout' if method == 'dout' else 'max_dgrad'} {k:<7g}: {status:8s} "
                  f"t={t:.4g} evals={tr.evals:>7d} steps={str(steps):>7s} wall={tr.wall:6.1f}s error={err:.3e}", flush=True)
    return rows


def table(rows):
    out = ["| method | knob | status | evals | wall (s) | error |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        knob = f"max_dout {r['knob']:g}" if r["method"] == "dout" else f"max_dgrad {r['knob']:g}"
        status = r["status"] if r["status"] == "t_end" else f"{r['status']} at t={r['t']:.4g}"
        if r["status"] == "max_time":
            status = f"max_time ({r.get('max_time', 0):g} s) at t={r['t']:.4g}"
        err = f"{r['error']:.2e}" if np.isfinite(r["error"]) else "—"
        out.append(f"| gradientflow {r['method']} | {knob} | {status} | {r['evaluations']} | {r['wall']:.1f} | {err} |")
    return "\n".join(out)


def rescore(case, folder):
    """Errors of a finished sweep against the reference now stored (or cached): rewrites the file."""
    out_file = folder / f"gradientflow_{case}.json"
    res = json.loads(out_file.read_text())
    p, ds, sim_kw = problem(case)
    yref, t_end, stored, source = reference(case, p, ds, sim_kw, out_file, "later")
    if yref is None:
        raise SystemExit(f"{case}: still no reference_final in work_precision_{case}.json")
    if t_end != res["t_end"] or yref.shape != flat_params(p).shape:
        raise SystemExit(f"{case}: the reference does not fit the sweep")
    same = res.get("reference_final") is not None and np.array_equal(np.array(res["reference_final"]), yref)
    for r in res["rows"]:
        r.setdefault("max_time", res["max_time"])
        if "final" not in r:        # rows of a file written before finals were kept
            if not same:
                print(f"  {r['method']} {r['knob']:g}: no final parameters kept and the reference changed: "
                      f"error set to NaN (rerun the case)")
                r["error"] = float("nan")
            continue                 # same reference bit for bit: the error stands
        r["error"] = float(np.max(np.abs(np.array(r["final"]) - yref))) if r["final"] is not None else float("nan")
    res.update(reference_source=source, reference_final=yref.tolist(),
               reference_stored=dict(rtol=stored.get("reference_rtol"), **stored["reference"]))
    out_file.write_text(json.dumps(res, indent=1, default=float))
    print(f"\n### {case} (N = {res['n_points']}, t_end = {t_end}); rescored against: {source}\n")
    print(table(res["rows"]) + "\n", flush=True)


# ---------------------------------------------------------------- entry points

def verify(a, methods):
    """Setup check on small_input_2_N16 before its first kink: the error must fall with the knob."""
    case = "small_input_2_N16"
    p, ds, sim_kw = problem(case)
    kind = sim_kw.get("kind", "input")
    check_gradients(p, ds, kind)
    times = 3.0 * np.logspace(-6, 0, 601)
    with kinks.using(kinks.KinkOptions(bulk=False)):
        r = tf.simulate(p, ds, 3.0, record_times=np.concatenate([[0.0], times]), method="kinks", rtol=1e-12,
                        atol=1e-14, **sim_kw)
        first = int(np.argmax(np.asarray(r.pattern_changes) > 0))
        t_kink_lo, t_kink_hi = float(r.t[first - 1]), float(r.t[first])
        t_v = 0.5 * t_kink_lo
        ref = tf.simulate(p, ds, t_v, record_times=[t_v], method="kinks", rtol=1e-12, atol=1e-14, **sim_kw)
    print(f"{case}: first activation-pattern change in ({t_kink_lo:.4g}, {t_kink_hi:.4g}]; "
          f"verification horizon t_v = {t_v:.4g} (reference kinks rtol 1e-12, {ref.config['kinks']['events_located']} events)")
    rows = sweep(p, ds, kind, t_v, final(ref), methods, [1e-2, 1e-3, 1e-4, 1e-5, 1e-6], [1e-2, 1e-3, 1e-4],
                 a.max_time, a.stall_evals, label="verify ", threads=a.threads)
    print(table(rows))
    ok = True
    for method in methods:
        done = [r_ for r_ in rows if r_["method"] == method and r_["status"] == "t_end"]
        errs, knobs = [r_["error"] for r_ in done], [r_["knob"] for r_ in done]
        falls = len(done) >= 3 and all(e1 < e0 for e0, e1 in zip(errs, errs[1:]))
        slope = float(np.polyfit(np.log(knobs), np.log(errs), 1)[0]) if len(done) >= 2 else float("nan")
        print(f"{method}: {len(done)} runs reached t_v; error falls as the knob tightens: {falls}; "
              f"d log(error) / d log(knob) = {slope:.2f}")
        ok &= falls
    if not ok:
        raise SystemExit("verification failed: the error does not fall as the knob tightens")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--methods", default="ode,backprop,dout")
    ap.add_argument("--dgrads", default=None)
    ap.add_argument("--douts", default=None)
    ap.add_argument("--max-time", type=float, default=60.0)
    ap.add_argument("--stall-evals", type=int, default=2000, help="0: off (a stalled run then hits --max-time)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "work_precision"))
    ap.add_argument("--reference", choices=["recompute", "later"], default="recompute",
                    help="when work_precision_<case>.json has no reference_final: recompute it first, or run "
                         "the flows now and leave the errors to --rescore")
    ap.add_argument("--append", action="store_true",
                    help="add this run's rows to DIR/gradientflow_<case>.json instead of replacing them "
                         "(e.g. the runs that hit --max-time again with a longer cap)")
    ap.add_argument("--rescore", action="store_true",
                    help="no runs: recompute the errors of DIR/gradientflow_<case>.json from the reference")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    methods = a.methods.split(",")
    parse = lambda s, d: [float(v) for v in s.split(",")] if s else d
    if a.verify:
        verify(a, methods)
    if a.rescore:
        for case in a.cases:
            rescore(case, Path(a.dir))
        return 0
    for case in a.cases:
        p, ds, sim_kw = problem(case)
        kind = sim_kw.get("kind", "input")
        out_file = Path(a.dir) / f"gradientflow_{case}.json"
        load0 = os.getloadavg()
        print(f"== {case}: N = {ds.n_points}, load average {load0[0]:.2f}, torch threads {torch.get_num_threads()}, "
              f"NUMBA_NUM_THREADS {os.environ.get('NUMBA_NUM_THREADS', 'default')}", flush=True)
        yref, t_end, stored, source = reference(case, p, ds, sim_kw, out_file, a.reference)
        if stored["n_points"] != ds.n_points:
            raise SystemExit(f"{case}: stored n_points {stored['n_points']} != {ds.n_points}")
        if yref is not None and yref.shape != flat_params(p).shape:
            raise SystemExit(f"{case}: reference has {yref.size} parameters, the problem {flat_params(p).size}")
        check = check_gradients(p, ds, kind)
        dgrads = parse(a.dgrads, CLUSTER_DGRADS if case.startswith("clusters") else SMALL_DGRADS)
        rows = sweep(p, ds, kind, t_end, yref, methods, dgrads, parse(a.douts, DOUTS), a.max_time, a.stall_evals,
                     threads=a.threads)
        load1 = os.getloadavg()
        if a.append and out_file.exists():     # keep the earlier rows (each row carries its own max_time)
            old = json.loads(out_file.read_text())
            for r in old["rows"]:
                r.setdefault("max_time", old["max_time"])
            rows = old["rows"] + rows
            load0 = old.get("load_average_before", load0)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(dict(
            case=case, peer="mariogeiger/gradientflow", gradientflow_version=gradientflow.__version__,
            torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
            numba_threads=os.environ.get("NUMBA_NUM_THREADS"), n_points=int(ds.n_points), t_end=t_end,
            max_time=a.max_time, stall_evals=a.stall_evals, reference_source=source,
            reference_final=None if yref is None else yref.tolist(), gradient_check=check, load_average_before=load0,
            load_average_after=load1, cpus=os.cpu_count(), rows=rows), indent=1, default=float))
        print(f"\n### {case} (N = {ds.n_points}, t_end = {t_end}); load {load0[0]:.1f} -> {load1[0]:.1f}\n")
        print(table(rows) + "\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
