"""Plots of a run, written as PNG: cost, truncation and cones against flow time
(:func:`plot_result`), and snapshots of the data and the cones (:func:`plot_snapshots`).

Uses Matplotlib's object-oriented API with the Agg canvas: no display is needed
and the global backend of a program that imports this module is left alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_result", "plot_snapshots", "apex_series"]

#: At most this many coordinates of thresholds or apexes are drawn per layer.
MAX_COORDINATES = 8

#: At most this many layers get their own truncation panel; beyond it, the first and last layers.
MAX_LAYER_PANELS = 4


def _layers_to_show(n_layers: int) -> list[int]:
    if n_layers <= MAX_LAYER_PANELS:
        return list(range(n_layers))
    return [0, n_layers - 1]


def _positive(a):
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, np.nan)


def plot_result(result, path, *, title: str | None = None) -> Path:
    """Write a PNG of ``result`` to ``path`` and return the path.

    Top panel: the cost and each cluster's cost on a log scale against flow time.
    Below, one panel per layer (the first and last when there are more than
    four): per cluster, the fraction of points truncated in at least one
    coordinate (solid) and the fraction collapsed to the apex (dashed). Last
    panel: the thresholds ``t^(l)`` of an aligned run, otherwise the coordinates of
    the cone apexes ``p^(l)``, against time (at most MAX_COORDINATES per layer).
    The time axis is linear up to the first positive record time and
    logarithmic beyond, matching the records' default log spacing (linear
    throughout when the records span less than two decades).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    t = np.asarray(result.t, dtype=np.float64)
    cost = np.asarray(result.cost)
    per_cluster = np.asarray(result.cost_per_cluster)
    truncated = np.asarray(result.truncated_fraction)   # (T, L, Q)
    collapsed = np.asarray(result.collapsed_fraction)   # (T, L, Q)
    n_layers, n_clusters = truncated.shape[1], truncated.shape[2]
    layers = _layers_to_show(n_layers)

    fig = Figure(figsize=(8.0, 2.9 * (2 + len(layers))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 + len(layers), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{q % 10}" for q in range(n_clusters)]
    names = result.cluster_names
    positive_t = t[t > 0]
    linthresh = float(positive_t.min()) if positive_t.size else 1.0

    ax = axes[0]
    ax.plot(t, _positive(cost), color="k", lw=2, label="total cost")
    for q in range(n_clusters):
        ax.plot(t, _positive(per_cluster[:, q]), color=colors[q], ls="--", lw=1.2, label=names[q])
    if np.isfinite(_positive(cost)).any() or np.isfinite(_positive(per_cluster)).any():
        ax.set_yscale("log")
    ax.set_ylabel("cost")
    kind = result.config.get("kind", "") if isinstance(result.config, dict) else ""
    ax.set_title(f"cost{f' ({kind} cost)' if kind else ''} against flow time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=2 if n_clusters > 3 else 1)

    _plot_cones_against_time(axes[-1], result, t, layers)

    for ax, l in zip(axes[1:-1], layers):
        for q in range(n_clusters):
            ax.plot(t, truncated[:, l, q], color=colors[q], lw=1.8, label=f"{names[q]} truncated")
            ax.plot(t, collapsed[:, l, q], color=colors[q], lw=1.4, ls="--", label=f"{names[q]} collapsed")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("fraction of the cluster")
        last = " (last layer)" if l == n_layers - 1 and n_layers > 1 else ""
        ax.set_title(f"layer {l + 1}{last}: truncated (at least one coordinate, solid) "
                     f"and collapsed to the apex (dashed)", fontsize="medium")
        ax.grid(True, alpha=0.3)
        if l == layers[0]:
            ax.legend(loc="best", fontsize="x-small", ncol=2)

    t_max = max(float(t.max()), linthresh) if t.size else 1.0
    # 0, then the decades at or above the first positive record (symlog's own locator
    # also puts decades inside the linear part, where their labels collide with 0).
    decades = [10.0 ** k for k in range(int(np.ceil(np.log10(linthresh) - 1e-9)),
                                         int(np.floor(np.log10(t_max) + 1e-9)) + 1)]
    if len(decades) >= 2:  # less than a decade of records: a linear axis reads better
        for ax in axes:
            ax.set_xscale("symlog", linthresh=linthresh, linscale=0.4)
        axes[-1].set_xticks([0.0] + decades)
    axes[0].set_xlim(0.0, t_max)
    axes[-1].set_xlabel("flow time t")
    status = f"status: {result.status}"
    fig.suptitle(f"{title}  ({status})" if title else status)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, dpi=110)
    return path


def apex_series(result) -> np.ndarray:
    """(T, L, M) cone apexes ``p^(l) = -(W^(l))^-1 b^(l)`` of every record."""
    W = np.asarray(result.cum_weights, dtype=np.float64)
    b = np.asarray(result.cum_biases, dtype=np.float64)
    return -np.linalg.solve(W, b[..., None])[..., 0]


def _plot_cones_against_time(ax, result, t, layers):
    aligned = "frames" in result.arrays
    values = np.asarray(result.thresholds) if aligned else apex_series(result)     # (T, L, M)
    M = values.shape[2]
    styles = ["-", "--", ":", "-."]
    for i, l in enumerate(layers):
        for k in range(min(M, MAX_COORDINATES)):
            ax.plot(t, values[:, l, k], color=f"C{k % 10}", ls=styles[i % len(styles)], lw=1.4,
                    label=f"layer {l + 1}, coordinate {k}")
    what = "thresholds t^(l) (rotated coordinates)" if aligned else "cone apexes p^(l) (input coordinates)"
    more = f"; first {MAX_COORDINATES} of {M} coordinates" if M > MAX_COORDINATES else ""
    ax.set_title(f"{what}{more}", fontsize="medium")
    ax.set_ylabel("threshold" if aligned else "apex coordinate")
    ax.grid(True, alpha=0.3)
    if len(layers) * min(M, MAX_COORDINATES) <= 16:
        ax.legend(loc="best", fontsize="x-small", ncol=2)


def _snapshot_indices(n_records: int, n_snapshots: int) -> list[int]:
    """First, last and evenly spaced records in between."""
    if n_records <= n_snapshots:
        return list(range(n_records))
    return sorted(set(np.linspace(0, n_records - 1, n_snapshots).round().astype(int).tolist()))


def plot_snapshots(result, path, *, n_snapshots: int = 4, title: str | None = None) -> Path:
    """Snapshots of the data's images and the cones at a few records, written as PNG.

    Each panel shows, at one record, the result's data sample (``sample_points``, at
    most 2000 points) after all layers, coloured by cluster, with each layer's cone:
    its apex and rays along its edges. For M = 2 the plane itself, for M = 3 a 3-D view,
    for M > 3 the projection onto the first two principal axes of the initial sample
    (fixed for all panels). For M = 1 the coordinate against the point's index.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .compute import truncate

    if "sample_points" not in result.arrays:
        raise ValueError("this result has no data sample to draw (results written by truncflow >= 0.2 have one)")
    path = Path(path)
    pts = np.asarray(result.sample_points, dtype=np.float64)
    labels = np.asarray(result.sample_labels)
    names = result.cluster_names
    M = pts.shape[1]
    picks = _snapshot_indices(result.n_records, n_snapshots)
    center = pts.mean(axis=0)
    if M > 3:
        _, _, vt = np.linalg.svd(pts - center, full_matrices=False)
        basis = vt[:2]                                      # (2, M), fixed on the initial data
    else:
        basis = np.eye(M)
    scale = float(np.ptp(pts @ basis.T, axis=0).max()) or 1.0

    fig = Figure(figsize=(4.2 * len(picks), 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    for j, i in enumerate(picks):
        params = result.params_at(i)
        images = truncate(params, pts) @ basis.T
        apexes, edges = params.cones()
        proj_apex = apexes @ basis.T                        # (L, d)
        proj_edges = np.einsum("dm,lmk->lkd", basis, edges)  # (L, M, d): edge k of layer l
        ax = fig.add_subplot(1, len(picks), j + 1, projection="3d" if M == 3 else None)
        for q in np.unique(labels):
            sel = labels == q
            if M == 1:
                ax.scatter(np.flatnonzero(sel), images[sel, 0], s=3, color=f"C{q % 10}", label=names[q])
            else:
                ax.scatter(*images[sel].T, s=3, alpha=0.5, color=f"C{q % 10}", label=names[q], zorder=3)
        for l in range(params.n_layers):
            if M == 1:
                ax.axhline(proj_apex[l, 0], color="k", lw=1, ls=["-", "--", ":"][l % 3])
                continue
            ax.scatter(*proj_apex[l], marker="x", s=60, color="k")
            for k in range(min(M, MAX_COORDINATES)):
                d = proj_edges[l, k]
                n = np.linalg.norm(d)
                if n > 0:
                    ray = np.stack([proj_apex[l], proj_apex[l] + 0.5 * scale * d / n])
                    ax.plot(*ray.T, color="k", lw=1, ls=["-", "--", ":"][l % 3])
        if M == 2:
            ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"t = {result.t[i]:.4g}", fontsize="medium")
        if j == 0:
            ax.legend(loc="best", fontsize="x-small", markerscale=3)
    how = {1: "coordinate against point index; lines: apexes", 2: "input plane",
           3: "input space"}.get(M, "projection on the initial data's first two principal axes")
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}images of the data after all layers, cones (apex x, edges) - {how}", fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, dpi=100)
    return path


def _save(fig, path, dpi):
    """Save a figure as PNG to a temporary file renamed to ``path`` (never half-written)."""
    from ._files import atomic_write
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
