"""The resampling factor that --scale auto picks."""

from __future__ import annotations

import logging
import math

import pyproj
import pytest
from affine import Affine
from rasterio.crs import CRS

from tree_seg.config import WindowConfig
from tree_seg.features.scale import MIN_SIDE_PX, pixel_size_m, resolve_scale

UTM = CRS.from_epsg(32633)


# A 0.1 m pixel near the central meridian of UTM zone 33N.
UTM_TRANSFORM = Affine(0.1, 0, 500000, 0, -0.1, 6000000)


def test_pixel_size_utm_near_map_metres():
    # UTM's scale on the central meridian is 0.9996.
    assert pixel_size_m(UTM, UTM_TRANSFORM) == pytest.approx(0.1 / 0.9996, rel=1e-5)
    assert pixel_size_m(UTM, Affine(0.1, 0, 500000, 0, -0.4, 6000000)) == pytest.approx(0.2 / 0.9996, rel=1e-5)
    assert pixel_size_m(None, Affine.identity()) is None


def test_pixel_size_in_mercator_counts_ground_metres():
    # A Mercator metre covers cos(phi) / sqrt(1 - e^2 sin^2 phi) metres of
    # ground on the ellipsoid, 0.66 near 48.5 degrees north (the OAM-TCD tile
    # tcd_00004).
    mercator = CRS.from_epsg(3395)
    transform = Affine(0.1, 0, 1009956.8, 0, -0.1, 6161233.2)
    _, latitude = pyproj.Transformer.from_crs(3395, 4326, always_xy=True).transform(1010059.2, 6161130.8)
    e2 = 0.00669437999014  # WGS 84's first eccentricity, squared
    phi = math.radians(latitude)
    expected = 0.1 * math.cos(phi) / math.sqrt(1 - e2 * math.sin(phi) ** 2)

    size = pixel_size_m(mercator, transform, (2048, 2048))

    assert size == pytest.approx(expected, rel=1e-4)
    assert size == pytest.approx(0.0664, abs=1e-4)


def test_pixel_size_in_degrees_and_feet():
    # At 50 degrees north a degree of latitude spans 111,229 m and one of
    # longitude 71,696 m on WGS 84.
    degrees = pixel_size_m(CRS.from_epsg(4326), Affine(1e-6, 0, 10, 0, -1e-6, 50))
    assert degrees == pytest.approx(math.sqrt(0.111229 * 0.071696), rel=1e-4)

    # New York Long Island state plane, in US survey feet.
    feet = pixel_size_m(CRS.from_epsg(2263), Affine(1, 0, 1000000, 0, -1, 200000))
    assert feet == pytest.approx(1200 / 3937, rel=1e-3)


def test_pixel_size_ignores_rotation():
    rotated = UTM_TRANSFORM * Affine.rotation(30)

    assert pixel_size_m(UTM, rotated) == pytest.approx(pixel_size_m(UTM, UTM_TRANSFORM), rel=1e-6)


def test_pixel_size_of_local_metres_and_unknown_units():
    local = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]')
    assert pixel_size_m(local, Affine(0.25, 0, 0, 0, -0.25, 0)) == 0.25

    # Latitude 95 does not exist, so the size is unknown, and degrees are not metres.
    assert pixel_size_m(CRS.from_epsg(4326), Affine(1e-6, 0, 10, 0, -1e-6, 95)) is None


def test_resolve_scale_aims_at_target_resolution():
    window = WindowConfig(scale="auto", target_resolution=0.2)

    scale = resolve_scale(window, crs=UTM, transform=UTM_TRANSFORM, shape=(4096, 4096))
    mercator = resolve_scale(window, crs=CRS.from_epsg(3395), transform=Affine(0.1, 0, 1009956.8, 0, -0.1, 6161233.2),
                             shape=(4096, 4096))

    assert scale == 0.5
    assert mercator == 0.332


def test_resolve_scale_keeps_short_side_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="tree_seg")
    window = WindowConfig(scale="auto", target_resolution=0.2)

    scale = resolve_scale(window, crs=UTM, transform=UTM_TRANSFORM, shape=(800, 3000))

    assert scale == round(MIN_SIDE_PX / 800, 3)
    assert "not 0.2 m, to keep the shorter side at 512 px or more" in caplog.text


def test_resolve_scale_without_metres_or_numeric():
    assert resolve_scale(WindowConfig(scale="auto"), crs=None, transform=Affine.identity()) == 1.0
    assert resolve_scale(WindowConfig(scale=0.25), crs=UTM, transform=UTM_TRANSFORM) == 0.25


@pytest.mark.parametrize(("transform", "shape", "reason"), [
    (Affine(0.2, 0, 500000, 0, -0.2, 6000000), (2000, 2000), "its pixels are not finer than the 0.2 m target"),
    (UTM_TRANSFORM, (400, 400), "at 0.2 m its shorter side of 400 px would fall below 512 px"),
])
def test_resolve_scale_explains_scale_one(caplog, transform, shape, reason):
    caplog.set_level(logging.INFO, logger="tree_seg")

    scale = resolve_scale(WindowConfig(scale="auto", target_resolution=0.2), crs=UTM, transform=transform,
                          shape=shape)

    assert scale == 1.0
    assert reason in caplog.text
    assert "to keep the shorter side" not in caplog.text
