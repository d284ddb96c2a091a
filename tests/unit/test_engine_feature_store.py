"""The zarr feature store: layout, completion marks, halo reads and the settings check."""

from __future__ import annotations

import os
import pickle

import affine
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from rasterio.transform import from_origin

from tree_seg.config import SegmentationConfig
from tree_seg.engine.feature_store import (
    FeatureStore,
    feature_settings,
    settings_differences,
    settings_hash,
)
from tree_seg.exceptions import FeatureStoreMismatchError
from tree_seg.features.grid import patch_transform
from tree_seg.io.reader import open_raster

TRANSFORM = from_origin(500000.0, 4600000.0, 0.25, 0.25)
TEXTURE_INFO = {"name": "texture", "family": "texture", "patch_size": 16, "feature_dim": 4, "weights_path": None,
                "weights_sha256": None, "mean": None, "std": None, "device": "cpu", "dtype": "float32"}


@pytest.fixture
def raster(tmp_path, rng):
    path = tmp_path / "tile.tif"
    data = rng.integers(1, 255, size=(3, 40, 50), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=TRANSFORM) as dst:
        dst.write(data)
    return path


def _settings(raster, **window):
    config = SegmentationConfig().with_updates({"window": {"window": 32, "overlap": 16, **window}})
    source = open_raster(raster, config.read, chunks=None)
    return feature_settings(source, config, TEXTURE_INFO, scale=1.0, feature_dtype="float16")


def _create(path, settings, chunk_side=2):
    return FeatureStore.open_or_create(path, settings, patch_shape=(5, 7), feature_dim=4, chunk_side=chunk_side,
                                       crs_wkt="EPSG:32633", transform=TRANSFORM @ affine.Affine.scale(16, 16))


def test_feature_store_layout(tmp_path, raster):
    store = _create(tmp_path / "f.zarr", _settings(raster))
    group = zarr.open_group(tmp_path / "f.zarr", mode="r")
    assert group["features"].shape == (5, 7, 4)
    assert group["features"].chunks == (2, 2, 4)
    assert group["features"].dtype == np.float16
    assert group["valid"].chunks == (2, 2)
    assert group["done"].shape == (3, 4)
    assert group["done"].chunks == (1, 1)
    assert store.chunk_grid == (3, 4)
    assert len(store.pending_blocks()) == 12


def test_feature_store_write_marks_done(tmp_path, raster, rng):
    store = _create(tmp_path / "f.zarr", _settings(raster))
    block = store.blocks()[5]
    features = rng.random((*block.shape, 4)).astype(np.float32)
    valid = np.array([[True, False], [True, True]])
    store.write_block(block, features, valid)

    assert store.done_mask()[block.index]
    assert store.done_mask().sum() == 1
    assert store.n_valid_total() == 3
    assert block not in store.pending_blocks()
    np.testing.assert_allclose(store.read_features(block.rows, block.cols), features, atol=1e-3)
    np.testing.assert_array_equal(store.read_valid(block.rows, block.cols), valid)


def test_feature_store_halo_read_pads_invalid(tmp_path, raster):
    store = _create(tmp_path / "f.zarr", _settings(raster))
    for block in store.blocks():
        store.write_block(block, np.ones((*block.shape, 4), np.float32), np.ones(block.shape, bool))
    last = store.blocks()[-1]
    assert last.shape == (1, 1)
    features, valid = store.read_with_halo(last.rows, last.cols, 3)
    assert features.shape == (7, 7, 4)
    assert valid.shape == (7, 7)
    assert valid[:4, :4].all()
    assert not valid[4:].any()
    assert not valid[:, 4:].any()
    assert not features[4:].any()


def test_feature_store_reopen_keeps_chunks(tmp_path, raster):
    settings = _settings(raster)
    _create(tmp_path / "f.zarr", settings, chunk_side=2)
    reopened = _create(tmp_path / "f.zarr", settings, chunk_side=6)
    assert reopened.chunk_side == 2
    assert reopened.chunk_grid == (3, 4)


def test_feature_store_mismatch_names_setting(tmp_path, raster):
    _create(tmp_path / "f.zarr", _settings(raster))
    with pytest.raises(FeatureStoreMismatchError, match=r"window\.window: stored 32, now 48") as caught:
        _create(tmp_path / "f.zarr", _settings(raster, window=48))
    assert "delete" in str(caught.value)
    assert "--feature-store" in str(caught.value)


def test_feature_store_mismatch_on_changed_input(tmp_path, raster):
    settings = _settings(raster)
    _create(tmp_path / "f.zarr", settings)
    stat = raster.stat()
    os.utime(raster, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(FeatureStoreMismatchError, match="was modified \\(or touched\\) after feature store"):
        _create(tmp_path / "f.zarr", _settings(raster))


def test_feature_store_mismatch_on_rewritten_input(tmp_path, raster):
    _create(tmp_path / "f.zarr", _settings(raster))
    raster.write_bytes(raster.read_bytes() + b"0")

    with pytest.raises(FeatureStoreMismatchError, match=r"input\.size_bytes: stored"):
        _create(tmp_path / "f.zarr", _settings(raster))


def test_feature_store_rejects_foreign_group(tmp_path, raster):
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(FeatureStoreMismatchError, match="without feature-store settings"):
        _create(tmp_path / "other.zarr", _settings(raster))


def test_feature_store_rejects_plain_folder(tmp_path, raster):
    (tmp_path / "folder.zarr").mkdir()
    with pytest.raises(FeatureStoreMismatchError, match="not a zarr feature store"):
        _create(tmp_path / "folder.zarr", _settings(raster))


def test_feature_store_pickles_without_arrays(tmp_path, raster):
    store = _create(tmp_path / "f.zarr", _settings(raster))
    store.done_mask()
    assert store._arrays
    copy = pickle.loads(pickle.dumps(store))
    assert copy._arrays == {}
    assert copy.path == store.path
    assert copy.done_mask().shape == (3, 4)


def test_feature_store_georeference_in_xarray(tmp_path, raster):
    transform = patch_transform(TRANSFORM, input_shape=(40, 50), resampled_shape=(20, 25), patch_size=16)
    assert transform.a == pytest.approx(0.25 * 32)
    FeatureStore.open_or_create(tmp_path / "f.zarr", _settings(raster), patch_shape=(5, 7), feature_dim=4,
                                chunk_side=2, crs_wkt="EPSG:32633", transform=transform)
    dataset = xr.open_zarr(tmp_path / "f.zarr", consolidated=False)
    assert dataset["features"].dims == ("y", "x", "feature")
    assert float(dataset["x"][0]) == pytest.approx(500000.0 + 0.5 * 8.0)
    assert float(dataset["y"][0]) == pytest.approx(4600000.0 - 0.5 * 8.0)
    assert dataset["spatial_ref"].attrs["crs_wkt"] == "EPSG:32633"
    assert dataset["features"].attrs["grid_mapping"] == "spatial_ref"


def test_feature_settings_record_resolved_reading(raster):
    settings = _settings(raster)
    assert settings["input"]["path"] == str(raster.resolve())
    assert settings["read"]["band_indices"] == [1, 2, 3]
    assert settings["read"]["band_scale"] == [255.0, 255.0, 255.0]
    assert settings["backbone"]["weights_sha256"] is None
    assert "weights_path" not in settings["backbone"]
    assert settings["window"] == {"window": 32, "overlap": 16, "scale": 1.0}
    assert len(settings_hash(settings)) == 64


def test_settings_differences_lists_dotted_names():
    stored = {"window": {"window": 448, "overlap": 112}, "input": {"path": "a.tif"}}
    current = {"window": {"window": 448, "overlap": 56}, "input": {"path": "a.tif"}, "feature_dtype": "float16"}
    assert settings_differences(stored, current) == [("feature_dtype", None, "float16"),
                                                     ("window.overlap", 112, 56)]
