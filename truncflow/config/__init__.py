"""Run configurations: a TOML file -> (Params, Dataset, simulate keyword arguments, output folder).

A configuration has up to six sections and two top-level keys::

    description = "what this job shows"      # optional, printed when the job starts
    seed = 0                                  # optional default seed of [data] and [network]

    [data]      where the points come from, and the per-cluster targets
    [network]   the initial network (layers, init and its parameters, output layer)
    [flow]      the gradient flow: cost kind, parametrization, method, stopping rules
    [record]    when to record (n_records or times)
    [output]    folder and job name
    [run]       how it runs: threads, device (cpu or cuda), precision
    [sweep]     optional: lists of values for any of the keys above, one run per
                combination (:mod:`truncflow.sweep`)

Every key is listed in :data:`SCHEMA` with its meaning. Everything is checked
before anything runs: a missing file, a TOML syntax error, an unknown section or
key, a value of the wrong type or shape, or a value the API refuses raises one
:class:`ConfigError` (a ``ValueError``) whose message names the file, the
section and key, and the problem.

The package's modules: :mod:`.schema` (the sections and keys), :mod:`.reader` (checked
reads and the wording of errors), one builder per section (:mod:`.data`, :mod:`.network`
with one small builder per ``init``, :mod:`.flow` for [flow] and [record], :mod:`.run`
for [output], [run] and [cluster]), :mod:`.runconfig` (the result) and :mod:`.build`
(reading a file and passing each section's result on to the next).
"""
from __future__ import annotations

from .build import default_config_text, load_config, parse_config
from .reader import ConfigError
from .runconfig import RunConfig
from .schema import (DATA_SOURCES, DEFAULT_CONFIG_NAME, DEFAULT_FOLDER, DTYPES, INITS,  # noqa: F401
                     MAX_RECORDS, SCHEMA, TARGET_WORDS)

__all__ = ["ConfigError", "RunConfig", "load_config", "parse_config", "default_config_text",
           "DEFAULT_CONFIG_NAME", "SCHEMA"]
