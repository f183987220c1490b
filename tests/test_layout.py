"""The package's layout (issue 23 item 1): no import circles; datasets told apart only in the backends;
every backend's operations and capabilities agree; a missing operation is one clear error."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import truncflow as tf
from truncflow.backends import FROZEN_PASSES, OPERATIONS, Backend, BackendLacks, Capabilities, capabilities_of
from truncflow.backends.cuda import DeviceDataset
from truncflow.backends.dask import DistributedDataset
from truncflow.backends.local import LocalBackend

PACKAGE = Path(tf.__file__).parent
DATASET_CLASSES = {"Dataset", "DistributedDataset", "DeviceDataset", "DatasetElsewhere", "LocalBackend", "Backend"}


def _modules():
    """{module name: path} of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree, top_level_only):
    """Import statements of a module: with ``top_level_only`` those executed when it is imported
    (its body and the bodies of top-level if/try/with blocks), else every one, functions' too."""
    if not top_level_only:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)


def _import_graph(top_level_only=True):
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text()), top_level_only):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (base + "." + node.module if node.module else base) if node.level else node.module
                # "from X import y": the module X.y when there is one, else X
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module level", "functions too"])
def test_the_package_has_no_import_cycle(top_level_only):
    """No circle among the modules' imports: neither those run at import time nor, counting the
    imports inside functions too, the late ones (compute, data, device and distributed used to
    import each other in a circle through those)."""
    graph = _import_graph(top_level_only)
    assert "truncflow.backends.local" in graph["truncflow.data"]        # the graph is read at all
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_backends_ask_a_dataset_its_type():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("truncflow.backends"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                named = {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(node.args[1])}
                if named & DATASET_CLASSES:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, "isinstance on a dataset class outside truncflow/backends: " + ", ".join(offenders)


def test_the_backends_import_neither_dask_nor_numba_cuda():
    code = ("import sys, truncflow, truncflow.backends.dask, truncflow.backends.cuda, truncflow.distributed, "
            "truncflow.device\n"
            "print('numba.cuda' in sys.modules, 'dask' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("backend", [tf.Dataset, DistributedDataset, DeviceDataset])
def test_each_backend_implements_what_it_declares(backend):
    caps = backend.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.operations <= set(OPERATIONS + FROZEN_PASSES)
    assert set(OPERATIONS) <= caps.operations
    for name in OPERATIONS + FROZEN_PASSES:
        implemented = getattr(backend, name) is not getattr(Backend, name)
        assert implemented == (name in caps.operations), name
    assert caps.methods <= {"rk45", "gd", "sgd", "events", "kinks"}


def test_the_public_datasets_are_the_backends():
    assert issubclass(tf.Dataset, LocalBackend)
    assert tf.DistributedDataset is DistributedDataset and tf.DeviceDataset is DeviceDataset
    from truncflow import device, distributed
    assert device.DeviceDataset is DeviceDataset and distributed.DistributedDataset is DistributedDataset
    ds = tf.Dataset(np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 2)))
    caps = capabilities_of(ds)
    assert caps.points_here and caps.serial_steps and caps.checkpoints and caps.ensembles
    assert capabilities_of(np.zeros((4, 2))) is None
    assert not DistributedDataset.capabilities.points_here and not DeviceDataset.capabilities.points_here


def test_a_missing_operation_names_the_operation_and_the_backend():
    class Bare(Backend):
        capabilities = Capabilities(name="bare", where="nowhere", points_here=False, serial_steps=False,
                                    checkpoints=False, methods=frozenset(), float32=False, ensembles=False,
                                    operations=frozenset(), bring_here="bring them here")
    with pytest.raises(BackendLacks, match=r"the bare backend has no 'frozen_points' pass: it needs the points "
                                           r"here \(bring them here\)"):
        Bare().frozen_points(None, 1024)
    with pytest.raises(BackendLacks, match=r"the bare backend has no 'observe' pass$"):
        Bare().observe(*[None] * 10)
    err = BackendLacks("observe", "test")
    assert (err.operation, err.backend) == ("observe", "test") and isinstance(err, ValueError)


def test_local_frozen_points_hold_the_patterns_of_the_points():
    from truncflow.kernels import config
    from truncflow.kernels.forward import patterns_kernel
    from truncflow.tiles import kernel_arrays
    rng = np.random.default_rng(0)
    ds = tf.Dataset(rng.standard_normal((40, 3)), np.arange(40) % 2, np.zeros((2, 3)))
    p = tf.Params.random(2, 3, seed=1)
    chunk = config.chunk_size(40)
    whole = patterns_kernel(ds.points, *kernel_arrays(p), chunk)
    fp = ds.frozen_points(kernel_arrays(p), chunk)
    np.testing.assert_array_equal(fp.whole_pattern(), whole)
    idx = np.array([3, 7, 20])
    np.testing.assert_array_equal(fp.pattern(idx), whole[idx])
    fp.set_pattern(idx, np.zeros((3,) + whole.shape[1:], np.uint64))
    assert not fp.pattern(idx).any() and np.array_equal(fp.pattern([4]), whole[[4]])
    pts, lab, rows = fp.data(idx)
    np.testing.assert_array_equal(pts[rows], ds.points[idx])
    np.testing.assert_array_equal(lab[rows], ds.labels[idx])
