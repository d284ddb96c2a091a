"""Tests of how V2 cells map onto input pixels when the responsibilities are cropped and masked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tree_seg.core.segmentation import _any_per_cell, _cell_pixel_ranges


def _overlapping_pixels(cell: int, cell_width: float, n_pixels: int) -> range:
    return range(math.floor(cell * cell_width), min(math.ceil((cell + 1) * cell_width), n_pixels))


@pytest.mark.parametrize(
    ("cell_size", "n_pixels", "n_resampled"),
    [(4, 20, 20), (4, 20, 32), (2, 10, 25), (16, 203, 102), (3, 7, 7)],
)
def test_cell_pixel_ranges_match_overlap(cell_size, n_pixels, n_resampled):
    n_cells = -(-n_resampled // cell_size)
    starts, stops = _cell_pixel_ranges(n_cells, cell_size=cell_size, n_pixels=n_pixels, n_resampled=n_resampled)
    cell_width = cell_size * n_pixels / n_resampled
    for cell in range(n_cells):
        expected = _overlapping_pixels(cell, cell_width, n_pixels)
        assert (starts[cell], stops[cell]) == (expected.start, expected.stop)


@pytest.mark.parametrize(("cell_size", "n_pixels", "n_resampled"), [(4, 20, 32), (2, 10, 25), (16, 203, 102)])
def test_any_per_cell_matches_brute_force(cell_size, n_pixels, n_resampled):
    rng = np.random.default_rng(3)
    mask = rng.random((n_pixels, 5)) < 0.15
    n_cells = -(-n_resampled // cell_size)
    starts, stops = _cell_pixel_ranges(n_cells, cell_size=cell_size, n_pixels=n_pixels, n_resampled=n_resampled)
    found = _any_per_cell(mask, starts, stops)
    expected = np.stack([mask[start:stop].any(axis=0) for start, stop in zip(starts, stops, strict=True)])
    np.testing.assert_array_equal(found, expected)
