"""Plots of a run: cost and truncation against flow time, written as PNG.

Uses Matplotlib's object-oriented API with the Agg canvas: no display is needed
and the global backend of a program that imports this module is left alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_result"]

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
    coordinate (solid) and the fraction collapsed to the apex (dashed).
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

    fig = Figure(figsize=(8.0, 2.9 * (1 + len(layers))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(layers), 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{q % 10}" for q in range(n_clusters)]
    positive_t = t[t > 0]
    linthresh = float(positive_t.min()) if positive_t.size else 1.0

    ax = axes[0]
    ax.plot(t, _positive(cost), color="k", lw=2, label="total cost")
    for q in range(n_clusters):
        ax.plot(t, _positive(per_cluster[:, q]), color=colors[q], ls="--", lw=1.2, label=f"cluster {q}")
    if np.isfinite(_positive(cost)).any() or np.isfinite(_positive(per_cluster)).any():
        ax.set_yscale("log")
    ax.set_ylabel("cost")
    kind = result.config.get("kind", "") if isinstance(result.config, dict) else ""
    ax.set_title(f"cost{f' ({kind} cost)' if kind else ''} against flow time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small", ncol=2 if n_clusters > 3 else 1)

    for ax, l in zip(axes[1:], layers):
        for q in range(n_clusters):
            ax.plot(t, truncated[:, l, q], color=colors[q], lw=1.8, label=f"cluster {q} truncated")
            ax.plot(t, collapsed[:, l, q], color=colors[q], lw=1.4, ls="--", label=f"cluster {q} collapsed")
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
    fig.savefig(path, dpi=110)
    return path
