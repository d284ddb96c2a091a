"""The Dask engine end to end: chunk independence, the in-memory pipeline, resume, outputs.

Every test here runs Dask's synchronous scheduler on small synthetic
georeferenced rasters with the texture backbone. The tests on process
clusters are in ``test_engine_cluster.py``, marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasterio.transform import from_origin
from scipy import ndimage

from tree_seg.config import SegmentationConfig
from tree_seg.core.segmentation import run_segmentation, segment
from tree_seg.engine import build_feature_store, segment_many, segment_raster, tasks
from tree_seg.engine.pipeline import _executor, _open_feature_store
from tree_seg.engine.worker import clear_backbones
from tree_seg.exceptions import BackboneFallbackWarning, FeatureStoreMismatchError, InvalidInputError
from tree_seg.io.reader import open_raster

TRANSFORM = from_origin(500000.0, 4600000.0, 0.25, 0.25)


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The texture backbone runs tens of times slower with two torch threads on
    # a busy two-core machine; workers of a cluster get one thread anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pattern_raster(path, height, width, *, seed=0):
    """Write a georeferenced RGB raster of 14 Voronoi regions of 4 surface kinds, nodata 0 in one corner."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    seeds = rng.uniform([0, 0], [height, width], size=(14, 2))
    region = np.argmin((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2, axis=-1)
    kind = region % 4
    colours = np.array([[40, 90, 35], [70, 130, 50], [150, 120, 90], [110, 110, 115]], dtype=np.float64)
    texture = np.array([30.0, 12.0, 6.0, 20.0])
    noise = ndimage.gaussian_filter(rng.normal(size=(3, height, width)), sigma=(0, 1.5, 1.5)) * 3
    image = colours[kind].transpose(2, 0, 1) + noise * texture[kind]
    image = np.clip(np.rint(image), 1, 254).astype(np.uint8)
    image[:, xs + ys < 0.25 * (height + width)] = 0
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=TRANSFORM, nodata=0, tiled=True, blockxsize=256,
                       blockysize=256) as dst:
        dst.write(image)
    return path


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    return write_pattern_raster(tmp_path_factory.mktemp("pattern") / "pattern.tif", 384, 480)


@pytest.fixture(scope="module")
def pattern_odd(tmp_path_factory):
    # 513 x 770: one pixel row past two 256-pixel label chunks, and a last
    # feature chunk one patch wide, narrower than the 5-patch guided halo.
    return write_pattern_raster(tmp_path_factory.mktemp("odd") / "odd.tif", 513, 770, seed=3)


def engine_config(method="kmeans", chunk_size=256, **sections):
    settings = {
        "method": method,
        "backbone": {"name": "texture"},
        "window": {"window": 128, "overlap": 32, "scale": 1.0},
        "cluster": {"k": 4},
        "engine": {"chunk_size": chunk_size, "scheduler": "synchronous"},
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return SegmentationConfig().with_updates(settings)


def read_labels(path):
    with rasterio.open(path) as src:
        return src.read(1)


def run_engine(source, outdir, config, *, feature_dtype=None, **kwargs):
    if feature_dtype is not None:
        config = config.with_updates({"engine": {"feature_dtype": feature_dtype}})
    kwargs.setdefault("pictures", False)
    return segment_raster(source, outdir, config, progress=False, **kwargs)


@pytest.mark.parametrize("method", ["kmeans", "head-refine"])
def test_engine_chunk_sizes_identical(pattern, tmp_path, method):
    labels, windows, chunks = {}, {}, {}
    for chunk_size in (128, 256, 1024):
        result = run_engine(pattern, tmp_path / str(chunk_size), engine_config(method, chunk_size))
        labels[chunk_size] = read_labels(result.labels_path)
        windows[chunk_size] = result.metadata["engine"]["windows_computed"]
        chunks[chunk_size] = result.metadata["engine"]["feature_chunks"]

    differing = {size: int((labels[size] != labels[1024]).sum()) for size in (128, 256)}
    print(f"{method}: pixels differing from the single-chunk run: {differing} of {labels[1024].size}")
    assert differing == {128: 0, 256: 0}
    assert (labels[1024] != 255).sum() > 0.5 * labels[1024].size
    # Every window runs through the backbone once, however many chunks share it.
    assert chunks[128] > chunks[256] > chunks[1024] == 1
    assert windows[128] == windows[256] == windows[1024] > 0


@pytest.fixture(scope="module")
def head_refine_runs(pattern, tmp_path_factory):
    """Run V2 (guided blend, tau "auto", bilinear upsampling) with the engine in 128-pixel chunks and in memory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # tau "auto" also checks that the chunked margins calibrate the same tau.
    config = engine_config("head-refine", 128, labels={"upsampling": "bilinear"}, head_refine={"tau": "auto"})
    result = run_engine(pattern, tmp_path_factory.mktemp("v2"), config, feature_dtype="float32")
    expected = run_segmentation(str(pattern), config)
    torch.set_num_threads(threads)
    return result, expected


def test_engine_kmeans_matches_in_memory(pattern, tmp_path):
    config = engine_config("kmeans", 128)
    result = run_engine(pattern, tmp_path, config, feature_dtype="float32")
    expected = segment(str(pattern), config).labels.values

    differing = int((read_labels(result.labels_path) != expected).sum())
    print(f"kmeans: {differing} of {expected.size} pixels differ from segment()")
    assert differing == 0


def test_engine_float32_store_keeps_elbow(pattern, tmp_path):
    # The elbow picks K on the sample, so only a float32 store, read back
    # without rounding, promises the in-memory K on every raster.
    config = engine_config("kmeans", 128, cluster={"k": None, "k_min": 2, "k_max": 8, "elbow_threshold": 0.1})
    result = run_engine(pattern, tmp_path, config, feature_dtype="float32")
    expected = segment(str(pattern), config)

    stored = zarr.open_array(result.feature_store / "features", mode="r")
    assert stored.dtype == np.float32
    assert result.metadata["engine"]["feature_dtype"] == "float32"
    assert result.metadata["k_source"] == "elbow"
    assert result.k == json.loads(expected.attrs["metadata"])["k"]
    assert int((read_labels(result.labels_path) != expected.labels.values).sum()) == 0


def test_engine_stores_float16_by_default(pattern, tmp_path):
    result = run_engine(pattern, tmp_path, engine_config())

    assert zarr.open_array(result.feature_store / "features", mode="r").dtype == np.float16
    assert result.metadata["engine"]["feature_dtype"] == "float16"


def test_engine_head_refine_matches_in_memory(head_refine_runs):
    result, expected = head_refine_runs
    differing = int((read_labels(result.labels_path) != expected.labels).sum())
    print(f"head-refine + bilinear: {differing} of {expected.labels.size} pixels differ from the in-memory run")
    assert differing == 0


def test_engine_clusters_used_matches_in_memory(head_refine_runs):
    result, expected = head_refine_runs
    labels = read_labels(result.labels_path)

    assert result.metadata["clusters_used"] == expected.clusters_used
    assert result.metadata["clusters_used"] == np.unique(labels[labels != 255]).size
    assert 2 <= expected.clusters_used <= result.k


def test_engine_head_refine_centroids_match_refine(head_refine_runs):
    result, expected = head_refine_runs
    np.testing.assert_allclose(result.kmeans_centroids, expected.model.centroids, atol=1e-6)
    np.testing.assert_allclose(result.centroids, expected.refinement.centroids, atol=1e-5)
    record = result.metadata["head_refine"]
    assert record["tau"] == pytest.approx(expected.refinement.tau, rel=1e-6)
    assert record["iterations_run"] == expected.refinement.iterations_run
    assert record["m_steps"] == expected.refinement.iterations_run - 1
    assert record["converged"] == (expected.refinement.converged if record["m_steps"] else None)
    assert record["fell_back"] is False
    np.testing.assert_allclose(record["priors"], expected.refinement.priors, atol=1e-5)


def test_engine_float16_store_near_in_memory(pattern, tmp_path):
    config = engine_config("head-refine", 256, labels={"upsampling": "bilinear"})
    result = run_engine(pattern, tmp_path, config)
    expected = segment(str(pattern), config).labels.values

    differing = int((read_labels(result.labels_path) != expected).sum())
    print(f"float16 store: {differing} of {expected.size} pixels differ from segment()")
    assert differing <= 0.001 * expected.size


@pytest.mark.parametrize("method", ["kmeans", "head-refine"])
def test_engine_last_chunk_smaller_than_halo(pattern_odd, tmp_path, method):
    # 192 px are two window strides of 96 px, so chunks of 12 patches leave
    # a last column of one patch.
    config = engine_config(method, 192)
    result = run_engine(pattern_odd, tmp_path, config, feature_dtype="float32")
    assert result.metadata["patch_grid"]["shape"] == [33, 49]
    assert result.metadata["engine"]["feature_chunk_patches"] == 12
    expected = segment(str(pattern_odd), config).labels.values

    labels = read_labels(result.labels_path)
    assert labels.shape == (513, 770)
    assert int((labels != expected).sum()) == 0


def test_engine_half_scale_matches_in_memory(pattern_odd, tmp_path):
    config = engine_config("kmeans", 256, window={"scale": 0.5}, labels={"upsampling": "bilinear"})
    result = run_engine(pattern_odd, tmp_path, config, feature_dtype="float32")
    assert result.metadata["patch_grid"]["shape"] == [17, 25]
    expected = segment(str(pattern_odd), config).labels.values
    assert int((read_labels(result.labels_path) != expected).sum()) == 0


def test_engine_feature_chunk_needs_neighbour_seams(pattern, tmp_path):
    config = engine_config("kmeans", 96)
    source = open_raster(pattern, config.read, chunks=None)
    with _executor(None, config, False) as executor:
        store, context, _ = _open_feature_store(executor, source, config, tmp_path / "store.zarr")
    store.create_window_arrays(context.ownership)
    later = store.blocks()[-1]

    with pytest.raises(InvalidInputError, match="seam window at pixel .* is missing"):
        tasks.feature_chunk(context, later)
    assert not store.done_mask().any()


def test_engine_chunk_size_capped_at_raster(pattern, tmp_path):
    # 384 x 480 px: a 65536 px chunk would allocate zarr chunks of 65536 px.
    result = run_engine(pattern, tmp_path, engine_config("kmeans", 65536))

    assert result.metadata["engine"]["label_chunk_pixels"] == 480
    assert result.metadata["engine"]["feature_chunks"] == 1
    assert zarr.open_array(result.label_store / "labels", mode="r").chunks == (480, 480)
    assert zarr.open_array(result.feature_store / "features", mode="r").chunks[:2] == (30, 30)


def test_engine_reports_backbone_fallback_once(pattern, tmp_path):
    # backbone "auto" falls back to texture without DINOv3 weights.
    clear_backbones()
    config = engine_config("kmeans", 128).with_updates({"backbone": {"name": "auto"}})

    with pytest.warns(BackboneFallbackWarning) as caught:
        result = run_engine(pattern, tmp_path, config)

    assert len([w for w in caught if issubclass(w.category, BackboneFallbackWarning)]) == 1
    assert result.metadata["backbone"]["name"] == "texture"


def test_engine_interrupted_rerun_leaves_no_old_labels(pattern, tmp_path, monkeypatch):
    first = run_engine(pattern, tmp_path, engine_config("kmeans", 128))
    assert first.labels_path.is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tree_seg.engine.passes.label_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_engine(pattern, tmp_path, engine_config("kmeans", 128, cluster={"k": 3}))

    # The label store was being rewritten, so the old raster must not look finished.
    assert not first.labels_path.exists()
    assert not first.metadata_path.exists()
    assert (tmp_path / "pattern_features.zarr").is_dir()


def test_engine_nodata_pixels_255(pattern, tmp_path):
    result = run_engine(pattern, tmp_path, engine_config())
    labels = read_labels(result.labels_path)
    _, valid = open_raster(pattern, engine_config().read).read()
    nodata = ~valid
    assert nodata.sum() > 0.1 * nodata.size
    assert (labels[nodata] == 255).all()
    assert (labels[~nodata] < 4).all()


def test_engine_resume_after_interrupt(pattern, tmp_path):
    config = engine_config("head-refine", 96)
    store_path = tmp_path / "partial" / "pattern_features.zarr"
    build_feature_store(pattern, store_path, config, chunks=[(0, 0), (1, 2), (3, 4)], progress=False)
    done = zarr.open_array(store_path / "done", mode="r")[...]
    assert int(done.sum()) == 3
    # Seam windows stay stored while other chunks still need them.
    partial_windows = int((zarr.open_array(store_path / "window_state", mode="r")[...] == 1).sum())
    assert partial_windows > 0

    resumed = run_engine(pattern, tmp_path / "partial", config)
    fresh = run_engine(pattern, tmp_path / "fresh", config)

    assert resumed.metadata["engine"]["feature_chunks_computed"] == resumed.metadata["engine"]["feature_chunks"] - 3
    assert resumed.metadata["engine"]["windows_computed"] < fresh.metadata["engine"]["windows_computed"]
    assert not (resumed.feature_store / "windows").exists()
    assert not (resumed.feature_store / "window_state").exists()
    for name in ("features", "valid"):
        np.testing.assert_array_equal(zarr.open_array(resumed.feature_store / name, mode="r")[...],
                                      zarr.open_array(fresh.feature_store / name, mode="r")[...])
    np.testing.assert_array_equal(read_labels(resumed.labels_path), read_labels(fresh.labels_path))


def test_engine_rerun_reuses_store(pattern, tmp_path):
    first = run_engine(pattern, tmp_path, engine_config("kmeans", 192))
    second = run_engine(pattern, tmp_path, engine_config("head-refine", 512, head_refine={"blend": "neighbour"}))
    assert first.metadata["engine"]["feature_chunks_computed"] == first.metadata["engine"]["feature_chunks"]
    assert second.metadata["engine"]["feature_chunks_computed"] == 0
    assert second.metadata["engine"]["feature_chunk_patches"] == 12


def test_engine_rerun_other_overlap_raises(pattern, tmp_path):
    run_engine(pattern, tmp_path, engine_config())
    with pytest.raises(FeatureStoreMismatchError, match=r"window\.overlap: stored 32, now 64"):
        run_engine(pattern, tmp_path, engine_config(window={"overlap": 64}))


def test_engine_outputs_named_and_georeferenced(pattern, tmp_path):
    # The four surface kinds give a clear elbow at K=4 with this threshold.
    config = engine_config(cluster={"k": None, "k_min": 2, "k_max": 6, "elbow_threshold": 0.3})
    result = run_engine(pattern, tmp_path, config, pictures=True)

    assert result.labels_path == tmp_path / "pattern_kmeans_labels.tif"
    assert result.metadata_path == tmp_path / "pattern_kmeans_metadata.json"
    assert result.label_store == tmp_path / "pattern_kmeans_labels.zarr"
    assert result.feature_store == tmp_path / "pattern_features.zarr"
    for kind in ("legend", "overlay", "side_by_side", "elbow"):
        assert (tmp_path / f"pattern_kmeans_{kind}.png").is_file()

    with rasterio.open(pattern) as src, rasterio.open(result.labels_path) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform
        assert out.nodata == 255
        assert out.profile["tiled"]
        assert out.block_shapes[0] == (256, 256)
        assert out.overviews(1) == [2]

    record = json.loads(result.metadata_path.read_text())
    assert record["k"] == result.k
    assert record["k_source"] == "elbow"
    assert record["elbow"]["ks"] == [2, 3, 4, 5, 6]
    assert result.k == 4
    assert record["outputs"]["labels"] == str(result.labels_path)
    assert set(record["profile"]["stage_seconds"]) == {"open", "features", "clustering", "labels"}
    assert set(result.timings) == {"open", "features", "clustering", "labels", "write"}
    assert result.k == int(segment(str(pattern), config).attrs["k"])


def test_engine_segment_many_reports_failure(pattern, pattern_odd, tmp_path):
    missing = tmp_path / "missing.tif"
    items = segment_many([pattern, missing, pattern_odd], tmp_path / "out", engine_config(), pictures=False,
                         progress=False)

    assert [item.status for item in items] == ["ok", "failed", "ok"]
    assert "not found" in items[1].error
    assert items[0].result.labels_path == tmp_path / "out" / "pattern_kmeans_labels.tif"
    assert items[2].result.labels_path == tmp_path / "out" / "odd_kmeans_labels.tif"
    assert items[2].result.labels_path.is_file()


def test_engine_slic_chunked_differs_little(pattern_odd, tmp_path):
    config = engine_config("kmeans", 256, labels={"refine": "slic"})
    result = run_engine(pattern_odd, tmp_path, config, feature_dtype="float32")
    expected = segment(str(pattern_odd), config).labels.values
    unsnapped = segment(str(pattern_odd), engine_config("kmeans", 256)).labels.values

    differing = int((read_labels(result.labels_path) != expected).sum())
    snapped = int((expected != unsnapped).sum())
    print(f"SLIC in 256-pixel chunks: {differing} of {expected.size} pixels differ from whole-raster SLIC, "
          f"which itself changes {snapped} pixels")
    assert result.labels_path.name == "odd_kmeans+slic_labels.tif"
    assert differing < 0.05 * expected.size
    assert differing < snapped
