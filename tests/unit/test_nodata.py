"""Tests of the pure nodata-mask functions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tree_seg.config import ReadConfig
from tree_seg.exceptions import InvalidInputError
from tree_seg.io import nodata as nodata_module
from tree_seg.io.nodata import (
    NodataRule,
    border_pixels,
    choose_nodata_rule,
    clean_collar,
    collar_halo,
    detect_collar_value,
    nan_mask,
    valid_mask,
    value_mask,
    widen_collar_tolerance,
)


def _disk(radius):
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _blobby_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Return a mask with large collar-like regions, thin strips and single-pixel specks."""
    mask = np.zeros(shape, dtype=bool)
    mask[:, : shape[1] // 4] = True
    mask[: shape[0] // 5, :] = True
    mask[shape[0] // 2 : shape[0] // 2 + 3, shape[1] // 3 :] = True
    specks = rng.random(shape) < 0.02
    holes = rng.random(shape) < 0.02
    return (mask | specks) & ~holes


def test_value_mask_every_band_within_tolerance():
    raw = np.array(
        [
            [[0, 3, 0, 9]],
            [[0, 2, 5, 0]],
            [[0, 1, 0, 0]],
        ],
        dtype=np.uint8,
    )

    exact = value_mask(raw, 0)
    tolerant = value_mask(raw, 0, tolerance=3)

    assert exact.tolist() == [[True, False, False, False]]
    assert tolerant.tolist() == [[True, True, False, False]]


def test_value_mask_unsigned_no_wraparound():
    raw = np.array([[[250, 3]]], dtype=np.uint8)

    mask = value_mask(raw, 0, tolerance=5)

    # 0 - 250 wraps to 6 in uint8 arithmetic, which would wrongly match.
    assert mask.tolist() == [[False, True]]


def test_value_mask_nan_never_matches():
    raw = np.array([[[np.nan, 1.0]]], dtype=np.float32)

    assert value_mask(raw, 1.0).tolist() == [[False, True]]


def test_value_mask_rejects_2d_input():
    with pytest.raises(InvalidInputError, match=r"expected dims \(band, y, x\)"):
        value_mask(np.zeros((4, 4)), 0)


def test_nan_mask_any_band():
    raw = np.ones((2, 1, 3), dtype=np.float32)
    raw[1, 0, 2] = np.nan

    assert nan_mask(raw).tolist() == [[False, False, True]]
    assert not nan_mask(np.zeros((2, 1, 3), dtype=np.uint8)).any()


def test_collar_halo_formula():
    assert collar_halo(3) == 7
    assert collar_halo(0, 0) == 0
    assert collar_halo(5, opening_radius=1) == 7
    assert collar_halo(3, fringe_width=12) == 7 + 2 + 12


def test_collar_halo_rejects_negative():
    with pytest.raises(InvalidInputError, match="buffer=-1"):
        collar_halo(-1)


def test_clean_collar_removes_specks_keeps_collar():
    nodata = np.zeros((40, 40), dtype=bool)
    nodata[:, :10] = True
    nodata[30, 30] = True
    nodata[20:22, 25:27] = True

    cleaned = clean_collar(nodata, buffer=0)

    # The opening rounds off 3 pixels at each of the strip's four corners.
    assert cleaned[2:38, :10].all()
    assert not cleaned[30, 30]
    assert not cleaned[20:22, 25:27].any()
    assert cleaned.sum() == 400 - 2 * 3 - 2 * 3


def test_clean_collar_buffer_grows_by_pixels():
    nodata = np.zeros((40, 40), dtype=bool)
    nodata[:, :10] = True

    cleaned = clean_collar(nodata, buffer=3)

    # Away from the rounded corners the strip grows by exactly 3 columns.
    assert cleaned[5:35, :13].all()
    assert not cleaned[:, 13:].any()


def test_clean_collar_rectangle_corners_rounded_then_covered():
    nodata = np.zeros((30, 30), dtype=bool)
    nodata[5:17, 5:13] = True

    opened = clean_collar(nodata, buffer=0)
    grown_by_one = clean_collar(nodata, buffer=1)
    grown_by_two = clean_collar(nodata, buffer=2)

    assert nodata.sum() - opened.sum() == 4 * 3
    assert not opened[5, 5]
    assert not grown_by_one[5, 5]
    assert grown_by_two[nodata].all()


def test_clean_collar_thin_edge_strip_removed():
    # Outside the raster counts as valid, so a collar 3 px wide along the edge
    # is thinner than the 5 px disk and goes like a speck.
    nodata = np.zeros((30, 30), dtype=bool)
    nodata[:, :3] = True

    assert not clean_collar(nodata, buffer=3).any()


def _fringe_of(nodata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Near-collar values: the mask itself, a ring of scattered pixels around
    # it, and scattered blobs elsewhere.
    ring = ndimage.binary_dilation(nodata, iterations=4) & (rng.random(nodata.shape) < 0.7)
    return nodata | ring | (rng.random(nodata.shape) < 0.05)


@pytest.mark.parametrize("fringe_width", [0, 6])
def test_clean_collar_window_with_halo_exact(rng, fringe_width):
    nodata = _blobby_mask(rng, (97, 83))
    fringe = _fringe_of(nodata, rng)
    buffer = 3
    halo = collar_halo(buffer, fringe_width=fringe_width)
    whole = clean_collar(nodata, buffer=buffer, fringe=fringe, fringe_width=fringe_width)

    windows = [(0, 20, 0, 20), (10, 50, 5, 40), (60, 97, 60, 83), (0, 97, 30, 31), (45, 52, 0, 83)]
    for y0, y1, x0, x1 in windows:
        ya, yb = max(0, y0 - halo), min(nodata.shape[0], y1 + halo)
        xa, xb = max(0, x0 - halo), min(nodata.shape[1], x1 + halo)
        part = clean_collar(nodata[ya:yb, xa:xb], buffer=buffer, fringe=fringe[ya:yb, xa:xb],
                            fringe_width=fringe_width)
        cropped = part[y0 - ya : y1 - ya, x0 - xa : x1 - xa]
        assert np.array_equal(cropped, whole[y0:y1, x0:x1]), (y0, y1, x0, x1)


@pytest.mark.parametrize("fringe_width", [0, 6])
def test_clean_collar_smaller_halo_differs(rng, fringe_width):
    nodata = _blobby_mask(rng, (97, 83))
    fringe = _fringe_of(nodata, rng)
    buffer = 3
    halo = collar_halo(buffer, fringe_width=fringe_width) - 1
    whole = clean_collar(nodata, buffer=buffer, fringe=fringe, fringe_width=fringe_width)

    mismatches = 0
    for y0 in range(8, 80, 7):
        for x0 in range(8, 66, 7):
            y1, x1 = y0 + 10, x0 + 10
            rows, cols = slice(y0 - halo, y1 + halo), slice(x0 - halo, x1 + halo)
            part = clean_collar(nodata[rows, cols], buffer=buffer, fringe=fringe[rows, cols],
                                fringe_width=fringe_width)
            mismatches += not np.array_equal(part[halo:-halo, halo:-halo], whole[y0:y1, x0:x1])

    assert mismatches > 0


@pytest.mark.parametrize("radius", [1, 2, 3, 12])
def test_disk_morphology_matches_scipy(rng, radius):
    disk = _disk(radius)
    for shape in [(40, 37), (1, 30), (30, 1), (5, 9), (2, 2)]:
        mask = rng.random(shape) < 0.4
        dilated = ndimage.binary_dilation(mask, structure=disk, border_value=0)
        eroded = ndimage.binary_erosion(mask, structure=disk, border_value=0)
        assert np.array_equal(nodata_module._dilate(mask, radius), dilated), shape
        assert np.array_equal(nodata_module._erode(mask, radius), eroded), shape


@pytest.mark.parametrize("fringe_width", [0, 6])
def test_clean_collar_in_blocks_equals_one_window(rng, monkeypatch, fringe_width):
    # Blocks of 16 px put block and raster edges, full and empty windows all
    # in one small mask.
    monkeypatch.setattr(nodata_module, "_CLEAN_BLOCK", 16)
    full_corner = np.zeros((97, 83), dtype=bool)
    full_corner[:60, :50] = True
    # The smallest region that survives the opening, centred 5 px left of a
    # block edge (x = 48): its buffer reaches into the next block exactly
    # as far as the halo allows.
    smallest_region = np.zeros((97, 83), dtype=bool)
    smallest_region[38:43, 41:46] = _disk(2)
    cases = [_blobby_mask(rng, (97, 83)) for _ in range(4)]
    cases += [smallest_region, full_corner, np.ones((97, 83), dtype=bool), np.zeros((97, 83), dtype=bool),
              np.ones((3, 83), dtype=bool)]
    for nodata in cases:
        fringe = _fringe_of(nodata, rng)
        blocked = clean_collar(nodata, buffer=3, fringe=fringe, fringe_width=fringe_width)
        whole = nodata_module._clean_window(nodata, fringe if fringe_width else None, buffer=3,
                                            opening_radius=2, fringe_width=fringe_width)
        assert np.array_equal(blocked, whole), nodata.shape


def test_clean_collar_fringe_only_near_collar():
    nodata = np.zeros((60, 80), dtype=bool)
    nodata[:, :20] = True
    fringe = nodata.copy()
    fringe[20:30, 20:26] = True  # near-collar values touching the collar
    fringe[20:30, 50:60] = True  # a dark shadow 30 px from the collar
    nodata[25, 55] = True  # with one pixel of exact collar value

    cleaned = clean_collar(nodata, buffer=0, fringe=fringe, fringe_width=12)
    without_fringe = clean_collar(nodata, buffer=0)

    assert cleaned[22:28, 20:26].all()
    assert not cleaned[:, 40:].any()
    assert not without_fringe[:, 20:].any()


def test_clean_collar_rejects_fringe_of_other_shape():
    with pytest.raises(InvalidInputError, match=r"fringe \(4, 4\) must equal the nodata mask \(5, 5\)"):
        clean_collar(np.zeros((5, 5), dtype=bool), buffer=0, fringe=np.zeros((4, 4), dtype=bool), fringe_width=2)


def test_border_pixels_shape_and_values():
    raw = np.arange(2 * 4 * 5).reshape(2, 4, 5)

    border = border_pixels(raw)

    assert border.shape == (2, 2 * 5 + 2 * 4)
    assert set(border[0].tolist()) == {0, 1, 2, 3, 4, 5, 9, 10, 14, 15, 16, 17, 18, 19}


def test_detect_collar_value_black_white_none():
    black = np.zeros((3, 100), dtype=np.uint8)
    black[:, 60:] = 120
    white = np.full((3, 100), 255, dtype=np.uint8)
    white[:, 55:] = 80
    mixed = np.zeros((3, 100), dtype=np.uint8)
    mixed[:, 45:] = 90

    assert detect_collar_value(black, 255) == 0.0
    assert detect_collar_value(white, 255) == 255.0
    assert detect_collar_value(mixed, 255) is None


def test_detect_collar_value_needs_every_band():
    border = np.zeros((3, 100), dtype=np.uint8)
    border[1, :] = 40

    assert detect_collar_value(border, 255) is None


def test_detect_collar_value_exactly_half_not_collar():
    border = np.zeros((3, 100), dtype=np.uint8)
    border[:, 50:] = 90

    assert detect_collar_value(border, 255) is None


def test_detect_collar_value_white_skipped_without_max():
    border = np.ones((3, 10), dtype=np.float32)

    assert detect_collar_value(border, None) is None
    assert detect_collar_value(border, 1.0) == 1.0


def test_valid_mask_tag_keeps_isolated_pixels_nodata():
    raw = np.full((3, 30, 30), 100, dtype=np.uint8)
    raw[:, :, :10] = 255
    raw[:, 20, 25] = 255
    tag = NodataRule("tag", value=255.0, buffer=2)
    value = NodataRule("value", value=255.0, buffer=2)

    tag_valid = valid_mask(raw, tag)
    value_valid = valid_mask(raw, value)

    assert not tag_valid[20, 25]
    assert value_valid[20, 25]
    assert (~tag_valid[4:26, :12]).all()
    assert tag_valid[4:26, 12:].sum() == 22 * 18 - 1
    assert (~tag_valid).sum() == (~value_valid).sum() + 1


def test_valid_mask_alpha_and_none():
    raw = np.full((3, 4, 4), 10.0, dtype=np.float32)
    raw[0, 0, 0] = np.nan
    alpha = np.full((4, 4), 255, dtype=np.uint8)
    alpha[3, :] = 0

    alpha_valid = valid_mask(raw, NodataRule("alpha", alpha_band=4), alpha=alpha)
    none_valid = valid_mask(raw, NodataRule("none"), alpha=alpha)

    assert (~alpha_valid).sum() == 5
    assert (~none_valid).sum() == 1
    assert not none_valid[0, 0]


def test_choose_nodata_rule_order():
    sample = np.full((3, 8, 8), 50, dtype=np.uint8)
    black_border = np.zeros((3, 32), dtype=np.uint8)
    auto = ReadConfig()

    tag = choose_nodata_rule(auto, tag=0.0, alpha_band=4, sample=sample, border=black_border)
    alpha = choose_nodata_rule(auto, tag=None, alpha_band=4, sample=sample, border=black_border)
    collar = choose_nodata_rule(auto, tag=None, alpha_band=None, sample=sample, border=black_border)
    plain = choose_nodata_rule(auto, tag=None, alpha_band=None, sample=sample, border=black_border + 9)

    assert tag == NodataRule("tag", value=0.0, buffer=3, alpha_band=4)
    assert alpha == NodataRule("alpha", alpha_band=4)
    assert collar == NodataRule("collar", value=0.0, buffer=3)
    assert plain == NodataRule("none")


@pytest.mark.parametrize(
    ("dtype", "white", "image_max"),
    [
        (np.uint8, 255, 200),
        (np.uint16, 4095, 3000),  # 12-bit data stored in uint16
        (np.uint16, 65535, 40000),
        (np.float32, 255, 200),  # 8-bit data as floats, e.g. from rioxarray's masked=True
        (np.float32, 1.0, 0.8),
    ],
)
def test_choose_nodata_rule_white_collar_levels(dtype, white, image_max):
    sample = np.full((3, 8, 8), image_max, dtype=dtype)
    border = np.full((3, 40), white, dtype=dtype)
    border[:, 30:] = image_max

    rule = choose_nodata_rule(ReadConfig(), tag=None, alpha_band=None, sample=sample, border=border)

    assert rule == NodataRule("collar", value=float(white), buffer=3)


def test_choose_nodata_rule_no_white_level_above_range():
    sample = np.full((3, 8, 8), 70000.0, dtype=np.float32)
    border = np.full((3, 40), 70000.0, dtype=np.float32)

    rule = choose_nodata_rule(ReadConfig(), tag=None, alpha_band=None, sample=sample, border=border)

    assert rule == NodataRule("none")


def test_nodata_value_outside_dtype_rejected():
    uint8 = np.full((3, 8, 8), 50, dtype=np.uint8)
    border = np.zeros((3, 32), dtype=np.uint8)

    with pytest.raises(InvalidInputError, match=r"invalid nodata=300: uint8 pixels lie in 0\.\.255"):
        choose_nodata_rule(ReadConfig(nodata=300), tag=255.0, alpha_band=None, sample=uint8, border=border)
    with pytest.raises(InvalidInputError, match="invalid nodata=-1"):
        choose_nodata_rule(ReadConfig(nodata=-1), tag=None, alpha_band=None, sample=uint8, border=border)

    # Within the tolerance of the range, and any value for float pixels, are accepted.
    edge = choose_nodata_rule(ReadConfig(nodata=257, nodata_tolerance=2), tag=None, alpha_band=None, sample=uint8,
                              border=border)
    floats = choose_nodata_rule(ReadConfig(nodata=300), tag=None, alpha_band=None,
                                sample=uint8.astype(np.float32), border=border.astype(np.float32))
    assert edge.value == 257.0
    assert floats.value == 300.0


def test_choose_nodata_rule_nan_value_and_none():
    sample = np.ones((3, 4, 4), dtype=np.float32)
    sample[0, 0, 0] = np.nan
    border = np.ones((3, 16), dtype=np.float32)

    nan_tag = choose_nodata_rule(ReadConfig(), tag=float("nan"), alpha_band=None, sample=sample, border=border)
    nan_data = choose_nodata_rule(ReadConfig(), tag=None, alpha_band=None, sample=sample, border=border)
    explicit = choose_nodata_rule(ReadConfig(nodata=7, nodata_tolerance=2, collar_buffer=1), tag=0.0,
                                  alpha_band=None, sample=sample, border=border)
    none = choose_nodata_rule(ReadConfig(nodata="none"), tag=0.0, alpha_band=2, sample=sample, border=border)

    assert nan_tag.kind == "nan"
    assert nan_data.kind == "nan"
    assert explicit == NodataRule("value", value=7.0, tolerance=2.0, buffer=1)
    assert none == NodataRule("none")


def test_widen_collar_tolerance_only_collar():
    scale = np.array([255.0, 255.0, 255.0], dtype=np.float32)

    collar = widen_collar_tolerance(NodataRule("collar", value=0.0, tolerance=2.0), scale)
    wide = widen_collar_tolerance(NodataRule("collar", value=0.0, tolerance=20.0), scale)
    value = widen_collar_tolerance(NodataRule("value", value=0.0), scale)

    assert collar.tolerance == 2.0
    assert collar.fringe_tolerance == pytest.approx(10.0)
    assert wide.fringe_tolerance == 20.0
    assert value.tolerance == 0.0
    assert value.fringe_tolerance is None


def test_nodata_rule_halo():
    assert NodataRule("collar", value=0.0, buffer=3).halo == 7
    assert NodataRule("collar", value=0.0, fringe_tolerance=10.0, buffer=3).halo == 7 + 2 + 12
    assert NodataRule("tag", value=0.0, buffer=0).halo == 4
    assert NodataRule("alpha", alpha_band=4).halo == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16])
def test_value_mask_integer_input_matches_float_differences(rng, dtype):
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max, size=(3, 30, 30), endpoint=True).astype(dtype)
    raw[:, :5, :5] = info.max
    for value in [0.0, float(info.max), -9999.0, 3.5]:
        for tolerance in [0.0, 0.5, 2.9999999, 10.0]:
            expected = np.max(np.abs(raw.astype(np.float64) - value), axis=0) <= tolerance
            assert np.array_equal(value_mask(raw, value, tolerance=tolerance), expected), (value, tolerance)
