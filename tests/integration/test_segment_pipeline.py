"""End-to-end runs of the in-memory pipeline on small synthetic and real rasters."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from tree_seg import SegmentationConfig, segment, segment_to_files
from tree_seg.config import BackboneConfig, ClusterConfig, WindowConfig
from tree_seg.exceptions import ConfigurationError, ElbowRangeWarning

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
    assert json.loads(result.attrs["metadata"])["patch_grid"]["shape"] == [10, 7]


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


def _assert_transform_close(actual, expected):
    # A micrometre, well below any pixel size and above float64 rounding at 5e6 m.
    np.testing.assert_allclose(tuple(actual), tuple(expected), rtol=0, atol=1e-6)


def test_segment_head_refine_returns_responsibilities(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 160, 160)
    config = TEXTURE.with_updates({"method": "head-refine", "head_refine": {"blend": "neighbour"}})
    result, resp = segment(path, config, return_scores=True)
    assert resp.dims == ("cluster", "y", "x")
    assert resp.shape == (3, 10, 10)
    assert resp.dtype == np.float32
    np.testing.assert_array_equal(resp.cluster.values, [0, 1, 2])
    np.testing.assert_allclose(resp.sum("cluster").values, 1.0, atol=1e-5)
    assert "responsibilities" not in result
    assert result.attrs["method"] == "head-refine"
    assert json.loads(result.attrs["metadata"])["head_refine"]["alpha"] == config.head_refine.alpha
    # One E-step runs no M-step, so there is nothing to converge.
    assert result.attrs["m_steps"] == 0
    assert "converged" not in result.attrs
    assert json.loads(result.attrs["metadata"])["head_refine"]["converged"] is None


def test_segment_dataset_with_nodata_saves_as_zarr(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 160, 160)
    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
        data = dst.read()
        data[:, :40, :] = 0
        dst.write(data)
    result = segment(path, TEXTURE.with_updates({"method": "head-refine", "head_refine": {"iterations": 3}}))

    result.to_zarr(tmp_path / "result.zarr", consolidated=False)
    reopened = xr.open_zarr(tmp_path / "result.zarr", mask_and_scale=False, consolidated=False)

    assert reopened["labels"].dtype == np.uint8
    assert int((reopened["labels"].values == 255).sum()) == int((result["labels"].values == 255).sum()) > 0
    assert json.loads(reopened.attrs["metadata"])["k"] == result.attrs["k"]


def test_segment_dataset_saves_as_netcdf(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 160, 160)
    config = TEXTURE.with_updates({"method": "head-refine", "head_refine": {"iterations": 3}})
    result, scores = segment(path, config, return_scores=True)

    result.to_netcdf(tmp_path / "result.nc")
    scores.to_netcdf(tmp_path / "scores.nc")
    with xr.open_dataset(tmp_path / "result.nc", decode_coords="all") as reopened:
        np.testing.assert_array_equal(reopened["labels"].values, result["labels"].values)
        assert json.loads(reopened.attrs["metadata"])["k"] == result.attrs["k"]
        assert bool(reopened.attrs["converged"]) == result.attrs["converged"]
        assert reopened["labels"].rio.crs == result.rio.crs


def test_responsibilities_crop_padding_cells(tmp_path):
    # Guided cells are 4 px: 21 x 27 patches of 16 px give 84 x 108 cells, of
    # which 82 x 107 overlap the 327 x 428 input.
    path = _write_raster(tmp_path / "raster.tif", 327, 428)
    config = TEXTURE.with_updates({"method": "head-refine", "head_refine": {"blend": "guided"}})
    result, resp = segment(path, config, return_scores=True)
    assert resp.dims == ("cluster", "y", "x")
    assert resp.shape == (3, 82, 107)
    assert resp.attrs["cell_size_px"] == 4
    assert resp.rio.crs == CRS.from_epsg(32633)
    assert resp.rio.crs == result.rio.crs
    _assert_transform_close(resp.rio.transform(), Affine(0.4, 0, 500000.0, 0, -0.4, 4000000.0))
    np.testing.assert_allclose(resp.x.values[[0, -1]], [500000.2, 500000.0 + 0.4 * 106.5])
    np.testing.assert_allclose(resp.y.values[[0, -1]], [3999999.8, 4000000.0 - 0.4 * 81.5])


def test_responsibilities_cell_size_follows_scale(tmp_path):
    # At scale 0.5 the 301 x 203 input becomes 151 x 102 resampled pixels, so
    # a 16 px cell spans 16 * 301 / 151 rows and 16 * 203 / 102 columns.
    transform = Affine(0.25, 0, 600000.0, 0, -0.5, 5000000.0)
    path = _write_raster(tmp_path / "raster.tif", 301, 203, transform=transform)
    config = TEXTURE.with_updates(
        {"method": "head-refine", "head_refine": {"blend": "neighbour"}, "window": {"scale": 0.5}}
    )
    _, resp = segment(path, config, return_scores=True)
    assert resp.shape == (3, 10, 7)
    expected = transform @ Affine.scale(16 * 203 / 102, 16 * 301 / 151)
    _assert_transform_close(resp.rio.transform(), expected)
    # The transform stays on the cells after a reduction drops the encoding.
    _assert_transform_close(resp.max("cluster").rio.transform(), expected)


# Guided cells are 4 resampled px: 4 input px at scale 1 and 4 * 200 / 320 =
# 2.5 input px at scale 1.6, so the first 25 or 40 columns of cells lie on the
# 100 nodata columns only. The reader's collar buffer (3 px by default) widens
# the nodata strip, so the check for scored cells starts 4 cells further on.
@pytest.mark.parametrize(("scale", "nodata_cells"), [(1.0, 25), (1.6, 40)])
def test_responsibilities_nan_on_nodata_cells(tmp_path, scale, nodata_cells):
    path = tmp_path / "collar.tif"
    _write_raster(path, 160, 200)
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, :100] = 0
        dst.write(data)
        dst.nodata = 0
    config = TEXTURE.with_updates(
        {"method": "head-refine", "head_refine": {"blend": "guided"}, "window": {"scale": scale}}
    )
    _, resp = segment(path, config, return_scores=True)
    assert resp.dtype == np.float32
    assert np.isnan(resp.values[:, :, :nodata_cells]).all()
    valid = resp.isel(x=slice(nodata_cells + 4, None))
    assert not np.isnan(valid.values).any()
    np.testing.assert_allclose(valid.sum("cluster").values, 1.0, atol=1e-5)
    assert np.isnan(resp.idxmax("cluster").values[:, :nodata_cells]).all()


def test_bilinear_and_nearest_agree_beside_nodata_edge(tmp_path):
    # At scale 1.6 V2 leaves the cells over columns 310-316 without a score:
    # their patches are valid, but the collar buffer makes their guide
    # pixels nodata. Both upsamplings must label columns 310-313 with the
    # patch's K-means label; a zero score used to give cluster 0.
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:300, 0:340]
    image = np.stack([np.where((cols // 40 + rows // 50) % 2, 200, 40), np.full((300, 340), 120),
                      np.where(cols > 170, 180, 60)])
    image = np.clip(image + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
    image[:, :, 317:] = 0
    path = tmp_path / "edge.tif"
    with rasterio.open(path, "w", driver="GTiff", height=300, width=340, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=Affine(0.2, 0, 500000.0, 0, -0.2, 6000000.0)) as dst:
        dst.write(image)
    config = TEXTURE.with_updates({"method": "head-refine", "window": {"scale": 1.6}})

    nearest = segment(path, config.with_updates({"labels": {"upsampling": "nearest"}})).labels.values
    bilinear, scores = segment(path, config.with_updates({"labels": {"upsampling": "bilinear"}}),
                               return_scores=True)

    empty_x = scores.x.values[np.isnan(scores.values[0]).all(axis=0)]
    assert empty_x.min() < 500000.0 + 314 * 0.2
    edge = nearest[:, 310:314]
    assert (edge != 255).all()
    np.testing.assert_array_equal(bilinear.labels.values[:, 310:314], edge)


def test_responsibilities_write_geotiff(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 120, 150)
    config = TEXTURE.with_updates({"method": "head-refine", "head_refine": {"blend": "neighbour"}})
    _, resp = segment(path, config, return_scores=True)
    resp.rio.to_raster(tmp_path / "r.tif")
    with rasterio.open(tmp_path / "r.tif") as src:
        assert src.crs == CRS.from_epsg(32633)
        _assert_transform_close(src.transform, Affine(1.6, 0, 500000.0, 0, -1.6, 4000000.0))
        assert src.count == 3
        assert src.shape == (8, 10)
        assert src.dtypes[0] == "float32"
        assert np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(), resp.values)


def test_return_scores_rejects_kmeans(tmp_path):
    path = _write_raster(tmp_path / "raster.tif", 64, 64)
    with pytest.raises(ConfigurationError, match="return_scores=True needs method='head-refine'"):
        segment(path, TEXTURE, return_scores=True)


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
    assert json.loads(result.attrs["metadata"])["backbone"]["weights_sha256"]
