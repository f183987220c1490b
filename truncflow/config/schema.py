"""The configuration's schema: its sections and keys, each with its meaning, and the
values and combinations a key allows."""
from __future__ import annotations

import numpy as np

from ..engine.methods import METHOD_OPTIONS, methods_taking
from ..params import MAX_LAYERS

#: Name shown for the built-in default job.
DEFAULT_CONFIG_NAME = "<built-in default>"

#: Sections and their keys, each with a short description (also the list of allowed keys).
SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "description": "text printed when the job starts",
        "seed": "default seed (integer) of [data], [network] and the minibatches of [flow] method = \"sgd\"",
    },
    "data": {
        "source": '"gaussian", "balls" or "file"',
        "n_points": "number of points N (gaussian, balls)",
        "centers": "Q x M list of cluster centers (gaussian, balls)",
        "std": "standard deviation, one number or one per cluster (gaussian)",
        "radius": "ball radius, one number or one per cluster (balls)",
        "seed": "random seed (gaussian, balls)",
        "dtype": '"float64" or "float32"',
        "path": ".npy, .npz or .csv file of points and labels, relative to the config file (file)",
        "points_key": 'name of the points array in an .npz file (default "points")',
        "labels_key": 'name of the labels array in an .npz file (default "labels")',
        "targets": 'Q x M (input cost) or Q x P (output cost) list, one row per cluster (for a file: per '
                   'distinct class ID, in increasing order), or "centers", "means", "onehot"',
    },
    "network": {
        "layers": f"number of hidden layers L (1 to {MAX_LAYERS})",
        "init": '"identity", "random", "cones", "aligned", "layers" or "cumulative"',
        "scale": "random: W_l = I + scale * G / sqrt(M)",
        "bias_scale": "random: b_l ~ N(0, bias_scale^2)",
        "seed": "random: seed of the layers (and of a random output layer); aligned: of random frames",
        "apexes": "cones: L x M list of cone apexes p^(l)",
        "edges": "cones: L x M x M list, edges[l][j][k] = coordinate j of edge v_k (default identity)",
        "frames": 'aligned: L x M x M list of orthogonal frames R^(l), or "identity" (default) or "random"',
        "scales": "aligned: scales lambda^(l), one number or an L x M list (default 1)",
        "thresholds": "aligned: L x M list of thresholds t^(l) (the layer clips R^(l) z from below at t^(l))",
        "weights": "layers: L x M x M layer weights W_l",
        "biases": "layers: L x M layer biases b_l",
        "cum_weights": "cumulative: L x M x M cumulative weights W^(l)",
        "cum_biases": "cumulative: L x M cumulative biases b^(l)",
        "out_dim": "output dimension P of a random output layer (output cost)",
        "out_weight": "P x M output weight (output cost)",
        "out_bias": "P output bias (output cost)",
    },
    "flow": {
        "kind": '"input" or "output" cost',
        "wrt": '"cumulative", "layers" or "aligned" (init = "aligned"): the parameters that flow',
        "method": '"rk45", "gd", "sgd" (stochastic gradient descent on minibatches), "events" (exact, aligned '
                  'model, input cost) or "kinks" (experimental: locates pattern changes, follows sliding modes)',
        "train": '"all", "weights" or "biases"',
        "frozen_layers": "list of 1-based hidden layers that stay fixed",
        "t_end": "flow time to reach (> 0)",
        "rtol": "rk45: relative tolerance",
        "atol": "rk45: absolute tolerance",
        "first_step": "rk45: first step",
        "max_step": "rk45: largest step",
        "lr": "gd, sgd: learning rate (step in flow time)",
        "batch_size": "sgd: points per minibatch (at most N unless replacement; N without replacement is gd)",
        "replacement": "sgd: draw each batch with replacement (true) or visit every point once per epoch "
                       "(false, default)",
        "seed": "sgd: seed of the minibatches (integer >= 0; default: the job's seed, else 0)",
        "momentum": "sgd: heavy-ball momentum in [0, 1) (default 0)",
        "record_truncation_times": "events: keep every point's first truncation time (true or false)",
        "cost_tol": "stop when the cost falls below",
        "grad_tol": "stop when the gradient norm falls below",
        "max_evals": "stop after this many gradient evaluations",
        "max_time": "stop after this many wall-clock seconds",
    },
    "record": {
        "n_records": "number of records (2 to 10^6): 0, then log-spaced from t_first to t_end (default 50)",
        "t_first": "first positive record time with n_records (default t_end/1000)",
        "times": "list of flow times in [0, t_end] to record at",
    },
    "output": {
        "folder": 'folder the results go to (default "truncflow-out"), relative to the working directory',
        "name": "name of the job (default: the config file's name)",
    },
    "run": {
        "threads": "threads the kernels run on (default: the process's share of the machine; "
                   "--threads overrides it; results do not depend on it)",
        "device": 'where the passes over the points run: "cpu" (default) or "cuda" (a GPU; needs '
                  'pip install "truncflow[cuda]"; --device overrides it)',
        "precision": '"float64" (default) or "float32": the arithmetic of the per-point sweep of rk45 and gd '
                     "(sums over points stay float64; --precision overrides it)",
    },
    "cluster": {
        "scheduler": 'address of a running Dask scheduler, e.g. "tcp://host:8786" (--scheduler overrides it)',
        "local": "start a Dask LocalCluster of this many worker processes for the run",
        "threads_per_worker": "local: Dask threads (and kernel threads) per worker process (default 1)",
        "connect_timeout": "seconds to wait for the scheduler before giving up (default 5; --connect-timeout "
                           "overrides it)",
    },
    "sweep": {
        "<key>": 'a list of values for a top-level key (seed) or "<section>.<key>", or a range '
                 "{ start, stop[, step] } (integers) or { start, stop, num } (evenly spaced): "
                 "one run per combination",
    },
}

DATA_SOURCES = ("gaussian", "balls", "file")
INITS = ("identity", "random", "cones", "aligned", "layers", "cumulative")
DTYPES = {"float64": np.float64, "float32": np.float32}
TARGET_WORDS = ("centers", "means", "onehot")

# Keys that only make sense for some choice of another key: key -> (owner key, allowed values).
DATA_ONLY = {
    "n_points": ("gaussian", "balls"), "centers": ("gaussian", "balls"), "seed": ("gaussian", "balls"),
    "std": ("gaussian",), "radius": ("balls",),
    "path": ("file",), "points_key": ("file",), "labels_key": ("file",),
}
INIT_ONLY = {
    "scale": ("random",), "bias_scale": ("random",),
    "apexes": ("cones",), "edges": ("cones",),
    "weights": ("layers",), "biases": ("layers",),
    "cum_weights": ("cumulative",), "cum_biases": ("cumulative",),
    "frames": ("aligned",), "scales": ("aligned",), "thresholds": ("aligned",),
}
# [flow] keys that apply to some methods only (the method registry says which).
METHOD_ONLY = {key: methods_taking(key) for key in METHOD_OPTIONS}

DEFAULT_FOLDER = "truncflow-out"

#: Most records a run may ask for (as :func:`truncflow.simulate` allows).
MAX_RECORDS = 10**6
