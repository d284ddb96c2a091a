"""The resampling factor that --scale auto picks."""

from __future__ import annotations

import logging

import pytest
from affine import Affine
from rasterio.crs import CRS

from tree_seg.config import WindowConfig
from tree_seg.features.scale import MIN_SIDE_PX, pixel_size_m, resolve_scale

UTM = CRS.from_epsg(32633)


def test_pixel_size_metric_and_geographic():
    assert pixel_size_m(UTM, Affine(0.1, 0, 500000, 0, -0.1, 6000000)) == pytest.approx(0.1)
    assert pixel_size_m(UTM, Affine(0.1, 0, 0, 0, -0.4, 0)) == pytest.approx(0.2)
    assert pixel_size_m(CRS.from_epsg(4326), Affine(1e-6, 0, 10, 0, -1e-6, 50)) is None
    assert pixel_size_m(None, Affine.identity()) is None


def test_resolve_scale_aims_at_target_resolution():
    window = WindowConfig(scale="auto", target_resolution=0.2)

    scale = resolve_scale(window, crs=UTM, transform=Affine(0.1, 0, 0, 0, -0.1, 0), shape=(4096, 4096))

    assert scale == 0.5


def test_resolve_scale_keeps_short_side_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="tree_seg")
    window = WindowConfig(scale="auto", target_resolution=0.2)

    scale = resolve_scale(window, crs=UTM, transform=Affine(0.1, 0, 0, 0, -0.1, 0), shape=(800, 3000))

    assert scale == round(MIN_SIDE_PX / 800, 3)
    assert "not 0.2 m, to keep the shorter side at 512 px or more" in caplog.text


def test_resolve_scale_without_metres_or_numeric():
    assert resolve_scale(WindowConfig(scale="auto"), crs=None, transform=Affine.identity()) == 1.0
    assert resolve_scale(WindowConfig(scale=0.25), crs=UTM, transform=Affine(0.1, 0, 0, 0, -0.1, 0)) == 0.25
