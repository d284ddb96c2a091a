"""End-to-end runs of the in-memory pipeline on small synthetic and real rasters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from tree_seg import SegmentationConfig, segment, segment_to_files
from tree_seg.config import BackboneConfig, ClusterConfig, WindowConfig
from tree_seg.exceptions import ElbowRangeWarning

TEXTURE = SegmentationConfig(
    method="kmeans", backbone=BackboneConfig(name="texture"), cluster=ClusterConfig(k=3), window=WindowConfig(scale=1.0)
)


def _write_raster(path, height, width, *, crs="EPSG:32633", transform=None, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    pattern = ((rows // 40 + cols // 40) % 3).astype(np.float32)
    image = np.stack([pattern * 80 + 20, 200 - pattern * 60, pattern * 30 + 50])
    image = np.clip(image + rng.normal(0, 8, image.shape), 1, 254).astype(np.uint8)
    transform = transform or Affine(0.1, 0, 500000.0, 0, -0.1, 4000000.0)
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8",
        crs=crs, transform=transform,
    ) as dst:
        dst.write(image)
    return path


@pytest.mark.parametrize(("height", "width"), [(1000, 700), (56, 67)])
def test_segment_output_shape_equals_input(tmp_path, height, width):
    path = _write_raster(tmp_path / "raster.tif", height, width)
    result = segment(path, TEXTURE)
    assert result.labels.shape == (height, width)
    assert result.labels.dtype == np.uint8
    assert set(np.unique(result.labels.values)) <= {0, 1, 2}


def test_segment_scale_writes_labels_on_input_grid(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 301, 203)
    config = TEXTURE.with_updates({"window": {"scale": 0.5, "window": 128, "overlap": 32}})
    result = segment(path, config)
    assert result.labels.shape == (301, 203)
    assert result.attrs["metadata"]["patch_grid"]["shape"] == [10, 7]


def test_segment_keeps_crs_and_transform(tmp_path):
    transform = Affine(0.25, 0, 600000.0, 0, -0.5, 5000000.0)
    path = _write_raster(tmp_path / "raster.tif", 120, 90, transform=transform)
    result = segment(path, TEXTURE)
    assert result.rio.crs == CRS.from_epsg(32633)
    assert result.rio.transform() == transform


def test_segment_to_files_writes_named_outputs(tmp_path):
    path = _write_raster(tmp_path / "plot_7.tif", 128, 160)
    config = TEXTURE.with_updates({"cluster": {"k": None, "k_min": 2, "k_max": 8}})
    with pytest.warns(ElbowRangeWarning):  # seeded noise has no clear elbow
        run, files = segment_to_files(path, tmp_path / "out", config)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "plot_7_kmeans_elbow.png", "plot_7_kmeans_labels.tif", "plot_7_kmeans_legend.png",
        "plot_7_kmeans_metadata.json", "plot_7_kmeans_overlay.png", "plot_7_kmeans_side_by_side.png",
    ]
    metadata = json.loads(files["metadata"].read_text())
    assert metadata["k"] == run.model.k
    assert metadata["k_source"] == "elbow"
    assert metadata["elbow"]["ks"] == [2, 3, 4, 5, 6, 7, 8]
    assert set(metadata["profile"]["stage_seconds"]) >= {"features", "clustering", "labels"}
    assert metadata["backbone"]["name"] == "texture"
    with rasterio.open(files["labels"]) as src:
        assert src.dtypes[0] == "uint8"
        assert src.nodata == 255
        assert src.crs == CRS.from_epsg(32633)


def test_segment_marks_nodata_pixels_255(tmp_path):
    path = tmp_path / "collar.tif"
    _write_raster(path, 200, 200)
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, :60] = 0
        data[:, :60, :] = 0
        dst.write(data)
    result = segment(path, TEXTURE)
    labels = result.labels.values
    assert (labels[:, :60] == 255).all()
    assert (labels[:60, :] == 255).all()
    assert (labels[70:, 70:] != 255).all()


def test_segment_head_refine_returns_responsibilities(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 160, 160)
    config = TEXTURE.with_updates({"method": "head-refine", "head_refine": {"blend": "neighbour"}})
    result = segment(path, config, return_scores=True)
    resp = result.responsibilities
    assert resp.dims == ("cluster", "cell_y", "cell_x")
    assert resp.shape == (3, 10, 10)
    np.testing.assert_allclose(resp.sum("cluster").values, 1.0, atol=1e-5)
    assert result.attrs["method"] == "head-refine"
    assert result.attrs["metadata"]["head_refine"]["alpha"] == config.head_refine.alpha


def test_segment_dk41_local_cs_round_trips(shared_data, tmp_path):
    source = shared_data / "denmark_crowns" / "dk41_image.tif"
    _, files = segment_to_files(source, tmp_path, TEXTURE, pictures=False)
    with rasterio.open(source) as src, rasterio.open(files["labels"]) as out:
        assert out.crs.to_wkt() == src.crs.to_wkt()
        assert "LOCAL_CS" in out.crs.to_wkt()
        assert out.transform == src.transform
        assert out.shape == src.shape
    metadata = json.loads(files["metadata"].read_text())
    assert metadata["input"]["band_indices"] == [1, 2, 3]


def test_segment_sjer_keeps_non_square_pixels(shared_data, tmp_path):
    source = shared_data / "neon" / "SJER_477.tif"
    _, files = segment_to_files(source, tmp_path, TEXTURE, pictures=False)
    with rasterio.open(source) as src, rasterio.open(files["labels"]) as out:
        assert out.transform.a == src.transform.a
        assert out.transform.e == src.transform.e
        assert abs(out.transform.a) != abs(out.transform.e)
        assert out.crs == src.crs


@pytest.mark.filterwarnings("ignore::tree_seg.exceptions.ElbowRangeWarning")
def test_segment_dinov2_runs_on_real_tile(shared_data, dinov2_weights, tmp_path):
    config = SegmentationConfig(
        backbone=BackboneConfig(name="dinov2_vits14", weights=dinov2_weights),
        cluster=ClusterConfig(k_min=2, k_max=6),
    ).with_updates({"window": {"scale": 0.25, "window": 224, "overlap": 56}})
    result = segment(shared_data / "oam_tcd" / "tcd_00004_image.tif", config)
    labels = result.labels.values
    assert labels.shape == (2048, 2048)
    assert 2 <= result.attrs["k"] <= 6
    assert 0.6 < (labels == 255).mean() < 0.8  # the white collar is nodata
    assert result.attrs["metadata"]["backbone"]["weights_sha256"]
