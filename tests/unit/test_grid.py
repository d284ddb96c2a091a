"""Tests for tree_seg.features.grid."""

from __future__ import annotations

import numpy as np
import pytest

from tree_seg.exceptions import ConfigurationError
from tree_seg.features.grid import WindowGrid, nearest_multiples


def _coverage(grid: WindowGrid) -> np.ndarray:
    """Number of windows covering each patch of the grid."""
    count = np.zeros(grid.patch_shape, dtype=int)
    rows, cols = grid.window_patches
    for y0, x0 in grid.origins():
        top, left = y0 // grid.patch_size, x0 // grid.patch_size
        count[top:top + rows, left:left + cols] += 1
    return count


def test_grid_origins_1000x700() -> None:
    grid = WindowGrid(1000, 700, patch_size=16, window=448, overlap=112)

    assert grid.patch_shape == (63, 44)
    assert grid.window_shape == (448, 448)
    assert grid.window_patches == (28, 28)
    assert grid.stride == 336
    assert grid.origins_y.tolist() == [0, 336, 672]
    assert grid.origins_x.tolist() == [0, 336]
    assert grid.n_windows == 6
    assert grid.origins()[:3] == [(0, 0), (0, 336), (336, 0)]


def test_grid_coverage_1000x700() -> None:
    grid = WindowGrid(1000, 700, patch_size=16, window=448, overlap=112)

    coverage = _coverage(grid)

    assert coverage.min() >= 1
    # Patches in the overlap bands are seen by two windows per axis.
    assert coverage[21, 21] == 4
    assert coverage[0, 0] == 1


def test_grid_small_image_one_window() -> None:
    grid = WindowGrid(56, 67, patch_size=14, window=448, overlap=112)

    assert grid.patch_shape == (4, 5)
    assert grid.window_shape == (56, 70)
    assert grid.origins() == [(0, 0)]
    assert _coverage(grid).min() == 1


def test_grid_small_image_patch16() -> None:
    grid = WindowGrid(56, 67, patch_size=16, window=448, overlap=112)

    assert grid.patch_shape == (4, 5)
    assert grid.window_shape == (64, 80)
    assert grid.n_windows == 1


def test_grid_one_axis_smaller() -> None:
    grid = WindowGrid(40, 1000, patch_size=16, window=256, overlap=64)

    assert grid.window_shape == (48, 256)
    assert grid.origins_y.tolist() == [0]
    assert grid.origins_x.tolist() == [0, 192, 384, 576, 768]
    assert _coverage(grid).min() == 1


@pytest.mark.parametrize(("height", "width"), [(449, 449), (448, 448), (1, 1), (1009, 337), (2048, 2048)])
def test_grid_covers_every_patch(height: int, width: int) -> None:
    grid = WindowGrid(height, width, patch_size=16, window=448, overlap=112)

    coverage = _coverage(grid)

    assert coverage.min() >= 1
    # No window starts past the patch grid.
    assert grid.origins_y.max() < grid.patch_shape[0] * 16
    assert grid.origins_x.max() < grid.patch_shape[1] * 16


def test_grid_window_count_exact_fit() -> None:
    # 784 px = 448 + 336: the second window ends exactly at the edge.
    assert WindowGrid(784, 784, patch_size=16, window=448, overlap=112).origins_y.tolist() == [0, 336]
    assert WindowGrid(785, 785, patch_size=16, window=448, overlap=112).origins_y.tolist() == [0, 336, 672]


def test_grid_window_not_multiple() -> None:
    with pytest.raises(ConfigurationError, match="window=450 is not a multiple of the patch size 14; use 448 or 462"):
        WindowGrid(1000, 1000, patch_size=14, window=450, overlap=112)


def test_grid_overlap_not_multiple() -> None:
    with pytest.raises(ConfigurationError, match="overlap=100 is not a multiple of the patch size 16; use 96 or 112"):
        WindowGrid(1000, 1000, patch_size=16, window=448, overlap=100)


def test_grid_window_below_patch() -> None:
    with pytest.raises(ConfigurationError, match="window=10 is not a multiple of the patch size 16; use 16$"):
        WindowGrid(1000, 1000, patch_size=16, window=10, overlap=0)


def test_grid_overlap_too_large() -> None:
    with pytest.raises(ConfigurationError, match="overlap=448: it must be smaller than window=448"):
        WindowGrid(1000, 1000, patch_size=16, window=448, overlap=448)


def test_grid_rejects_empty_image() -> None:
    with pytest.raises(ConfigurationError, match="invalid height=0"):
        WindowGrid(0, 10, patch_size=16, window=448, overlap=112)


def test_nearest_multiples() -> None:
    assert nearest_multiples(450, 14) == (448, 462)
    assert nearest_multiples(448, 14) == (448, 448)
    assert nearest_multiples(5, 16) == (0, 16)


def test_windows_touching_matches_brute_force() -> None:
    grid = WindowGrid(1000, 700, patch_size=16, window=448, overlap=112)
    rows, cols = grid.window_patches

    for region in [(slice(0, 1), slice(0, 1)), (slice(20, 22), slice(20, 23)), (slice(40, 63), slice(43, 44)),
                   (slice(27, 28), slice(0, 44)), (slice(28, 29), slice(21, 22))]:
        expected = [
            (y0, x0) for y0, x0 in grid.origins()
            if y0 // 16 < region[0].stop and y0 // 16 + rows > region[0].start
            and x0 // 16 < region[1].stop and x0 // 16 + cols > region[1].start
        ]
        assert grid.windows_touching(*region) == expected, region


def test_windows_touching_values() -> None:
    grid = WindowGrid(1000, 700, patch_size=16, window=448, overlap=112)

    assert grid.windows_touching(slice(0, 1), slice(0, 1)) == [(0, 0)]
    assert grid.windows_touching(slice(21, 22), slice(21, 22)) == [(0, 0), (0, 336), (336, 0), (336, 336)]
    assert grid.windows_touching(slice(62, 63), slice(43, 44)) == [(672, 336)]
    assert grid.windows_touching(slice(None), slice(None)) == grid.origins()


def test_windows_touching_rejects_step() -> None:
    grid = WindowGrid(100, 100, patch_size=16, window=64, overlap=16)

    with pytest.raises(ConfigurationError, match="step must be 1"):
        grid.windows_touching(slice(0, 4, 2), slice(0, 4))


def test_blend_weights_positive_centre() -> None:
    grid = WindowGrid(1000, 1000, patch_size=16, window=448, overlap=112)

    weights = grid.blend_weights()

    assert weights.shape == (28, 28)
    assert weights.dtype == np.float32
    assert weights.min() > 0
    assert weights.max() == 1.0
    assert weights[13, 13] == 1.0
    assert weights[14, 14] == 1.0
    assert weights[0, 0] == pytest.approx(1 / 196)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    np.testing.assert_allclose(weights, np.outer(weights[:, 13], weights[13, :]), rtol=1e-6)


def test_blend_weights_non_square_window() -> None:
    weights = WindowGrid(56, 67, patch_size=14, window=448, overlap=112).blend_weights()

    assert weights.shape == (4, 5)
    assert weights.min() > 0
    np.testing.assert_allclose(weights[1], [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3], rtol=1e-6)
