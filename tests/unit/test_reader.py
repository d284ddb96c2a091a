"""Tests of open_raster and RasterSource on tiny GeoTIFFs and the shared real tiles."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from scipy import ndimage

from tree_seg.config import ReadConfig
from tree_seg.exceptions import InvalidInputError, NoGeoreferenceWarning
from tree_seg.io.nodata import NodataRule
from tree_seg.io.reader import RasterSource, open_raster

UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(0.5, 0.0, 400000.0, 0.0, -0.5, 5000000.0)


def _write_tif(
    path: Path,
    raw: np.ndarray,
    *,
    crs: CRS | None = UTM33,
    transform: Affine | None = TRANSFORM,
    nodata: float | None = None,
    colorinterp: list[ColorInterp] | None = None,
    **options: object,
) -> Path:
    profile = {
        "driver": "GTiff",
        "count": raw.shape[0],
        "height": raw.shape[1],
        "width": raw.shape[2],
        "dtype": raw.dtype,
        "nodata": nodata,
        **options,
    }
    if crs is not None:
        profile.update(crs=crs)
    if transform is not None:
        profile.update(transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(raw)
            if colorinterp is not None:
                dst.colorinterp = colorinterp
    return path


def _rgb(rng: np.random.Generator, shape: tuple[int, int] = (40, 50), dtype: type = np.uint8) -> np.ndarray:
    return rng.integers(30, 220, size=(3, *shape)).astype(dtype)


COLLAR_EDGE = 100
"""Pixels with ``column + 0.6 * row`` below this are the collar of :func:`_collar_raster`."""


def _collar_position(shape: tuple[int, int]) -> np.ndarray:
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    return columns + 0.6 * rows


def _collar_raster(rng: np.random.Generator, shape: tuple[int, int] = (90, 110)) -> np.ndarray:
    """RGB uint8 with a black collar on 59% of the border, a near-black fringe 4 px wide, and black specks."""
    raw = _rgb(rng, shape)
    position = _collar_position(shape)
    collar = position < COLLAR_EDGE
    raw[:, collar] = 0
    fringe = (position >= COLLAR_EDGE) & (position < COLLAR_EDGE + 4)
    raw[:, fringe] = rng.integers(0, 6, size=(3, int(fringe.sum())))
    specks = rng.random(shape) < 0.01
    raw[:, specks & ~collar] = 0
    return raw


def test_open_raster_uint8_geotiff_metadata(tmp_path, rng):
    raw = _rgb(rng)
    source = open_raster(_write_tif(tmp_path / "scene.tif", raw))

    assert source.stem == "scene"
    assert (source.height, source.width) == (40, 50)
    assert source.band_indices == (1, 2, 3)
    assert source.crs.to_wkt() == UTM33.to_wkt()
    assert source.transform == TRANSFORM
    assert source.georeferenced
    assert source.nodata_rule == NodataRule("none")
    assert source.band_scale.tolist() == [255.0, 255.0, 255.0]
    assert source.band_offset.dtype == np.float32


def test_read_uint8_values_and_valid(tmp_path, rng):
    raw = _rgb(rng)
    source = open_raster(_write_tif(tmp_path / "scene.tif", raw))

    image, valid = source.read()

    assert image.shape == (3, 40, 50)
    assert image.dtype == np.float32
    assert np.allclose(image, raw / 255.0)
    assert valid.shape == (40, 50)
    assert valid.all()


def test_data_is_lazy_dask_chunks(tmp_path, rng):
    source = open_raster(_write_tif(tmp_path / "scene.tif", _rgb(rng)), chunks=16)

    assert source.data.dims == ("band", "y", "x")
    assert source.data.chunks == ((3,), (16, 16, 8), (16, 16, 16, 2))
    assert source.data.rio.crs.to_wkt() == UTM33.to_wkt()


def test_scaling_uint16_12bit(tmp_path, rng):
    raw = rng.integers(0, 4001, size=(3, 30, 30)).astype(np.uint16)
    source = open_raster(_write_tif(tmp_path / "12bit.tif", raw))

    image, _ = source.read()

    assert source.band_scale.tolist() == [4095.0, 4095.0, 4095.0]
    assert np.allclose(image, raw / 4095.0)


def test_scaling_uint16_full_range(tmp_path, rng):
    raw = rng.integers(0, 4001, size=(3, 30, 30)).astype(np.uint16)
    raw[:, 10:20, 10:20] = 60000
    source = open_raster(_write_tif(tmp_path / "16bit.tif", raw))

    assert source.band_scale.tolist() == [65535.0, 65535.0, 65535.0]


def test_scaling_float_percentile_stretch(tmp_path):
    values = np.linspace(100.0, 1100.0, 40 * 40, dtype=np.float32).reshape(40, 40)
    raw = np.stack([values, values * 2, values + 50])
    source = open_raster(_write_tif(tmp_path / "reflectance.tif", raw))

    image, valid = source.read()

    expected_low = np.percentile(raw.reshape(3, -1), 2, axis=1)
    expected_high = np.percentile(raw.reshape(3, -1), 98, axis=1)
    assert np.allclose(source.band_offset, expected_low, rtol=1e-6)
    assert np.allclose(source.band_scale, expected_high - expected_low, rtol=1e-6)
    assert image.min() == 0.0
    assert image.max() == 1.0
    assert np.isclose(image[0, 20, 0], (raw[0, 20, 0] - expected_low[0]) / (expected_high[0] - expected_low[0]))
    assert valid.all()


def test_scaling_float_unit_range_kept(tmp_path, rng):
    raw = rng.random((3, 20, 20)).astype(np.float32)
    source = open_raster(_write_tif(tmp_path / "unit.tif", raw))

    image, _ = source.read()

    assert source.band_scale.tolist() == [1.0, 1.0, 1.0]
    assert np.array_equal(image, raw)


@pytest.mark.parametrize(("top", "scale"), [(250, 255.0), (4000, 4095.0), (60000, 65535.0)])
def test_scaling_float_whole_numbers_like_integers(tmp_path, rng, top, scale):
    # Integer data stored as floats, as rioxarray's masked=True returns it.
    raw = rng.integers(0, top + 1, size=(3, 30, 30)).astype(np.float32)
    source = open_raster(_write_tif(tmp_path / "whole.tif", raw))

    image, _ = source.read()

    assert source.band_scale.tolist() == [scale] * 3
    assert source.band_offset.tolist() == [0.0] * 3
    assert np.allclose(image, raw / scale)


def test_scaling_float_fractions_above_one_stretched(tmp_path, rng):
    raw = (rng.random((3, 30, 30)) * 200 + 0.5).astype(np.float32)
    source = open_raster(_write_tif(tmp_path / "fractions.tif", raw))

    source.read()

    assert source.band_scale.max() < 200.0
    assert source.band_offset.min() > 0.5


def test_nodata_tag_exact_and_buffered(tmp_path, rng):
    raw = _rgb(rng, (40, 40))
    raw[:, :, :12] = 7
    raw[:, 30, 30] = 7
    source = open_raster(_write_tif(tmp_path / "tagged.tif", raw, nodata=7))

    _, valid = source.read()

    assert source.nodata_rule == NodataRule("tag", value=7.0, tolerance=0.0, buffer=3)
    assert not valid[:, :12].any()
    assert not valid[30, 30]
    assert not valid[5:35, 12:15].any()
    assert valid[:, 16:].sum() == 40 * 24 - 1


def test_alpha_band_by_colorinterp(tmp_path, rng):
    raw = np.concatenate([_rgb(rng, (20, 30)), np.full((1, 20, 30), 255, dtype=np.uint8)])
    raw[3, :5, :] = 0
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    source = open_raster(_write_tif(tmp_path / "rgba.tif", raw, colorinterp=interp))

    image, valid = source.read()

    assert source.band_indices == (1, 2, 3)
    assert source.nodata_rule == NodataRule("alpha", alpha_band=4)
    assert source.alpha is not None
    assert source.alpha.dims == ("y", "x")
    assert image.shape == (3, 20, 30)
    assert (~valid).sum() == 5 * 30
    assert not valid[:5].any()


def test_alpha_band_first_position(tmp_path, rng):
    raw = np.concatenate([np.full((1, 20, 30), 255, dtype=np.uint8), _rgb(rng, (20, 30))])
    interp = [ColorInterp.alpha, ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    source = open_raster(_write_tif(tmp_path / "argb.tif", raw, colorinterp=interp))

    assert source.band_indices == (2, 3, 4)
    assert source.nodata_rule.alpha_band == 1


def test_four_band_nir_uses_first_three(tmp_path, rng):
    raw = rng.integers(30, 220, size=(4, 20, 20)).astype(np.uint8)
    # GDAL marks band 4 of a new 4-band uint8 GeoTIFF as alpha unless ALPHA=UNSPECIFIED is set.
    source = open_raster(_write_tif(tmp_path / "rgbn.tif", raw, alpha="UNSPECIFIED"))

    image, _ = source.read()

    assert source.band_indices == (1, 2, 3)
    assert source.nodata_rule.alpha_band is None
    assert np.allclose(image, raw[:3] / 255.0)


def test_nan_pixels_invalid_and_zero(tmp_path, rng):
    raw = rng.random((3, 20, 20)).astype(np.float32)
    raw[1, 4, 5] = np.nan
    raw[:, 10:12, :] = np.nan
    source = open_raster(_write_tif(tmp_path / "holes.tif", raw))

    image, valid = source.read()

    assert source.nodata_rule.kind == "nan"
    assert (~valid).sum() == 1 + 2 * 20
    assert image[1, 4, 5] == 0.0
    assert not np.isnan(image).any()


def test_nan_pixels_invalid_with_nodata_none(tmp_path, rng):
    raw = rng.random((3, 10, 10)).astype(np.float32)
    raw[0, 0, 0] = np.nan
    source = open_raster(_write_tif(tmp_path / "holes.tif", raw), ReadConfig(nodata="none"))

    _, valid = source.read()

    assert source.nodata_rule == NodataRule("none")
    assert (~valid).sum() == 1


def test_explicit_nodata_value_with_tolerance(tmp_path, rng):
    raw = _rgb(rng, (30, 30))
    raw[:, :12, :] = 250
    raw[:, :12, :15] = 253
    raw[:, 18:, :] = 255
    config = ReadConfig(nodata=252, nodata_tolerance=2, collar_buffer=0)
    source = open_raster(_write_tif(tmp_path / "white.tif", raw), config)

    _, valid = source.read()

    assert source.nodata_rule == NodataRule("value", value=252.0, tolerance=2.0, buffer=0)
    assert not valid[2:10, 2:28].any()
    assert valid[12:].all()


def test_nodata_none_every_pixel_valid(tmp_path, rng):
    raw = _collar_raster(rng)
    source = open_raster(_write_tif(tmp_path / "collar.tif", raw), ReadConfig(nodata="none"))

    _, valid = source.read()

    assert valid.all()


def test_collar_detected_and_fringe_masked(tmp_path, rng):
    raw = _collar_raster(rng)
    source = open_raster(_write_tif(tmp_path / "collar.tif", raw))

    _, valid = source.read()

    position = _collar_position(raw.shape[1:])
    assert source.nodata_rule == NodataRule("collar", value=0.0, fringe_tolerance=10.0, buffer=3)
    assert not valid[position < COLLAR_EDGE + 4].any()
    assert valid[position >= COLLAR_EDGE + 8].mean() > 0.97
    specks = (raw == 0).all(axis=0) & (position >= COLLAR_EDGE + 8)
    assert specks.sum() > 10
    assert valid[specks].all()


@pytest.mark.parametrize(
    ("tag", "config", "kind"),
    [
        (None, ReadConfig(), "collar"),
        (None, ReadConfig(nodata=0, nodata_tolerance=3, collar_buffer=5), "value"),
        (0, ReadConfig(), "tag"),
    ],
)
def test_read_window_equals_crop_of_read(tmp_path, rng, tag, config, kind):
    raw = _collar_raster(rng)
    source = open_raster(_write_tif(tmp_path / "collar.tif", raw, nodata=tag), config)
    image, valid = source.read()

    assert source.nodata_rule.kind == kind

    windows = [(0, 30, 0, 40), (25, 61, 40, 85), (60, 90, 80, 110), (0, 90, 70, 71), (41, 42, 0, 110)]
    for y0, y1, x0, x1 in windows:
        window_image, window_valid = source.read_window(y0, y1, x0, x1)
        assert np.array_equal(window_image, image[:, y0:y1, x0:x1]), (y0, y1, x0, x1)
        assert np.array_equal(window_valid, valid[y0:y1, x0:x1]), (y0, y1, x0, x1)


def test_read_window_rejects_bounds_outside(tmp_path, rng):
    source = open_raster(_write_tif(tmp_path / "scene.tif", _rgb(rng)))

    with pytest.raises(InvalidInputError, match="invalid window y 0:41, x 0:10"):
        source.read_window(0, 41, 0, 10)


def test_source_pickles_and_reads_same(tmp_path, rng):
    source = open_raster(_write_tif(tmp_path / "collar.tif", _collar_raster(rng)))

    copy = pickle.loads(pickle.dumps(source))

    first, first_valid = source.read_window(10, 50, 20, 70)
    second, second_valid = copy.read_window(10, 50, 20, 70)
    assert isinstance(copy, RasterSource)
    assert np.array_equal(first, second)
    assert np.array_equal(first_valid, second_valid)


def test_to_dict_json_ready(tmp_path, rng):
    source = open_raster(_write_tif(tmp_path / "collar.tif", _collar_raster(rng)))

    record = json.loads(json.dumps(source.to_dict()))

    assert record["path"] == str(tmp_path / "collar.tif")
    assert record["height"] == 90
    assert record["width"] == 110
    assert record["dtype"] == "uint8"
    assert record["band_indices"] == [1, 2, 3]
    assert record["crs_wkt"] == UTM33.to_wkt()
    assert record["transform"] == [0.5, 0.0, 400000.0, 0.0, -0.5, 5000000.0]
    assert record["nodata_rule"] == {"kind": "collar", "value": 0.0, "tolerance": 0.0, "fringe_tolerance": 10.0,
                                     "buffer": 3, "alpha_band": None}
    assert record["band_scale"] == [255.0, 255.0, 255.0]


def test_band_out_of_range_error(tmp_path, rng):
    path = _write_tif(tmp_path / "scene.tif", _rgb(rng))

    with pytest.raises(InvalidInputError, match=r"invalid band 5: the input has 3 band\(s\); pass --bands"):
        open_raster(path, ReadConfig(bands=(1, 2, 5)))


def test_two_band_file_error(tmp_path, rng):
    path = _write_tif(tmp_path / "two.tif", rng.integers(0, 255, size=(2, 10, 10)).astype(np.uint8))

    with pytest.raises(InvalidInputError, match="2 colour bands .* pass --bands"):
        open_raster(path)


def test_explicit_two_bands_error(tmp_path, rng):
    path = _write_tif(tmp_path / "scene.tif", _rgb(rng))

    with pytest.raises(InvalidInputError, match="backbones take 3 channels"):
        open_raster(path, ReadConfig(bands=(1, 2)))


def test_single_band_repeated_three_times(tmp_path, rng):
    raw = rng.integers(0, 255, size=(1, 12, 14)).astype(np.uint8)
    source = open_raster(_write_tif(tmp_path / "grey.tif", raw))

    image, _ = source.read()

    assert source.band_indices == (1, 1, 1)
    assert image.shape == (3, 12, 14)
    assert np.array_equal(image[0], image[2])
    assert np.allclose(image[1], raw[0] / 255.0)


def test_explicit_band_order_kept(tmp_path, rng):
    raw = rng.integers(1, 255, size=(4, 12, 14)).astype(np.uint8)
    source = open_raster(_write_tif(tmp_path / "rgbn.tif", raw, alpha="UNSPECIFIED"), ReadConfig(bands=(4, 1, 2)))

    image, _ = source.read()

    assert source.band_indices == (4, 1, 2)
    assert np.allclose(image, raw[[3, 0, 1]] / 255.0)


def test_png_without_crs_warns_identity(tmp_path, rng):
    raw = _rgb(rng, (16, 24))
    path = tmp_path / "photo.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", count=3, height=16, width=24, dtype="uint8") as dst:
            dst.write(raw)

    with warnings.catch_warnings():
        warnings.simplefilter("error", rasterio.errors.NotGeoreferencedWarning)
        with pytest.warns(NoGeoreferenceWarning, match="no CRS: outputs use pixel coordinates"):
            source = open_raster(path)
        image, _ = source.read_window(0, 8, 0, 8)

    assert source.crs is None
    assert source.transform == Affine.identity()
    assert not source.georeferenced
    assert source.stem == "photo"
    assert np.allclose(image, raw[:, :8, :8] / 255.0)


def test_tiff_without_crs_keeps_transform_and_warns(tmp_path, rng):
    path = _write_tif(tmp_path / "plain.tif", _rgb(rng), crs=None)

    with pytest.warns(NoGeoreferenceWarning, match="outputs use its transform without a CRS"):
        source = open_raster(path)

    assert source.transform == TRANSFORM
    assert not source.georeferenced
    assert source.to_dict()["crs_wkt"] is None


def test_truncated_file_error_shows_gdal_message(tmp_path, rng):
    full = _write_tif(tmp_path / "full.tif", _rgb(rng, (256, 256)))
    truncated = tmp_path / "truncated.tif"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(InvalidInputError) as caught:
        open_raster(truncated).read_window(0, 256, 0, 256)

    message = str(caught.value)
    assert message.startswith(f"failed to read raster {truncated}: ")
    assert "TIFFRead" in message
    assert "previous exception" not in message
    assert message.endswith("the file may be truncated or damaged (gdalinfo -checksum reads every block)")


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(InvalidInputError, match="missing.tif not found"):
        open_raster(tmp_path / "missing.tif")


def test_unreadable_file_error_names_path(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("not a raster")

    with pytest.raises(InvalidInputError, match="failed to read raster .*notes.tif"):
        open_raster(path)


def test_no_valid_pixel_error(tmp_path):
    raw = np.full((3, 20, 20), 9, dtype=np.uint8)
    path = _write_tif(tmp_path / "blank.tif", raw)

    with pytest.raises(InvalidInputError, match="no valid pixel under nodata rule 'value'"):
        open_raster(path, ReadConfig(nodata=9))


def test_check_has_valid_pixels_passes(tmp_path, rng):
    source = open_raster(_write_tif(tmp_path / "scene.tif", _rgb(rng)))

    source.check_has_valid_pixels()
    image, valid = source.read_sample(max_side=16)

    # 50 columns / 16 gives a decimation step of 4.
    assert image.shape == (3, 10, 13)
    assert valid.all()


def test_dataarray_input_keeps_georeferencing(rng):
    raw = _rgb(rng, (20, 30))
    array = xr.DataArray(raw, dims=("band", "y", "x"))
    array = array.rio.write_crs(UTM33).rio.write_transform(TRANSFORM)
    array = array.assign_coords(
        x=400000.25 + 0.5 * np.arange(30), y=5000000.0 - 0.25 - 0.5 * np.arange(20)
    )

    source = open_raster(array)
    image, valid = source.read()

    assert source.stem == "array"
    assert source.path is None
    assert source.crs.to_wkt() == UTM33.to_wkt()
    assert source.transform == TRANSFORM
    assert source.band_indices == (1, 2, 3)
    assert np.allclose(image, raw / 255.0)
    assert valid.all()


def test_dataarray_2d_repeated_and_unreferenced(rng):
    raw = rng.integers(0, 255, size=(10, 12)).astype(np.uint8)

    with pytest.warns(NoGeoreferenceWarning):
        source = open_raster(xr.DataArray(raw, dims=("y", "x")))

    image, _ = source.read_window(2, 5, 3, 7)
    assert source.band_indices == (1, 1, 1)
    assert source.transform == Affine.identity()
    assert np.allclose(image[2], raw[2:5, 3:7] / 255.0)


def test_dataarray_without_crs_keeps_coordinate_transform(rng):
    raw = _rgb(rng, (20, 30))
    array = xr.DataArray(raw, dims=("band", "y", "x")).assign_coords(
        x=400000.25 + 0.5 * np.arange(30), y=5000000.0 - 0.25 - 0.5 * np.arange(20)
    )

    with pytest.warns(NoGeoreferenceWarning, match="outputs use its transform without a CRS"):
        source = open_raster(array)

    assert source.crs is None
    assert source.transform == TRANSFORM


def test_dataarray_bad_dims_error(rng):
    array = xr.DataArray(np.zeros((4, 4, 3)), dims=("y", "x", "band"))

    with pytest.raises(InvalidInputError, match=r"invalid DataArray dims \('y', 'x', 'band'\)"):
        open_raster(array)


@pytest.mark.shared_data
def test_dk41_default_bands_and_local_cs(shared_data):
    path = shared_data / "denmark_crowns" / "dk41_image.tif"
    with rasterio.open(path) as src:
        wkt = src.crs.to_wkt()

    source = open_raster(path)

    assert source.band_indices == (1, 2, 3)
    assert source.crs.to_wkt() == wkt
    assert wkt.startswith("LOCAL_CS[")
    assert source.nodata_rule == NodataRule("none")


@pytest.mark.shared_data
def test_sjer_non_square_transform(shared_data):
    path = shared_data / "neon" / "SJER_477.tif"
    with rasterio.open(path) as src:
        transform = src.transform

    source = open_raster(path)

    assert source.transform == transform
    assert source.transform.a != -source.transform.e
    assert source.nodata_rule == NodataRule("tag", value=255.0, buffer=3)


def _large_collar(raw: np.ndarray, value: int) -> np.ndarray:
    exact = (raw == value).all(axis=0)
    labels, _ = ndimage.label(exact)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


@pytest.mark.shared_data
def test_tcd_00000_black_collar_and_fringe(shared_data):
    path = shared_data / "oam_tcd" / "tcd_00000_image.tif"
    with rasterio.open(path) as src:
        raw = src.read().astype(np.int16)

    source = open_raster(path)
    _, valid = source.read()

    assert source.nodata_rule.kind == "collar"
    assert source.nodata_rule.value == 0.0
    # The exact black collar is 25.0% of the tile; the fringe adds about 1.2%.
    assert 0.255 <= 1 - valid.mean() <= 0.27
    collar = _large_collar(raw, 0)
    # One pixel at the tip of a thin line of exact black stays valid.
    assert valid[collar].sum() <= 1

    # Deep shadows inside the image stay valid: every nodata region touches
    # the raster's edge. A fringe tolerance applied everywhere made five
    # shadows of 73 to 422 px nodata.
    regions, count = ndimage.label(~valid)
    edge = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
    assert set(range(1, count + 1)) <= set(edge.tolist())

    # Measured on this tile: with the exact value alone (nodata=0), 13786
    # valid pixels within 6 px of the collar are near black (every band
    # <= 8), and this rule leaves 47. Shadows keep some dark pixels along the
    # edge: 21% of the valid ring within 2 px of the mask has every band
    # < 40, against 15% far from the collar and 83% with the exact value.
    near_black = (raw <= 8).all(axis=0)
    near_collar = ndimage.distance_transform_edt(~collar) <= 6
    assert (valid & near_collar & near_black).sum() < 150
    ring = valid & (ndimage.distance_transform_edt(valid) <= 2)
    dark = (raw < 40).all(axis=0)
    assert (ring & dark).sum() / ring.sum() < 0.3


@pytest.mark.shared_data
def test_tcd_00004_white_collar_matches_ignore_mask(shared_data):
    path = shared_data / "oam_tcd" / "tcd_00004_image.tif"
    with rasterio.open(shared_data / "oam_tcd" / "tcd_00004_mask.tif") as src:
        ignore = src.read(1) == 255

    source = open_raster(path)
    _, valid = source.read()

    assert source.nodata_rule.value == 255.0
    assert 1 - valid.mean() == pytest.approx(0.7315, abs=0.002)
    invalid = ~valid
    # The label file's ignore class is the white collar dilated by 3 px.
    assert (invalid & ignore).sum() / (invalid | ignore).sum() > 0.998


@pytest.mark.shared_data
def test_tcd_00000_windows_match_whole(shared_data):
    source = open_raster(shared_data / "oam_tcd" / "tcd_00000_image.tif")
    image, valid = source.read()

    for y0, y1, x0, x1 in [(0, 512, 0, 512), (300, 700, 650, 900), (1536, 2048, 1536, 2048), (380, 480, 0, 2048)]:
        window_image, window_valid = source.read_window(y0, y1, x0, x1)
        assert np.array_equal(window_valid, valid[y0:y1, x0:x1]), (y0, y1, x0, x1)
        assert np.array_equal(window_image, image[:, y0:y1, x0:x1]), (y0, y1, x0, x1)


def test_alpha_with_data_values_logs_warning(tmp_path, rng, caplog):
    raw = rng.integers(1, 255, size=(4, 20, 20)).astype(np.uint8)

    with caplog.at_level("WARNING", logger="tree_seg.io.reader"):
        source = open_raster(_write_tif(tmp_path / "rgbn.tif", raw))

    assert source.nodata_rule == NodataRule("alpha", alpha_band=4)
    assert "Band 4 of" in caplog.text
    assert "near-infrared" in caplog.text
