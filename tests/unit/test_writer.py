"""Tests of the label GeoTIFF and JSON writers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Compression

from tree_seg.exceptions import InvalidInputError
from tree_seg.io.reader import open_raster
from tree_seg.io.writer import LabelRasterWriter, overview_factors, write_json_atomic, write_label_raster

UTM33 = CRS.from_epsg(32633)
NON_SQUARE = Affine(0.5, 0.0, 400000.0, 0.0, -0.25, 5000000.0)
LOCAL_WKT = (
    'LOCAL_CS["ETRS89 / UTM zone 32N",UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


def _labels(rng: np.random.Generator, shape: tuple[int, int] = (600, 500)) -> np.ndarray:
    labels = rng.integers(0, 4, size=shape).astype(np.uint8)
    labels[:50, :] = 255
    return labels


def _open_quietly(path: Path) -> rasterio.DatasetReader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(path)


def test_write_label_raster_profile(tmp_path, rng):
    labels = _labels(rng)
    path = write_label_raster(labels, tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.count == 1
        assert src.dtypes == ("uint8",)
        assert src.nodata == 255
        assert src.block_shapes == [(256, 256)]
        assert src.profile["tiled"]
        assert src.compression == Compression.deflate
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert src.overviews(1) == [2, 4]
        assert src.crs.to_wkt() == UTM33.to_wkt()
        assert src.transform == NON_SQUARE
        assert np.array_equal(src.read(1), labels)


def test_write_label_raster_overview_mode(tmp_path):
    labels = np.zeros((512, 512), dtype=np.uint8)
    labels[:, 256:] = 3
    labels[::2, ::2] = 1
    path = write_label_raster(labels, tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        overview = src.read(1, out_shape=(256, 256))

    # Each 2 x 2 block holds one 1 and three of 0 or 3, so the mode is 0 or 3.
    assert set(np.unique(overview[:, :128]).tolist()) == {0}
    assert set(np.unique(overview[:, 128:]).tolist()) == {3}


def test_write_label_raster_local_cs_wkt_unchanged(tmp_path, rng):
    crs = CRS.from_wkt(LOCAL_WKT)
    path = write_label_raster(_labels(rng, (40, 30)), tmp_path / "labels.tif", crs=crs, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.crs.to_wkt() == crs.to_wkt()
        assert src.crs.to_epsg() is None
    assert not (tmp_path / "labels.tif.aux.xml").exists()


def test_write_label_raster_crs_as_wkt_string(tmp_path, rng):
    path = write_label_raster(_labels(rng, (40, 30)), tmp_path / "labels.tif", crs=LOCAL_WKT, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.crs.to_wkt() == CRS.from_wkt(LOCAL_WKT).to_wkt()


def test_write_label_raster_without_crs_keeps_transform(tmp_path, rng):
    path = write_label_raster(_labels(rng, (40, 30)), tmp_path / "labels.tif", crs=None, transform=NON_SQUARE)
    plain = write_label_raster(_labels(rng, (40, 30)), tmp_path / "plain.tif", crs=None, transform=None)

    with _open_quietly(path) as src:
        assert src.crs is None
        assert src.transform == NON_SQUARE
    with _open_quietly(plain) as src:
        assert src.transform == Affine.identity()


def test_write_label_raster_small_no_overviews(tmp_path, rng):
    path = write_label_raster(_labels(rng, (100, 256)), tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.overviews(1) == []


def test_write_label_raster_wrong_dtype_writes_nothing(tmp_path, rng):
    labels = _labels(rng, (40, 30)).astype(np.int64)

    with pytest.raises(InvalidInputError, match="invalid labels dtype int64: expected uint8"):
        write_label_raster(labels, tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    assert list(tmp_path.iterdir()) == []


def test_write_label_raster_wrong_shape_writes_nothing(tmp_path):
    labels = np.zeros((3, 10, 10), dtype=np.uint8)

    with pytest.raises(InvalidInputError, match=r"invalid labels of shape \(3, 10, 10\)"):
        write_label_raster(labels, tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    assert list(tmp_path.iterdir()) == []


def test_write_label_raster_failure_removes_temporary(tmp_path, rng, monkeypatch):
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.shutil, "copy", fail)

    with pytest.raises(OSError, match="disk full"):
        write_label_raster(_labels(rng), tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    assert list(tmp_path.iterdir()) == []


def test_write_label_raster_is_cloud_optimized(tmp_path, rng):
    path = write_label_raster(_labels(rng, (600, 520)), tmp_path / "labels.tif", crs=UTM33, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.block_shapes == [(256, 256)]
        assert src.overviews(1) == [2, 4]


def test_write_label_raster_replaces_existing(tmp_path, rng):
    path = tmp_path / "labels.tif"
    write_label_raster(np.zeros((20, 20), dtype=np.uint8), path, crs=UTM33, transform=NON_SQUARE)

    write_label_raster(np.ones((20, 20), dtype=np.uint8), path, crs=UTM33, transform=NON_SQUARE)

    with rasterio.open(path) as src:
        assert src.read(1).max() == 1
    assert [entry.name for entry in tmp_path.iterdir()] == ["labels.tif"]


def test_write_label_raster_missing_folder_error(tmp_path, rng):
    with pytest.raises(InvalidInputError, match="output folder .*absent not found"):
        write_label_raster(_labels(rng, (10, 10)), tmp_path / "absent" / "labels.tif", crs=UTM33,
                           transform=NON_SQUARE)


def test_label_writer_windows_and_unwritten_nodata(tmp_path, rng):
    labels = _labels(rng, (300, 280))
    path = tmp_path / "labels.tif"

    with LabelRasterWriter(path, height=300, width=280, crs=UTM33, transform=NON_SQUARE) as writer:
        writer.write_window(labels[128:300, 0:256], 128, 0)
        writer.write_window(labels[0:128, 0:256], 0, 0)
        writer.write_window(labels[0:128, 256:280], 0, 256)
        assert not path.exists()

    with rasterio.open(path) as src:
        written = src.read(1)
        assert src.overviews(1) == [2]  # the COG driver stops once a level fits one 256 px tile
    assert np.array_equal(written[:, :256], labels[:, :256])
    assert np.array_equal(written[:128, 256:], labels[:128, 256:])
    assert (written[128:, 256:] == 255).all()


def test_label_writer_exception_removes_temporary(tmp_path, rng):
    path = tmp_path / "labels.tif"

    with pytest.raises(RuntimeError, match="worker failed"):
        with LabelRasterWriter(path, height=64, width=64, crs=UTM33, transform=NON_SQUARE) as writer:
            writer.write_window(np.zeros((32, 32), dtype=np.uint8), 0, 0)
            assert len(list(tmp_path.iterdir())) == 1
            raise RuntimeError("worker failed")

    assert list(tmp_path.iterdir()) == []


def test_label_writer_window_outside_error_cleans_up(tmp_path):
    path = tmp_path / "labels.tif"

    with pytest.raises(InvalidInputError, match="invalid window at y0=40, x0=0 of shape \\(32, 32\\)"):
        with LabelRasterWriter(path, height=64, width=64, crs=UTM33, transform=NON_SQUARE) as writer:
            writer.write_window(np.zeros((32, 32), dtype=np.uint8), 40, 0)

    assert list(tmp_path.iterdir()) == []


def test_label_writer_invalid_nodata_error(tmp_path):
    with pytest.raises(InvalidInputError, match="invalid nodata=300"):
        LabelRasterWriter(tmp_path / "labels.tif", height=8, width=8, crs=None, transform=None, nodata=300)


def test_overview_factors_values():
    assert overview_factors(256, 256) == []
    assert overview_factors(257, 10) == [2]
    assert overview_factors(600, 500) == [2, 4]
    assert overview_factors(2048, 2048) == [2, 4, 8]


def test_write_json_atomic_content(tmp_path):
    record = {"k": np.int64(4), "scale": np.float32(0.5), "ks": np.arange(3), "path": tmp_path / "a.tif"}

    path = write_json_atomic(record, tmp_path / "metadata.json")

    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"k": 4, "scale": 0.5, "ks": [0, 1, 2], "path": str(tmp_path / "a.tif")}
    assert text.startswith('{\n  "k": 4,')
    assert [entry.name for entry in tmp_path.iterdir()] == ["metadata.json"]


def test_write_json_atomic_unserialisable_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json_atomic({"bad": object()}, tmp_path / "metadata.json")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.shared_data
def test_dk41_crs_round_trip(shared_data, tmp_path):
    source = open_raster(shared_data / "denmark_crowns" / "dk41_image.tif")
    labels = np.zeros((source.height, source.width), dtype=np.uint8)

    path = write_label_raster(labels, tmp_path / "dk41_labels.tif", crs=source.crs, transform=source.transform)

    with rasterio.open(path) as src:
        assert src.crs.to_wkt() == source.crs.to_wkt()
        assert src.crs.to_wkt().startswith('LOCAL_CS["ETRS89 / UTM zone 32N"')
        assert src.transform == source.transform


@pytest.mark.shared_data
def test_sjer_non_square_pixels_round_trip(shared_data, tmp_path):
    source = open_raster(shared_data / "neon" / "SJER_477.tif")
    labels = np.zeros((source.height, source.width), dtype=np.uint8)

    path = write_label_raster(labels, tmp_path / "sjer_labels.tif", crs=source.crs, transform=source.transform)

    with rasterio.open(path) as src:
        assert src.transform.a == source.transform.a
        assert src.transform.e == source.transform.e
        assert src.transform.a == pytest.approx(0.100235)
        assert src.transform.e == pytest.approx(-0.0997475)
        assert src.crs.to_wkt() == source.crs.to_wkt()


def test_write_label_raster_engineering_crs_sidecar(tmp_path, rng):
    crs = CRS.from_wkt(
        'ENGCRS["Site grid",EDATUM["Site datum"],CS[Cartesian,2],'
        'AXIS["easting (X)",east,ORDER[1],LENGTHUNIT["metre",1]],'
        'AXIS["northing (Y)",north,ORDER[2],LENGTHUNIT["metre",1]]]'
    )

    path = write_label_raster(_labels(rng, (20, 20)), tmp_path / "labels.tif", crs=crs, transform=NON_SQUARE)

    # GeoTIFF keys drop the datum, so the exact WKT lives in the sidecar.
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["labels.tif", "labels.tif.aux.xml"]
    with rasterio.open(path) as src:
        assert src.crs.to_wkt() == crs.to_wkt()
        assert 'LOCAL_DATUM["Site datum"' in src.crs.to_wkt()


def test_write_label_raster_stale_sidecar_removed(tmp_path, rng):
    path = tmp_path / "labels.tif"
    (tmp_path / "labels.tif.aux.xml").write_text("<PAMDataset><SRS>LOCAL_CS[\"old\"]</SRS></PAMDataset>")

    write_label_raster(_labels(rng, (20, 20)), path, crs=UTM33, transform=NON_SQUARE)

    assert [entry.name for entry in tmp_path.iterdir()] == ["labels.tif"]
    with rasterio.open(path) as src:
        assert src.crs.to_wkt() == UTM33.to_wkt()
