"""Stochastic gradient descent: ``simulate(..., method="sgd")`` (issue 25 item 4).

The estimator
-------------
The cost is a mean over all N points (MODEL.md section 4: ``C = 1/(2N) sum_i c_i``, the
input or the output cost, ``c_i`` the squared error of point i; no per-cluster
normalization). The minibatch cost of a batch B (a list of |B| point indices) is the mean
over the batch, ``C_B = 1/(2|B|) sum_{i in B} c_i``, and its gradient ``g_B`` (masked like
the flow's: frozen parts zero) is the step direction. ``g_B`` is an unbiased estimate of
the full gradient ``g``: for a uniformly random subset B of a fixed size, and for |B|
indices drawn uniformly with replacement, ``E[g_B] = g``. Without replacement the batches
of an epoch partition the points, so their gradients weighted by their sizes add up to
the full one exactly, ``sum_j |B_j|/N g_{B_j} = g``: with N a multiple of the batch size,
the plain mean of an epoch's batch gradients *is* the full gradient (tests/test_sgd.py).

The batches
-----------
Batch k (the batch of step k, k = 0, 1, ...) is a function of (seed, N, batch_size,
replacement, k) alone, computed here, on the client, whatever the placement of the
points; each batch's indices are sorted (the order inside a batch does not change the
estimator; sorted, a batch of all N points is the points in order, so that
``batch_size = N`` without replacement *is* gradient descent, bit for bit).

* ``replacement=False`` (default): epochs. Epoch e = k // n_batches, n_batches =
  ceil(N / batch_size), visits every point once in the order of a pseudo-random
  permutation pi_e of [0, N); batch j = k % n_batches of it holds the points
  pi_e(j b), ..., pi_e(min((j+1) b, N) - 1): the last batch of an epoch is smaller when
  b does not divide N (it is kept, not dropped: every point is seen once per epoch, and
  its gradient, a mean over its own points, is unbiased too). pi_e is a bijection
  computed point by point (a 6-round Feistel network on the smallest even number of bits
  covering N, keyed by ``SeedSequence([seed, 0, e])``, with cycle-walking into [0, N)),
  not a shuffled array: a batch costs O(batch_size) time and memory at any N (a
  permutation array of N = 10^9 points would be 8 GB). A batch of all N points is
  ``arange(N)`` itself. The permutations are pseudo-random, not drawn uniformly from
  all N! orders; what holds exactly, whatever the permutation, is the epoch identity
  above (each epoch's batches partition the points).
* ``replacement=True``: batch k is batch_size indices drawn independently and uniformly
  from [0, N) by ``numpy.random.default_rng([seed, 1, k])`` (a point may appear twice;
  batch_size may exceed N).

The step
--------
Heavy-ball momentum: ``v <- momentum * v + g_B``, ``y <- y - lr * v``, v = 0 at the start
(``momentum = 0``: ``v = g_B``, plain SGD). Step k ends at flow time ``t = (k+1) lr``.

Each step gathers the batch's rows where the points are (``dataset.rows(idx)``, a named
operation of every backend: here an index, on a Dask cluster one task per partition that
holds some of them, on a GPU a gather kernel and one copy to the host) and runs the local
gradient kernels over that copy. Hence the iterates are the same bits on one process, a
Dask cluster and a GPU. On a cluster or a GPU each step is a round trip carrying
batch_size rows: fine for minibatches, slow for batches of millions of points (a batch
of all points is the whole dataset per step).

Records, stopping rules, signals and checkpoints are those of ``method="gd"``: records
at the first step at or after each record time, each a full pass over all the points
where they are (the recorded cost, gradient norm and observables are the full ones: on
Dask the same bits as here, on a GPU to its rounding, as for gd). ``cost_tol`` and
``grad_tol`` compare the full cost and gradient norm, known at records only: the run
stops at the first record below them. ``max_evals`` counts every pass: one per batch,
one per record. A ``callback(t, cost)`` gets the batch's cost after each step. A
checkpoint holds (k, y, v): the batches are a function of k, so a resumed run draws the
batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings

import numpy as np
from numba import njit

from .._validate import integer
from ..data import Dataset, EmptyClusterWarning
from ..kernels.config import JIT_OPTIONS
from .rhs import FlowProblem
from .methods import Status

__all__ = ["Minibatches", "BatchGradient", "SgdSteps", "check_sgd_options"]

#: Rounds of the Feistel network of the epoch permutations.
FEISTEL_ROUNDS = 6


def check_sgd_options(n_points: int, batch_size, replacement, seed, momentum) -> dict:
    """The SGD options of :func:`truncflow.simulate`, checked and normalized (ValueError naming
    the option): batch_size a whole number >= 1 (<= N without replacement), replacement
    True or False, seed a whole number >= 0 (None: 0), momentum a number in [0, 1)."""
    if batch_size is None:
        raise ValueError("method='sgd' needs a batch size: pass batch_size, a whole number >= 1 "
                         f"(batch_size = N = {n_points} without replacement is gradient descent)")
    if not isinstance(replacement, bool):
        raise ValueError(f"replacement must be True or False, got {replacement!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (numbers.Integral, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not replacement and batch_size > n_points:
        raise ValueError(f"batch_size={batch_size} exceeds the N = {n_points} points: without replacement a batch "
                         f"holds at most N points (batch_size = N is gradient descent), or pass replacement=True")
    seed = 0 if seed is None else integer(seed, "seed", low=0, high=2**63 - 1)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (0.0 <= float(momentum) < 1.0):
        raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
    return dict(batch_size=int(batch_size), replacement=replacement, seed=int(seed), momentum=float(momentum))


@njit(**JIT_OPTIONS)
def _feistel_permute(x, n, half, keys):
    """pi(x) for each x in [0, n) (uint64): a balanced Feistel network on 2 * half bits (round
    function: SplitMix64's finalizer of the right half xor the round key), applied again
    while the value is >= n (cycle-walking: a bijection of [0, n), as the network is one
    of [0, 2^(2 half)) and 2^(2 half) < 4 n)."""
    out = np.empty(x.size, np.uint64)
    h = np.uint64(half)
    mask = (np.uint64(1) << h) - np.uint64(1)
    for i in range(x.size):
        v = x[i]
        while True:
            left = v >> h
            right = v & mask
            for r in range(keys.size):
                z = right ^ keys[r]
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                z = z ^ (z >> np.uint64(31))
                left, right = right, left ^ (z & mask)
            v = (left << h) | right
            if v < n:
                break
        out[i] = v
    return out


class Minibatches:
    """The batches of a run: :meth:`indices` (k) is batch k's sorted point indices.

    See the module's docstring for the scheme. ``n_batches`` is the number of batches per
    epoch (without replacement; None with).
    """

    def __init__(self, n_points: int, batch_size: int, replacement: bool = False, seed: int = 0):
        self.n_points, self.batch_size = int(n_points), int(batch_size)
        self.replacement, self.seed = bool(replacement), int(seed)
        if self.replacement:
            self.n_batches = None
        else:
            if not 1 <= self.batch_size <= self.n_points:
                raise ValueError(f"batch_size must lie in [1, N = {self.n_points}] without replacement")
            self.n_batches = -(-self.n_points // self.batch_size)
        bits = max(2, (self.n_points - 1).bit_length())
        self._half = (bits + 1) // 2                      # the Feistel halves: 2 * half bits cover N
        self._epoch, self._keys = None, None

    def epoch_and_batch(self, k: int) -> tuple[int, int]:
        """(epoch, batch within it) of step k (without replacement)."""
        return divmod(int(k), self.n_batches)

    def indices(self, k: int) -> np.ndarray:
        """Batch k's point indices, sorted, int64."""
        k = int(k)
        N, b = self.n_points, self.batch_size
        if self.replacement:
            rng = np.random.default_rng([self.seed, 1, k])
            return np.sort(rng.integers(0, N, size=b, dtype=np.int64))
        if self.n_batches == 1:
            return np.arange(N, dtype=np.int64)
        e, j = self.epoch_and_batch(k)
        positions = np.arange(j * b, min((j + 1) * b, N), dtype=np.uint64)
        return np.sort(self.permute(e, positions).astype(np.int64))

    def permute(self, epoch: int, x: np.ndarray) -> np.ndarray:
        """pi_epoch(x) for positions x in [0, N): a bijection of [0, N) (uint64)."""
        return _feistel_permute(np.ascontiguousarray(x, dtype=np.uint64), np.uint64(self.n_points), self._half,
                                self._epoch_keys(epoch))

    def _epoch_keys(self, epoch):
        if self._epoch != epoch:
            self._keys = np.random.SeedSequence([self.seed, 0, int(epoch)]).generate_state(FEISTEL_ROUNDS, np.uint64)
            self._epoch = epoch
        return self._keys


class BatchGradient:
    """``(cost, masked gradient, its norm)`` of a minibatch at state y: the batch's rows
    gathered here (``dataset.rows``, in the dataset's dtype) and the local kernels run over
    them, as :meth:`FlowProblem.evaluate_with_norm` of a dataset of those rows (the cost and
    gradient are means over the batch). Counts one evaluation of ``problem``."""

    def __init__(self, problem: FlowProblem):
        self.problem = problem
        ds = problem.dataset
        self.dtype = np.dtype(ds.points.dtype if ds.capabilities.points_here else ds.dtype)
        self.targets = np.asarray(ds.targets)
        self._templates = {}            # batch size -> FlowProblem over a batch of that size

    def gather(self, idx: np.ndarray) -> Dataset:
        """A local Dataset of the rows idx (sorted indices)."""
        pts, lab = self.problem.dataset.rows(idx)
        pts = np.ascontiguousarray(pts, dtype=self.dtype)      # the dataset's values, exactly
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EmptyClusterWarning)     # a batch may miss a cluster
            return Dataset(pts, lab, self.targets)

    def __call__(self, y: np.ndarray, idx: np.ndarray):
        batch = self.gather(idx)
        sub = self._problem_of(batch)
        self.problem.n_evaluations += 1
        return sub.evaluate_with_norm(y)

    def _problem_of(self, batch: Dataset) -> FlowProblem:
        n = batch.n_points
        template = self._templates.get(n)
        if template is None:
            p = self.problem
            template = FlowProblem(p.params, batch, kind=p.kind, wrt=p.wrt, train=p.train,
                                   frozen_layers=p.frozen_layers, precision=p.precision)
            if len(self._templates) < 4:        # at most two sizes without replacement, one with
                self._templates[n] = template
            return template
        sub = copy.copy(template)               # the same network arguments, these rows
        old = template.dataset
        sub.dataset = batch
        if sub.serial:
            sub.serial_args = tuple(batch.points if a is old.points else batch.labels if a is old.labels else a
                                    for a in template.serial_args)
        return sub


class SgdSteps:
    """The steps of stochastic gradient descent (see the module's docstring), mixed into the
    engine's loop (``integrate._SgdLoop``: this class and ``integrate._Loop``, which brings
    records, stopping rules, signals and checkpoints, as for ``method="gd"``). Its options
    are ``opts["sgd"]`` (:func:`check_sgd_options`) and ``opts["lr"]``."""

    y = None
    v = None
    k = 0
    _batches = None

    @property
    def batches(self) -> Minibatches:
        if self._batches is None:
            o = self.opts["sgd"]
            self._batches = Minibatches(self.problem.dataset.n_points, o["batch_size"], o["replacement"], o["seed"])
            self.batch_gradient = BatchGradient(self.problem)
        return self._batches

    def _start(self):
        self.y = self.problem.pack(self.problem.params)
        self.v = np.zeros_like(self.y)
        self.k = 0

    def _state(self):
        return {"k": self.k}, {"y": np.array(self.y), "v": np.array(self.v)}

    def _restore(self, scalars, arrays):
        self.k, self.y, self.v = int(scalars["k"]), np.array(arrays["y"]), np.array(arrays["v"])

    def _last_accepted(self):
        return (None, None) if self.y is None else (self.k * self.opts["lr"], self.y)

    @property
    def n_steps(self):
        return max(1, math.ceil(self.t_end / self.opts["lr"] * (1 - 1e-12)))     # as _GdLoop

    def _advance(self):
        lr, k = self.opts["lr"], self.k
        idx = self.batches.indices(k)
        try:
            cost, g, gn = self.batch_gradient(self.y, idx)
            reason = None if math.isfinite(cost) and math.isfinite(gn) else f"non-finite batch cost {cost}"
        except ValueError as exc:       # singular or ill-conditioned cumulative weights
            reason = str(exc)
        guard = self.guard
        if guard.armed and guard.received is not None:
            guard.check()               # a signal stops the run here, before the step
        if reason is not None:
            return Status.DIVERGED, (f"at t = {k * lr:.6g} (after {k} steps) the flow reached a state it cannot "
                                f"evaluate on batch {k} ({reason})")
        momentum = self.opts["sgd"]["momentum"]
        v = g if momentum == 0.0 else momentum * self.v + g
        y_new = self.y + lr * -v                # gd's y + lr * rhs, rhs = -g: the same bits
        self.k, self.y, self.v = k + 1, y_new, v
        t = self.k * lr
        self.counters["accepted"] = self.k
        if self.callback is not None:
            self.callback(t, cost)              # the batch's cost
        due = False
        while self.pending and self.pending[0] <= t * (1 + 1e-12):
            self.pending.pop(0)
            due = True
        if due or self.k >= self.n_steps:
            armed, guard.armed = guard.armed, False     # the record is due: a signal waits until it is made
            try:
                full = self.fun.at(self.y)      # a full pass: the cost and gradient norm of every point
            finally:
                guard.armed = armed
            if not (math.isfinite(full[0]) and math.isfinite(full[1])):
                failure = self.fun.failure[1] if self.fun.failure else f"non-finite cost {full[0]}"
                return Status.DIVERGED, f"after step {self.k} (t = {t:.6g}): {failure}"
            self.record(t, self.y)
        else:
            full = (math.nan, math.nan)         # cost_tol and grad_tol are looked at records only
        if self.k >= self.n_steps:
            return Status.T_END, ""
        return self.stop_reason(*full), ""
