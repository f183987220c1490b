"""[data]: the points, their labels, and the per-cluster targets.

The targets are resolved in two steps: :func:`build_data` reads the points (their
width M fixes the network's), and :func:`finish_targets` turns ``targets`` into an
array once the network's output dimension P is known.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import Dataset, encode_labels, gaussian_clusters, load_points, uniform_balls
from .reader import Reader, ids_text
from .schema import DATA_ONLY, DATA_SOURCES, DTYPES, TARGET_WORDS


@dataclass(frozen=True)
class DataSection:
    """What [data] gave: a dataset with placeholder targets, and what its targets need."""

    dataset: Dataset            # points and labels checked; targets not yet (zeros, Q x 1)
    summary: str                # e.g. "3 Gaussian clusters"
    centers: np.ndarray | None  # the cluster centers (gaussian, balls), for targets = "centers"
    targets: object             # [data] targets as written: a nested list or a word
    n_clusters: int             # Q


def build_data(r: Reader, seed) -> DataSection:
    sec = "data"
    d = r.section(sec)
    if not d:
        r.fail(None, None, "section [data] is required (source, n_points, centers, targets, ...)")
    source = r.string(sec, d, "source", required=True, choices=DATA_SOURCES)
    r.only_for(sec, d, DATA_ONLY, "source", source)
    dtype = DTYPES[r.string(sec, d, "dtype", default="float64", choices=tuple(DTYPES))]
    if "targets" not in d:
        r.fail(sec, "targets", "is required: a Q x M list (input cost), a Q x P list (output cost), "
                               'or "centers", "means", "onehot"')
    centers = class_ids = None            # class IDs: 0..Q-1 unless a file says otherwise
    if source in ("gaussian", "balls"):
        n_points = r.integer(sec, d, "n_points", required=True, minimum=1)
        if "centers" not in d:
            r.fail(sec, "centers", "is required: a Q x M list of cluster centers")
        centers = r.array(sec, d, "centers", 2, what="Q clusters x M coordinates")
        Q = centers.shape[0]
        if n_points < Q:
            r.fail(sec, "n_points", f"is {n_points}, fewer than the {Q} clusters in centers")
        data_seed = r.integer(sec, d, "seed", default=seed, minimum=0)
        if source == "gaussian":
            std = r.scalar_or_list(sec, d, "std", Q, default=1.0)
            points, labels = r.api(sec, None, gaussian_clusters, n_points, centers, std,
                                   seed=data_seed, dtype=dtype)
        else:
            radius = r.scalar_or_list(sec, d, "radius", Q, default=1.0)
            points, labels = r.api(sec, None, uniform_balls, n_points, centers, radius,
                                   seed=data_seed, dtype=dtype)
        kind_of = "Gaussian cluster" if source == "gaussian" else "uniform ball"
        summary = f"{Q} {kind_of}{'s' if Q != 1 else ''}"
    else:
        path_str = r.string(sec, d, "path", required=True)
        path = Path(path_str).expanduser()
        if not path.is_absolute():
            path = (r.base_dir / path).absolute()
        keys = dict(points_key=r.string(sec, d, "points_key", default="points"),
                    labels_key=r.string(sec, d, "labels_key", default="labels"))
        points, class_labels = r.api(sec, "path", load_points, path, **keys)
        points = cast_points(r, sec, points, dtype, path)
        # The file's distinct class IDs, sorted, are the clusters 0..Q-1 (kept for display).
        labels, class_ids = encode_labels(class_labels)
        Q = class_ids.size
        summary = f"{Q} cluster{'s' if Q != 1 else ''} from {path.name}"
        if not np.array_equal(class_ids, np.arange(Q)):
            summary += f" (class IDs {ids_text(class_ids)})"
    # Provisional dataset with placeholder targets: validates points and labels now.
    dataset = r.api(sec, None, Dataset, points, labels, np.zeros((Q, 1)), class_ids)
    return DataSection(dataset=dataset, summary=summary, centers=centers, targets=d["targets"], n_clusters=Q)


def cast_points(r: Reader, sec, points, dtype, path):
    """Points read from a file, in the configured dtype (refusing a float32 overflow)."""
    if points.dtype == dtype:
        return points
    with np.errstate(over="ignore", invalid="ignore"):
        cast = points.astype(dtype)
    if not np.isfinite(cast).all():
        r.fail(sec, "dtype", f"{path}: the points do not fit in {np.dtype(dtype).name} "
                             f"(largest |x| = {np.max(np.abs(points)):.3g})")
    return cast


def finish_targets(r: Reader, data: DataSection, params, kind) -> Dataset:
    """The dataset of [data] with its targets, now that the network's P is known."""
    sec, key = "data", "targets"
    raw, dataset, centers = data.targets, data.dataset, data.centers
    Q, M = data.n_clusters, dataset.width
    if kind == "input":
        dim, what = M, f"Q={Q} clusters x M={M} coordinates (input cost)"
    else:
        dim, what = params.out_dim, f"Q={Q} clusters x P={params.out_dim} outputs (output cost)"
    if isinstance(raw, str):
        if raw not in TARGET_WORDS:
            r.fail(sec, key, f"unknown value {raw!r}; expected a list or one of "
                             + ", ".join(map(repr, TARGET_WORDS)))
        if raw in ("centers", "means") and kind != "input":
            r.fail(sec, key, f'"{raw}" gives input-space targets (Q x M) but [flow] kind = "output" '
                             f"needs Q x P targets; give a list or \"onehot\"")
        if raw == "centers":
            if centers is None:
                r.fail(sec, key, '"centers" needs source = "gaussian" or "balls"; '
                                 'use "means" (the cluster means) for a file')
            targets = centers
        elif raw == "means":
            from ..observe import cluster_means
            targets = cluster_means(dataset)
            if not np.isfinite(targets).all():
                r.fail(sec, key, '"means": the cluster means overflow float64 (points too large)')
        else:  # onehot
            if kind != "output":
                r.fail(sec, key, '"onehot" is for the output cost ([flow] kind = "output")')
            if params.out_dim != Q:
                r.fail(sec, key, f'"onehot" needs an output dimension P equal to the number of '
                                 f"clusters Q={Q}, but P={params.out_dim}")
            targets = np.eye(Q)
    else:
        targets = r.array(sec, {key: raw}, key, 2, shape=(None, dim), what=what)
        if targets.shape[0] != Q:
            ids = dataset.class_ids
            per = "" if np.array_equal(ids, np.arange(Q)) else \
                f"; one row per class ID {ids_text(ids)}, in this order"
            r.fail(sec, key, f"has {targets.shape[0]} rows but the data has Q={Q} clusters "
                             f"(expected {what}{per})")
    return r.api(sec, key, dataset.with_targets, targets)
