"""Tests for tree_seg.features.resample."""

from __future__ import annotations

import numpy as np
import pytest

from tree_seg.exceptions import InvalidInputError
from tree_seg.features.resample import input_span, resample_image, resample_mask, resampled_shape


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [((1000, 700), 0.5, (500, 350)), ((1001, 3), 0.5, (501, 2)), ((3, 3), 0.1, (1, 1)),
     ((56, 67), 2.0, (112, 134)), ((100, 100), 1.0, (100, 100)), ((7, 9), 0.37, (3, 3))],
)
def test_resampled_shape(shape: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert resampled_shape(shape, scale) == expected


def test_resampled_shape_rejects_zero() -> None:
    with pytest.raises(InvalidInputError, match="invalid scale=0"):
        resampled_shape((10, 10), 0)


def test_resample_identity(rng: np.random.Generator) -> None:
    image = rng.random((3, 37, 53), dtype=np.float32)

    out = resample_image(image, 1.0)

    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


def test_resample_identity_region(rng: np.random.Generator) -> None:
    image = rng.random((3, 37, 53), dtype=np.float32)

    out = resample_image(image[:, 10:30, 5:50], 1.0, out_rows=slice(12, 20), out_cols=slice(5, 9),
                         in_row0=10, in_col0=5, in_shape=(37, 53))

    np.testing.assert_array_equal(out, image[:, 12:20, 5:9])


def test_resample_constant_stays_constant() -> None:
    image = np.full((2, 31, 45), 0.3, dtype=np.float32)

    for scale in (0.25, 0.5, 0.7, 1.5, 3.0):
        np.testing.assert_allclose(resample_image(image, scale), 0.3, atol=1e-6)


def test_resample_linear_ramp_downsampled() -> None:
    # A ramp equal to the column index: a symmetric triangle filter keeps it
    # linear, so output column j is its centre in input coordinates, 2j + 0.5.
    image = np.broadcast_to(np.arange(40, dtype=np.float32), (1, 8, 40)).copy()

    out = resample_image(image, 0.5)

    assert out.shape == (1, 4, 20)
    np.testing.assert_allclose(out[0, 0, 1:-1], 2 * np.arange(1, 19) + 0.5, atol=1e-5)


def test_resample_linear_ramp_upsampled() -> None:
    image = np.broadcast_to(np.arange(10, dtype=np.float32), (1, 4, 10)).copy()

    out = resample_image(image, 2.0)

    assert out.shape == (1, 8, 20)
    np.testing.assert_allclose(out[0, 0, 1:-1], (np.arange(1, 19) + 0.5) / 2 - 0.5, atol=1e-6)


def test_resample_downsample_weights() -> None:
    # Halving uses taps 0.125, 0.375, 0.375, 0.125 around each output centre.
    image = np.zeros((1, 1, 16), dtype=np.float32)
    image[0, 0, 7] = 1.0

    out = resample_image(image, 0.5)[0, 0]

    np.testing.assert_allclose(out[2:6], [0.0, 0.375, 0.125, 0.0], atol=1e-7)


@pytest.mark.parametrize("scale", [0.5, 0.37, 0.25, 1.6, 2.0])
def test_resample_chunk_matches_whole(scale: float, rng: np.random.Generator) -> None:
    image = rng.random((3, 97, 131), dtype=np.float32)
    whole = resample_image(image, scale)
    n_out = resampled_shape(image.shape[1:], scale)

    for out_rows, out_cols in [(slice(0, 7), slice(0, 9)), (slice(5, n_out[0]), slice(3, 11)),
                               (slice(n_out[0] - 1, n_out[0]), slice(n_out[1] - 4, n_out[1])),
                               (slice(2, 3), slice(0, n_out[1]))]:
        span_y = input_span(out_rows, 97, scale)
        span_x = input_span(out_cols, 131, scale)
        chunk = image[:, span_y, span_x]

        part = resample_image(chunk, scale, out_rows=out_rows, out_cols=out_cols,
                              in_row0=span_y.start, in_col0=span_x.start, in_shape=(97, 131))

        np.testing.assert_allclose(part, whole[:, out_rows, out_cols], atol=1e-6)


def test_resample_chunk_with_extra_halo(rng: np.random.Generator) -> None:
    image = rng.random((1, 60, 60), dtype=np.float32)
    whole = resample_image(image, 0.4)

    part = resample_image(image[:, 10:60, 0:40], 0.4, out_rows=slice(6, 12), out_cols=slice(2, 8),
                          in_row0=10, in_col0=0, in_shape=(60, 60))

    np.testing.assert_allclose(part, whole[:, 6:12, 2:8], atol=1e-6)


def test_resample_chunk_too_small(rng: np.random.Generator) -> None:
    image = rng.random((1, 60, 60), dtype=np.float32)
    span = input_span(slice(6, 12), 60, 0.5)

    with pytest.raises(InvalidInputError, match="does not cover input rows"):
        resample_image(image[:, span.start + 1:span.stop, :], 0.5, out_rows=slice(6, 12),
                       in_row0=span.start + 1, in_shape=(60, 60))


def test_resample_offset_needs_shape(rng: np.random.Generator) -> None:
    with pytest.raises(InvalidInputError, match="without in_shape"):
        resample_image(rng.random((1, 10, 10), dtype=np.float32), 0.5, in_row0=4)


def test_input_span_values() -> None:
    # Output pixel 3 at scale 0.5 is centred on input 6.5 with taps 5..8.
    assert input_span(slice(3, 4), 100, 0.5) == slice(5, 9)
    assert input_span(slice(0, 1), 100, 0.5) == slice(0, 3)
    assert input_span(slice(49, 50), 100, 0.5) == slice(97, 100)
    assert input_span(slice(10, 20), 100, 1.0) == slice(10, 20)


def test_resample_mask_threshold() -> None:
    valid = np.zeros((8, 16), dtype=bool)
    valid[:, :8] = True

    out = resample_mask(valid, 0.5)

    assert out.shape == (4, 8)
    assert out.dtype == bool
    # Output column 3 takes 0.125 + 0.375 + 0.375 from valid inputs 5-7 (0.875);
    # column 4 takes 0.125 from input 7 only.
    assert out[0].tolist() == [True, True, True, True, False, False, False, False]


def test_resample_mask_identity() -> None:
    valid = np.random.default_rng(0).random((13, 17)) > 0.5

    np.testing.assert_array_equal(resample_mask(valid, 1.0), valid)


def test_resample_mask_chunk_matches_whole(rng: np.random.Generator) -> None:
    valid = rng.random((50, 70)) > 0.3
    whole = resample_mask(valid, 0.45)
    rows, cols = slice(4, 15), slice(10, 20)
    span_y, span_x = input_span(rows, 50, 0.45), input_span(cols, 70, 0.45)

    part = resample_mask(valid[span_y, span_x], 0.45, out_rows=rows, out_cols=cols,
                         in_row0=span_y.start, in_col0=span_x.start, in_shape=(50, 70))

    np.testing.assert_array_equal(part, whole[rows, cols])
