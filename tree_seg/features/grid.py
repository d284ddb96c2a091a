"""The window grid on which a backbone runs, anchored at the raster origin.

The grid depends only on the raster size, the patch size, the window and the
overlap, never on how the raster is split into chunks. A chunk that extracts
features for part of the raster therefore runs exactly the windows that the
whole-raster run would run there.
"""

from __future__ import annotations

import math

import affine
import numpy as np

from tree_seg.exceptions import ConfigurationError

__all__ = ["WindowGrid", "nearest_multiples", "patch_transform"]


def nearest_multiples(value: int, base: int) -> tuple[int, int]:
    """Return the multiples of ``base`` just below and just above ``value``.

    When ``value`` is itself a multiple, both entries are ``value``.
    """
    below = (value // base) * base
    above = below if below == value else below + base
    return below, above


def check_patch_multiple(name: str, value: int, patch_size: int) -> None:
    """Raise ConfigurationError naming the nearest valid values when ``value`` (pixels) is not a multiple of ``patch_size``."""
    if value % patch_size == 0:
        return
    below, above = nearest_multiples(value, patch_size)
    fix = f"use {below} or {above}" if below > 0 or name == "overlap" else f"use {above}"
    raise ConfigurationError(f"{name}={value} is not a multiple of the patch size {patch_size}; {fix}")


def _check_positive_int(name: str, value: int, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigurationError(f"invalid {name}={value!r}: expected an integer >= {low}")


class WindowGrid:
    """Windows over an image of ``height`` x ``width`` pixels.

    Parameters
    ----------
    height, width : int
        Size of the image given to the backbone (after resampling), in pixels.
    patch_size : int
        Backbone patch side in pixels.
    window : int
        Requested window side in pixels; a multiple of ``patch_size``.
    overlap : int
        Overlap of neighbouring windows in pixels; a multiple of
        ``patch_size``, smaller than ``window``.

    Raises
    ------
    ConfigurationError
        If a value is not a positive integer, ``window`` or ``overlap`` is not
        a multiple of the patch size, or ``overlap >= window``.

    Notes
    -----
    The patch grid has ``ceil(height / p)`` x ``ceil(width / p)`` patches for
    patch size ``p``; the last row and column may reach past the raster edge.

    Per axis of size ``n`` with ``P = ceil(n / p) * p`` (the patch grid's extent
    in pixels), the window side is ``w = min(window, P)``, so an image smaller
    than one window gets a single smaller window instead of being resized.
    The stride is ``s = window - overlap`` and the window origins are
    ``0, s, 2s, ...``. The number of windows is::

        count = 1 + ceil(max(P - w, 0) / s)

    It rounds up so that the last window reaches the last patch even when
    ``P - w`` is not a multiple of the stride. That last window may extend
    past the raster edge, where :func:`tree_seg.features.extract.extract_patch_features`
    fills pixels by reflecting the raster.
    """

    def __init__(self, height: int, width: int, *, patch_size: int, window: int, overlap: int) -> None:
        _check_positive_int("height", height, low=1)
        _check_positive_int("width", width, low=1)
        _check_positive_int("patch_size", patch_size, low=1)
        _check_positive_int("window", window, low=1)
        _check_positive_int("overlap", overlap, low=0)
        check_patch_multiple("window", window, patch_size)
        check_patch_multiple("overlap", overlap, patch_size)
        if overlap >= window:
            raise ConfigurationError(f"invalid overlap={overlap}: it must be smaller than window={window}")

        self.height = int(height)
        self.width = int(width)
        self.patch_size = int(patch_size)
        self.window = int(window)
        self.overlap = int(overlap)
        self.stride = self.window - self.overlap

        p = self.patch_size
        self.patch_shape: tuple[int, int] = (math.ceil(self.height / p), math.ceil(self.width / p))
        """Patch grid shape (rows, cols)."""
        extent = (self.patch_shape[0] * p, self.patch_shape[1] * p)
        self.window_shape: tuple[int, int] = (min(self.window, extent[0]), min(self.window, extent[1]))
        """Window shape (height, width) in pixels; equal for every window."""
        self.origins_y = self._axis_origins(extent[0], self.window_shape[0])
        """Row of each window's top edge in pixels, ascending."""
        self.origins_x = self._axis_origins(extent[1], self.window_shape[1])
        """Column of each window's left edge in pixels, ascending."""

    def _axis_origins(self, extent: int, side: int) -> np.ndarray:
        count = 1 + math.ceil(max(extent - side, 0) / self.stride)
        return np.arange(count, dtype=np.int64) * self.stride

    def __repr__(self) -> str:
        return (
            f"WindowGrid(height={self.height}, width={self.width}, patch_size={self.patch_size}, "
            f"window={self.window}, overlap={self.overlap})"
        )

    @property
    def window_patches(self) -> tuple[int, int]:
        """Window shape in patches (rows, cols)."""
        return self.window_shape[0] // self.patch_size, self.window_shape[1] // self.patch_size

    @property
    def n_windows(self) -> int:
        """Number of windows in the grid."""
        return len(self.origins_y) * len(self.origins_x)

    def origins(self) -> list[tuple[int, int]]:
        """Return the (y0, x0) origin of every window in pixels, row by row."""
        return [(int(y), int(x)) for y in self.origins_y for x in self.origins_x]

    def _touching(self, origins: np.ndarray, side_patches: int, region: slice, size: int) -> np.ndarray:
        start, stop, _ = region.indices(size)
        first = origins // self.patch_size
        return origins[(first < stop) & (first + side_patches > start)]

    def windows_touching(self, patch_rows: slice, patch_cols: slice) -> list[tuple[int, int]]:
        """Return the origins of the windows that cover any patch of a region.

        Parameters
        ----------
        patch_rows, patch_cols : slice
            Region of the patch grid, in patches; step must be 1 or None.

        Returns
        -------
        list of (int, int)
            Window origins (y0, x0) in pixels, row by row; empty for an empty
            region.
        """
        for name, region in (("patch_rows", patch_rows), ("patch_cols", patch_cols)):
            if region.step not in (None, 1):
                raise ConfigurationError(f"invalid {name}={region}: the step must be 1")
        rows = self._touching(self.origins_y, self.window_patches[0], patch_rows, self.patch_shape[0])
        cols = self._touching(self.origins_x, self.window_patches[1], patch_cols, self.patch_shape[1])
        return [(int(y), int(x)) for y in rows for x in cols]

    def blend_weights(self) -> np.ndarray:
        """Compute the weights that blend overlapping window outputs.

        Returns
        -------
        ndarray of shape window_patches, float32
            Separable pyramid: the outer product of ``min(i + 1, n - i)`` over
            the patch index ``i`` of each axis of ``n`` patches, divided by its
            maximum. Values are in (0, 1], strictly positive and largest at
            the window centre, so patches near a window's edge, which see
            less context, count less than the same patches seen from a
            neighbouring window's centre.
        """
        rows, cols = self.window_patches
        ramp_y = np.minimum(np.arange(1, rows + 1), np.arange(rows, 0, -1)).astype(np.float64)
        ramp_x = np.minimum(np.arange(1, cols + 1), np.arange(cols, 0, -1)).astype(np.float64)
        weights = np.outer(ramp_y, ramp_x)
        return (weights / weights.max()).astype(np.float32)


def patch_transform(transform: affine.Affine, *, input_shape: tuple[int, int], resampled_shape: tuple[int, int],
                    patch_size: int) -> affine.Affine:
    """Return the CRS transform of the patch grid.

    One patch is ``patch_size`` resampled pixels, and one resampled pixel is
    ``input / resampled`` input pixels per axis (the exact ratio of sizes,
    which the resampling uses, rather than ``1 / scale``).
    """
    step_x = patch_size * input_shape[1] / resampled_shape[1]
    step_y = patch_size * input_shape[0] / resampled_shape[0]
    return transform @ affine.Affine.scale(step_x, step_y)
