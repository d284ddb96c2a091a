"""Speed of the collar clean-up against the same morphology in scipy.ndimage.

Every chunk read under a collar rule runs :func:`tree_seg.io.nodata.valid_mask`,
in the feature pass and again in the label pass. Run with
``python -m pytest tests/benchmarks/bench_nodata.py -m benchmark -s`` on an
otherwise idle machine to see the timings.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tree_seg.io.nodata import (
    COLLAR_FRINGE_WIDTH,
    FRINGE_SEED_RADIUS,
    OPENING_RADIUS,
    NodataRule,
    valid_mask,
)

pytestmark = pytest.mark.benchmark

SIDE = 4096


def _disk(radius):
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2



def _reference_valid_mask(raw, rule):
    # The same collar rule with each step as one scipy.ndimage call over the
    # whole chunk.
    difference = np.max(np.abs(raw.astype(np.float64) - rule.value), axis=0)
    nodata = difference <= rule.tolerance
    fringe = difference <= rule.fringe_tolerance
    seeds = ndimage.binary_opening(nodata, structure=_disk(FRINGE_SEED_RADIUS), border_value=0)
    near = ndimage.binary_dilation(seeds, structure=_disk(rule.fringe_width), border_value=0)
    cleaned = nodata | (fringe & near)
    cleaned = ndimage.binary_opening(cleaned, structure=_disk(OPENING_RADIUS), border_value=0)
    cleaned = ndimage.binary_dilation(cleaned, structure=_disk(rule.buffer), border_value=0)
    return ~cleaned


def _chunk(collar: bool, seed=0):
    # An RGB uint8 chunk of mid-grey texture with dark specks (shadows), and
    # optionally a black collar with a JPEG-like fringe over a diagonal corner.
    rng = np.random.default_rng(seed)
    raw = rng.integers(20, 235, size=(3, SIDE, SIDE), dtype=np.uint8)
    specks = rng.random((SIDE, SIDE)) < 0.001
    raw[:, specks] = 0
    if collar:
        rows, cols = np.mgrid[:SIDE, :SIDE]
        corner = rows + cols < SIDE // 2
        fringe = (rows + cols < SIDE // 2 + 8) & ~corner
        raw[:, corner] = 0
        raw[:, fringe] = rng.integers(0, 8, size=(3, int(fringe.sum())), dtype=np.uint8)
    return raw


@pytest.mark.parametrize("collar", [False, True], ids=["interior", "collar"])
def test_collar_mask_faster_than_scipy_morphology(best_time, collar):
    rule = NodataRule(kind="collar", value=0.0, tolerance=0.0, fringe_tolerance=10.0, buffer=3)
    assert rule.fringe_width == COLLAR_FRINGE_WIDTH
    raw = _chunk(collar)

    seconds, valid = best_time(lambda: valid_mask(raw, rule))
    reference_seconds, expected = best_time(lambda: _reference_valid_mask(raw, rule), 2)

    print(f"\ncollar mask, {SIDE} x {SIDE} px, {'with' if collar else 'without'} collar: {seconds * 1000:.0f} ms; "
          f"scipy.ndimage {reference_seconds * 1000:.0f} ms ({reference_seconds / seconds:.1f}x)")
    assert np.array_equal(valid, expected)
    assert (valid.mean() < 0.9) == collar
    # Measured 26-29x without a collar and 20-26x with one on a 2-core machine.
    assert reference_seconds / seconds >= 10
