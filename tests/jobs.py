"""Run configurations the command-line tests share: the default job's three clusters and two
cones at a size of the test's choosing (the built-in job, truncflow/defaults/default.toml, has
150,000 points)."""
from __future__ import annotations


def cones_job(n_points: int, flow: str, n_records: int, name: str) -> str:
    """The TOML of the default job's data and network at ``n_points`` points, with the [flow]
    section's lines ``flow``, ``n_records`` records and output name ``name``."""
    return f"""
seed = 0
[data]
source = "gaussian"
n_points = {n_points}
centers = [[-4.0, -4.0], [4.0, 4.0], [0.25, 0.25]]
std = [0.5, 0.4, 0.2]
targets = [[-1.0, -1.0], [1.5, 1.5], [0.25, 0.25]]
[network]
init = "cones"
apexes = [[-4.0, -4.0], [4.0, 4.0]]
edges = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]]
[flow]
{flow}
[record]
n_records = {n_records}
[output]
name = "{name}"
"""
