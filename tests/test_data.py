"""Data generators, loaders, and the Dataset's handling of the points array."""
from __future__ import annotations

import numpy as np
import pytest

import truncflow as tf

CENTERS = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, -1.0], [0.0, 4.0, 2.0]])


@pytest.mark.parametrize("gen", [tf.gaussian_clusters, tf.uniform_balls])
@pytest.mark.parametrize("n", [3, 10, 301])
def test_generators_shapes_and_balance(gen, n):
    pts, lab = gen(n, CENTERS, seed=1)
    assert pts.shape == (n, 3) and pts.dtype == np.float64
    assert lab.shape == (n,) and np.issubdtype(lab.dtype, np.integer)
    counts = np.bincount(lab, minlength=3)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.all(np.diff(lab) >= 0)                      # ordered by cluster
    assert np.all(np.isfinite(pts))


@pytest.mark.parametrize("gen", [tf.gaussian_clusters, tf.uniform_balls])
def test_generators_seeded(gen):
    a = gen(50, CENTERS, seed=7)
    b = gen(50, CENTERS, seed=7)
    c = gen(50, CENTERS, seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    p32, _ = gen(50, CENTERS, seed=7, dtype=np.float32)
    assert p32.dtype == np.float32 and np.array_equal(p32, a[0].astype(np.float32))


def test_generators_geometry():
    pts, lab = tf.uniform_balls(3000, CENTERS, radius=[0.5, 1.0, 2.0], seed=2)
    dist = np.linalg.norm(pts - CENTERS[lab], axis=1)
    for q, r in enumerate([0.5, 1.0, 2.0]):
        assert dist[lab == q].max() <= r * (1 + 1e-12)
        assert dist[lab == q].max() > 0.9 * r
    pts, lab = tf.gaussian_clusters(30000, CENTERS, std=[0.5, 1.0, 2.0], seed=3)
    for q, s in enumerate([0.5, 1.0, 2.0]):
        d = pts[lab == q] - CENTERS[q]
        assert np.all(np.abs(d.mean(axis=0)) < 0.1 * s)
        assert np.all(np.abs(d.std(axis=0) / s - 1) < 0.05)


def test_generator_errors():
    with pytest.raises(ValueError, match=r"smaller than the number of clusters"):
        tf.gaussian_clusters(2, CENTERS)
    with pytest.raises(ValueError, match=r"std must be finite and >= 0"):
        tf.gaussian_clusters(10, CENTERS, std=-1.0)
    with pytest.raises(ValueError, match=r"radius must be finite and >= 0"):
        tf.uniform_balls(10, CENTERS, radius=np.nan)
    with pytest.raises(ValueError, match=r"centers.*non-finite"):
        tf.uniform_balls(10, np.array([[np.nan, 0.0]]))


# ------------------------------------------------------------------ loaders
@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((12, 3))
    lab = rng.integers(0, 4, 12)
    return pts, lab


def check_loaded(loaded, pts, lab, exact=True):
    p, l = loaded
    assert p.shape == pts.shape and l.shape == lab.shape
    assert np.issubdtype(l.dtype, np.integer) and np.array_equal(l, lab)
    assert np.array_equal(p, pts) if exact else np.allclose(p, pts, rtol=1e-15, atol=0)
    ds = tf.Dataset(p, l, np.zeros((4, 3)))
    assert ds.n_points == 12 and ds.width == 3


def test_load_npy(tmp_path, table):
    pts, lab = table
    np.save(tmp_path / "d.npy", np.column_stack([pts, lab]))
    check_loaded(tf.load_points(tmp_path / "d.npy"), pts, lab)
    check_loaded(tf.load_points(str(tmp_path / "d.npy")), pts, lab)


def test_load_npz(tmp_path, table):
    pts, lab = table
    np.savez(tmp_path / "d.npz", points=pts, labels=lab)
    check_loaded(tf.load_points(tmp_path / "d.npz"), pts, lab)
    np.savez(tmp_path / "e.npz", X=pts, y=lab)
    check_loaded(tf.load_points(tmp_path / "e.npz", points_key="X", labels_key="y"), pts, lab)


def test_load_csv(tmp_path, table):
    pts, lab = table
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([pts, lab]), delimiter=",", fmt="%.17g", header="x,y,z,label")
    check_loaded(tf.load_points(path), pts, lab)
    one = tmp_path / "one.csv"
    one.write_text("1.5,2.5,1\n")
    p, l = tf.load_points(one)
    assert p.shape == (1, 2) and l.tolist() == [1]


def test_load_errors(tmp_path, table):
    pts, lab = table
    with pytest.raises(ValueError, match=r"not found.*nope\.npy"):
        tf.load_points(tmp_path / "nope.npy")
    (tmp_path / "d.txt").write_text("1,2,0\n")
    with pytest.raises(ValueError, match=r"d\.txt.*unknown data format '\.txt'"):
        tf.load_points(tmp_path / "d.txt")
    np.savez(tmp_path / "d.npz", points=pts, labels=lab)
    with pytest.raises(ValueError, match=r"d\.npz.*no array named 'X'"):
        tf.load_points(tmp_path / "d.npz", points_key="X")
    with pytest.raises(ValueError, match=r"no array named 'y'.*found.*points"):
        tf.load_points(tmp_path / "d.npz", labels_key="y")
    np.save(tmp_path / "flat.npy", pts[:, 0])
    with pytest.raises(ValueError, match=r"flat\.npy.*expected a table of shape \(N, M\+1\)"):
        tf.load_points(tmp_path / "flat.npy")
    np.save(tmp_path / "frac.npy", np.column_stack([pts, lab + 0.5]))
    with pytest.raises(ValueError, match=r"frac\.npy.*labels must be integers"):
        tf.load_points(tmp_path / "frac.npy")
    (tmp_path / "bad.csv").write_text("1,2,x\n")
    with pytest.raises(ValueError, match=r"bad\.csv"):
        tf.load_points(tmp_path / "bad.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy"):
        tf.load_points(tmp_path / "junk.npy")


# ------------------------------------------------------------------ Dataset
def test_dataset_keeps_float64_points_without_copy():
    pts, lab = tf.gaussian_clusters(20, CENTERS, seed=0)
    assert pts.flags.c_contiguous
    ds = tf.Dataset(pts, lab, CENTERS)
    assert ds.points.dtype == np.float64 and np.shares_memory(ds.points, pts)
    assert ds.n_points == 20 and ds.width == 3 and ds.n_clusters == 3
    assert np.array_equal(ds.counts, np.bincount(lab, minlength=3))
    assert ds.labels.dtype == np.int64 and not ds.labels.flags.writeable
    assert not ds.targets.flags.writeable


def test_dataset_keeps_float32_and_layouts():
    pts, lab = tf.gaussian_clusters(20, CENTERS, seed=0, dtype=np.float32)
    ds = tf.Dataset(pts, lab, CENTERS)
    assert ds.points.dtype == np.float32 and np.shares_memory(ds.points, pts)
    f = np.asfortranarray(pts.astype(np.float64))
    ds = tf.Dataset(f, lab, CENTERS)
    assert np.shares_memory(ds.points, f) and ds.points.flags.f_contiguous
    view = f[::2, ::-1]
    ds = tf.Dataset(view, lab[::2], CENTERS)
    assert np.shares_memory(ds.points, f) and np.array_equal(ds.points, view)
    with pytest.warns(tf.data.EmptyClusterWarning, match=r"cluster\(s\) 2"):     # cluster 2 unused
        ds = tf.Dataset(np.arange(6).reshape(2, 3), [0, 1], CENTERS)     # integers become float64
    assert ds.points.dtype == np.float64


def test_dataset_with_targets():
    pts, lab = tf.gaussian_clusters(9, CENTERS, seed=0)
    ds = tf.Dataset(pts, lab, CENTERS)
    ds2 = ds.with_targets(np.zeros((3, 2)))
    assert ds2.targets.shape == (3, 2) and np.shares_memory(ds2.points, pts)
    assert np.array_equal(ds2.labels, ds.labels)
    with pytest.raises(ValueError, match=r"label 2 out of range"):
        ds.with_targets(np.zeros((2, 3)))


# --------------------------------------------- hostile files (issue items 5 and 7)
def test_loader_keeps_class_ids_and_dataset_maps_them(tmp_path):
    pts = np.arange(12.0).reshape(6, 2)
    np.save(tmp_path / "d.npy", np.column_stack([pts, [10, 10**6, 10, 10**6, 10, 10]]))
    p, lab = tf.load_points(tmp_path / "d.npy")
    assert lab.tolist() == [10, 10**6, 10, 10**6, 10, 10]            # as in the file
    ds = tf.Dataset.from_class_ids(p, lab, [[0.0, 0.0], [1.0, 1.0]])
    assert ds.n_clusters == 2 and ds.class_ids.tolist() == [10, 10**6] and ds.counts.tolist() == [4, 2]


@pytest.mark.parametrize("labels, pattern", [
    (np.array([0.0, np.nan, 1.0]), r"labels\[1\] = nan"),
    (np.array([0.0, 1.5, 1.0]), r"labels\[1\] = 1.5 is not an integer"),
    (np.array([True, False, True]), r"labels must be integers.*dtype bool"),
    (np.array([0, 1]), r"labels have shape \(2,\), expected \(3,\)"),
])
def test_loader_refuses_bad_labels(tmp_path, labels, pattern):
    np.savez(tmp_path / "d.npz", points=np.zeros((3, 2)), labels=labels)
    with pytest.raises(ValueError, match=rf"d\.npz: .*{pattern}"):
        tf.load_points(tmp_path / "d.npz")


@pytest.mark.parametrize("points, pattern", [
    (np.zeros((0, 2)), r"points is empty"),
    (np.zeros((3, 2), dtype=complex), r"points must be real"),
    (np.array([[1.0, np.inf], [0.0, 0.0], [1.0, 1.0]]), r"points contains 1 non-finite.*\(0, 1\)"),
    (np.zeros((3, 2), dtype=[("a", "f8")]), r"not plain numbers"),
])
def test_loader_refuses_bad_points(tmp_path, points, pattern):
    np.savez(tmp_path / "d.npz", points=points, labels=np.zeros(points.shape[0], dtype=int))
    with pytest.raises(ValueError, match=rf"d\.npz: .*{pattern}"):
        tf.load_points(tmp_path / "d.npz")


def test_loader_refuses_empty_csv_without_warning(tmp_path):
    import warnings
    (tmp_path / "empty.csv").write_text("# only a comment\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"empty\.csv"):
            tf.load_points(tmp_path / "empty.csv")


def test_loader_checks_the_npy_header_before_reading(tmp_path):
    """A header claiming 10^12 rows over a file of a few bytes is refused, not allocated."""
    import zipfile

    import numpy.lib.format as fmt
    path = tmp_path / "lie.npy"
    with open(path, "wb") as f:
        fmt.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
        f.write(np.zeros((4, 3)).tobytes())
    with pytest.raises(ValueError, match=r"lie\.npy: table: the header claims shape \(1000000000000, 3\).*"
                                         r"truncated or corrupt"):
        tf.load_points(path)
    with zipfile.ZipFile(tmp_path / "lie2.npz", "w") as z:
        with z.open("points.npy", "w") as f:
            fmt.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 2)})
            f.write(np.zeros(8).tobytes())
        with z.open("labels.npy", "w") as f:
            np.save(f, np.zeros(4))
    with pytest.raises(ValueError, match=r"lie2\.npz: points: the header claims shape \(1000000000, 2\)"):
        tf.load_points(tmp_path / "lie2.npz")


def test_generated_points_overflow_is_refused_without_warning():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"generated points overflow float64.*std"):
            tf.gaussian_clusters(10, [[0.0, 0.0]], std=1e308, seed=0)
        with pytest.raises(ValueError, match=r"generated points overflow float32.*radius"):
            tf.uniform_balls(10, [[0.0, 0.0]], radius=1e300, seed=0, dtype=np.float32)


# ----------------------------------------------------- class IDs in configurations
def _file_config(tmp_path, labels, targets, dtype="float64", values=None):
    pts = np.random.default_rng(0).standard_normal((len(labels), 2)) if values is None else values
    np.save(tmp_path / "d.npy", np.column_stack([pts, labels]))
    (tmp_path / "job.toml").write_text(f'[data]\nsource = "file"\npath = "d.npy"\ndtype = "{dtype}"\n'
                                       f"targets = {targets}\n[network]\nlayers = 1\n[flow]\nt_end = 1.0\n")
    return tmp_path / "job.toml"


@pytest.mark.parametrize("ids", [(1, 2), (0, 10**6)])
def test_config_maps_file_class_ids(tmp_path, ids):
    from truncflow.config import load_config
    cfg = load_config(_file_config(tmp_path, np.repeat(ids, 5), '"means"'))
    assert cfg.dataset.n_clusters == 2 and cfg.dataset.class_ids.tolist() == list(ids)
    assert cfg.dataset.counts.tolist() == [5, 5]
    assert f"class IDs {ids[0]}, {ids[1]}" in cfg.describe()
    cfg = load_config(_file_config(tmp_path, np.repeat(ids, 5), "[[0.0, 0.0], [1.0, 1.0]]"))
    assert cfg.dataset.targets.tolist() == [[0.0, 0.0], [1.0, 1.0]]


def test_config_targets_rows_name_the_class_ids(tmp_path):
    from truncflow.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"\[data\] targets: has 3 rows but the data has Q=2 clusters.*"
                                          r"one row per class ID 1, 2, in this order"):
        load_config(_file_config(tmp_path, np.repeat([1, 2], 5), "[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]"))


def test_config_float32_overflow_of_file_points(tmp_path):
    from truncflow.config import ConfigError, load_config
    values = np.array([[1e300, 0.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match=r"\[data\] dtype: .* do not fit in float32"):
        load_config(_file_config(tmp_path, [0, 1], '"means"', dtype="float32", values=values))


@pytest.mark.long  # compiles the gradient kernels for a strided read-only (memory-mapped) array
def test_a_memory_mapped_npy_stays_in_its_file(tmp_path):
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.standard_normal((3000, 2)), rng.integers(0, 2, 3000)])
    np.save(tmp_path / "t.npy", table)
    points, labels = tf.load_points(tmp_path / "t.npy")
    assert isinstance(points.base, np.memmap) or isinstance(points, np.memmap)    # a view of the file
    assert not points.flags.owndata
    p = tf.Params.random(2, 2, seed=1)
    mapped = tf.Dataset(points, labels, np.zeros((2, 2)))
    loaded = tf.Dataset(np.array(table[:, :2]), table[:, 2], np.zeros((2, 2)))
    c1, g1 = tf.gradient(p, mapped)
    c2, g2 = tf.gradient(p, loaded)
    assert c1 == c2 and np.array_equal(g1.weights, g2.weights) and np.array_equal(g1.biases, g2.biases)


def test_labels_are_checked_block_by_block_with_the_right_index(monkeypatch):
    from truncflow import data
    monkeypatch.setattr(data, "_LABEL_BLOCK", 7)
    lab = np.zeros(40)
    lab[23] = 0.5
    with pytest.raises(ValueError, match=r"labels\[23\] = 0.5"):
        data.check_labels(lab)
    codes, ids = data.encode_labels(np.array([5, 9, 5, 7] * 5))
    assert list(ids) == [5, 7, 9] and list(codes[:4]) == [0, 2, 0, 1] and not codes.flags.writeable


def test_large_per_point_arrays_go_to_scratch_files_with_the_same_results(monkeypatch, tmp_path):
    from truncflow import _scratch
    rng = np.random.default_rng(3)
    x, lab = rng.standard_normal((5000, 2)), rng.integers(0, 3, 5000).astype(float)
    p = tf.Params.random(2, 2, seed=2)
    want = tf.simulate(p, tf.Dataset(x, lab, np.zeros((3, 2))), 0.3, method="gd", lr=0.05, n_records=4)
    monkeypatch.setattr(_scratch, "SCRATCH_BYTES", 1024)
    monkeypatch.setenv("TRUNCFLOW_SCRATCH", str(tmp_path))
    data = tf.Dataset(x, lab, np.zeros((3, 2)))
    assert isinstance(data.labels, np.memmap) and not data.labels.flags.writeable
    assert isinstance(tf.observe(p, data).pattern_hash, np.memmap)
    got = tf.simulate(p, data, 0.3, method="gd", lr=0.05, n_records=4)
    for name in want.series:
        assert np.array_equal(want.series[name], got.series[name], equal_nan=True), name
    assert list(tmp_path.iterdir()) == []            # unlinked files: nothing left behind
