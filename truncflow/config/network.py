"""[network]: the initial network. The parts every ``init`` shares (layers, output layer,
seed) are read by :func:`build_network`; each ``init`` is then one small builder in
:data:`INIT_BUILDERS`, given what was read as a :class:`NetworkSpec`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import require_memory
from ..params import MAX_LAYERS, Params, check_network_size
from .reader import Reader, short
from .schema import INIT_ONLY, INITS

SEC = "network"


@dataclass(frozen=True)
class NetworkSpec:
    """What [network] says whatever its init: the table, the width M of the data, the layers
    L (None: not given), the output layer (explicit or random, or none) and the seed."""

    table: dict
    init: str
    M: int
    L: int | None
    out_dim: int | None           # [network] out_dim as given
    out_weight: np.ndarray | None  # the output layer: given, or random of dimension out_dim
    out_bias: np.ndarray | None
    seed: int | None


def build_network(r: Reader, seed, M, kind) -> tuple[Params, str]:
    """(initial parameters, a few words saying how they were made)."""
    n = r.section(SEC)
    init = r.string(SEC, n, "init", default="identity", choices=INITS)
    r.only_for(SEC, n, INIT_ONLY, "init", init)
    L = r.integer(SEC, n, "layers", minimum=1, maximum=MAX_LAYERS)
    out_dim = r.integer(SEC, n, "out_dim", minimum=1)
    if out_dim is not None:
        r.api(SEC, "out_dim", require_memory, 8 * 4 * out_dim * (M + 1),
              f"out_dim = {out_dim}: an output layer of {out_dim} x M={M}")
    if L is not None:
        r.api(SEC, "layers", check_network_size, L, M, out_dim or 0, name="layers")

    # Output layer: explicit, or random of dimension out_dim.
    ow = ob = None
    if ("out_weight" in n) != ("out_bias" in n):
        r.fail(SEC, "out_weight" if "out_bias" in n else "out_bias",
               "out_weight and out_bias must be given together")
    if "out_weight" in n:
        ow = r.array(SEC, n, "out_weight", 2, shape=(out_dim, M), what=f"P x M={M}")
        ob = r.array(SEC, n, "out_bias", 1, shape=(ow.shape[0],), what=f"P={ow.shape[0]}")
    if kind == "output" and ow is None and out_dim is None:
        r.fail(SEC, None, 'the output cost ([flow] kind = "output") needs an output layer: '
                          "give out_dim (a random output layer) or out_weight and out_bias")
    net_seed = r.integer(SEC, n, "seed", default=seed, minimum=0)
    random_frames = init == "aligned" and n.get("frames") == "random"
    if "seed" in n and init != "random" and not random_frames and (out_dim is None or ow is not None):
        r.fail(SEC, "seed", f"applies only to init = 'random', random frames or a random output layer "
                            f"(out_dim), not init = {init!r}")
    if ow is None and out_dim is not None and init != "random":
        rng = np.random.default_rng(net_seed)
        ow = rng.standard_normal((out_dim, M)) / np.sqrt(M)
        ob = np.zeros(out_dim)
    net = NetworkSpec(table=n, init=init, M=M, L=L, out_dim=out_dim, out_weight=ow, out_bias=ob, seed=net_seed)
    return INIT_BUILDERS[init](r, net)


# ------------------------------------------------------------ shared reads
def need_layers(r: Reader, net: NetworkSpec) -> int:
    """[network] layers, required by this init."""
    if net.L is None:
        r.fail(SEC, "layers", f"is required for init = {net.init!r}")
    return net.L


def stack(r: Reader, net: NetworkSpec, key, ndim, what, L=None) -> np.ndarray:
    """A required per-layer array (L x M x M or L x M), with L layers: ``L`` if given (the
    layers of an array read before), else [network] layers if given."""
    if key not in net.table:
        r.fail(SEC, key, f"is required for init = {net.init!r} ({what})")
    L = net.L if L is None else L
    M = net.M
    arr = r.array(SEC, net.table, key, ndim, shape=(None, M, M)[:ndim], what=what)
    if L is not None and arr.shape[0] != L:
        r.fail(SEC, key, f"has {arr.shape[0]} layers but layers = {L}")
    r.api(SEC, key, check_network_size, arr.shape[0], M, net.out_dim or 0, name=key)
    return arr


# --------------------------------------------------------- one per init
def identity(r: Reader, net: NetworkSpec):
    L, M = need_layers(r, net), net.M
    params = r.api(SEC, None, Params.from_cumulative, np.tile(np.eye(M), (L, 1, 1)), np.zeros((L, M)),
                   net.out_weight, net.out_bias)
    return params, "identity"


def random(r: Reader, net: NetworkSpec):
    L, n = need_layers(r, net), net.table
    scale = r.number(SEC, n, "scale", default=1.0, nonneg=True)
    bias_scale = r.number(SEC, n, "bias_scale", default=0.1, nonneg=True)
    params = r.api(SEC, None, Params.random, L, net.M, scale=scale, bias_scale=bias_scale,
                   out_dim=net.out_dim if net.out_weight is None else None, seed=net.seed)
    if net.out_weight is not None:
        params = r.api(SEC, None, params.with_output, net.out_weight, net.out_bias)
    return params, f"random, scale {scale:g}"


def cones(r: Reader, net: NetworkSpec):
    M, n = net.M, net.table
    apexes = stack(r, net, "apexes", 2, f"L x M={M} cone apexes")
    L = apexes.shape[0]
    if "edges" in n:
        edges = r.array(SEC, n, "edges", 3, shape=(L, M, M), what=f"L={L} x M={M} x M={M} cone edges")
        try:
            cum_w = np.linalg.inv(edges)
        except np.linalg.LinAlgError:
            cum_w = None
        if cum_w is None or not np.all(np.isfinite(cum_w)):
            r.fail(SEC, "edges", "the edges of some layer are linearly dependent (singular matrix)")
    else:
        cum_w = np.tile(np.eye(M), (L, 1, 1))
    with np.errstate(over="ignore", invalid="ignore"):
        cum_b = -np.einsum("lij,lj->li", cum_w, apexes)
    if not np.isfinite(cum_b).all():
        r.fail(SEC, "apexes", "the biases b = -W p of the cones overflow float64 (apexes too large "
                              "for these edges)")
    return r.api(SEC, None, Params.from_cumulative, cum_w, cum_b, net.out_weight, net.out_bias), "cones"


def aligned(r: Reader, net: NetworkSpec):
    M, n = net.M, net.table
    t = stack(r, net, "thresholds", 2, f"L x M={M} thresholds")
    L = t.shape[0]
    frames = n.get("frames", "identity")
    if frames == "identity":
        frames = np.tile(np.eye(M), (L, 1, 1))
    elif frames == "random":
        q, rr = np.linalg.qr(np.random.default_rng(net.seed).standard_normal((L, M, M)))
        frames = q * np.sign(np.diagonal(rr, axis1=1, axis2=2))[:, None, :]
    elif isinstance(frames, str):
        r.fail(SEC, "frames", f'must be "identity", "random" or an L x M x M list, got {short(frames)}')
    else:
        frames = r.array(SEC, n, "frames", 3, shape=(L, M, M), what=f"L={L} x M={M} x M={M} frames")
    if isinstance(n.get("scales"), list):
        scales = r.array(SEC, n, "scales", 2, shape=(L, M), what=f"L={L} x M={M} scales")
    else:
        scales = np.full((L, M), r.number(SEC, n, "scales", default=1.0, positive=True))
    with np.errstate(over="ignore"):
        biases = -scales * t
    if not np.isfinite(biases).all():
        r.fail(SEC, "thresholds", "the biases -scales * thresholds overflow float64 (thresholds or "
                                  "scales too large)")
    return r.api(SEC, None, Params.aligned, frames, scales, biases, net.out_weight, net.out_bias), "aligned"


def layers(r: Reader, net: NetworkSpec):
    M = net.M
    w = stack(r, net, "weights", 3, f"L x M={M} x M={M}")
    b = stack(r, net, "biases", 2, f"L={w.shape[0]} x M={M}", L=w.shape[0])
    return r.api(SEC, None, Params.from_layers, w, b, net.out_weight, net.out_bias), "given layer weights"


def cumulative(r: Reader, net: NetworkSpec):
    M = net.M
    w = stack(r, net, "cum_weights", 3, f"L x M={M} x M={M}")
    b = stack(r, net, "cum_biases", 2, f"L={w.shape[0]} x M={M}", L=w.shape[0])
    return (r.api(SEC, None, Params.from_cumulative, w, b, net.out_weight, net.out_bias),
            "given cumulative weights")


#: init -> its builder: (reader, NetworkSpec) -> (Params, description).
INIT_BUILDERS = {"identity": identity, "random": random, "cones": cones, "aligned": aligned,
                 "layers": layers, "cumulative": cumulative}
assert tuple(INIT_BUILDERS) == INITS
