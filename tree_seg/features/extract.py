"""Windowed feature extraction into a patch-feature grid.

The backbone runs on the windows of a :class:`~tree_seg.features.grid.WindowGrid`;
where windows overlap, their patch features are averaged with the grid's
blend weights. Features for a region of the patch grid come from the windows
that touch it, each read and computed exactly as in a whole-raster run. A
chunked run therefore gives the whole-raster values, up to floating-point
differences between batch compositions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from tree_seg.exceptions import ConfigurationError, InvalidInputError
from tree_seg.features.grid import WindowGrid
from tree_seg.models.base import Backbone

__all__ = [
    "Reader",
    "blend_windows",
    "extract_patch_features",
    "iter_window_features",
    "patch_validity",
    "read_window",
    "reflect_index",
    "windows_with_data",
]

logger = logging.getLogger(__name__)

Reader = Callable[[int, int, int, int], np.ndarray]
"""``read(y0, y1, x0, x1)`` returns raster pixels ``[:, y0:y1, x0:x1]`` as (band, y, x)."""


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map pixel indices outside ``0..size - 1`` into the raster by reflection.

    The edge pixel is not repeated, as in ``numpy.pad(mode="reflect")``, and
    indices farther out than the raster is long reflect again from the other
    edge, so the result depends only on ``size``.

    Parameters
    ----------
    index : ndarray of int
        Global pixel indices along one axis.
    size : int
        Raster size along that axis, in pixels.

    Returns
    -------
    ndarray of int64
        Indices in ``0..size - 1``.
    """
    index = np.asarray(index, dtype=np.int64)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


def read_window(read: Reader, grid: WindowGrid, y0: int, x0: int) -> np.ndarray:
    """Read one window, filling pixels past the raster edge by reflection.

    Parameters
    ----------
    read : callable
        ``read(y0, y1, x0, x1)`` returning raster pixels (band, y, x) for a
        range inside the raster.
    grid : WindowGrid
        The grid the window belongs to.
    y0, x0 : int
        Window origin in pixels.

    Returns
    -------
    ndarray of shape (band, window_height, window_width), float32
    """
    height, width = grid.window_shape
    rows = reflect_index(np.arange(y0, y0 + height), grid.height)
    cols = reflect_index(np.arange(x0, x0 + width), grid.width)
    row_lo, row_hi = int(rows.min()), int(rows.max()) + 1
    col_lo, col_hi = int(cols.min()), int(cols.max()) + 1

    block = np.asarray(read(row_lo, row_hi, col_lo, col_hi))
    if block.ndim != 3 or block.shape[1:] != (row_hi - row_lo, col_hi - col_lo):
        raise InvalidInputError(
            f"reader returned shape {block.shape} for rows {row_lo}:{row_hi}, cols {col_lo}:{col_hi}: "
            f"expected (band, {row_hi - row_lo}, {col_hi - col_lo})"
        )
    inside = y0 + height <= grid.height and x0 + width <= grid.width
    if inside:
        return block.astype(np.float32, copy=False)
    return block[:, (rows - row_lo)[:, None], (cols - col_lo)[None, :]].astype(np.float32, copy=False)


def _region(name: str, region: slice | None, size: int) -> slice:
    if region is None:
        return slice(0, size)
    start, stop, step = region.indices(size)
    if step != 1 or stop <= start:
        raise InvalidInputError(f"invalid {name}={region}: expected a non-empty slice with step 1 inside 0..{size}")
    return slice(start, stop)


def _array_reader(image: np.ndarray, grid: WindowGrid) -> Reader:
    if image.ndim != 3 or image.shape[1:] != (grid.height, grid.width):
        raise InvalidInputError(
            f"invalid image of shape {image.shape} for a grid of {grid.height} x {grid.width} pixels: "
            f"expected (band, {grid.height}, {grid.width})"
        )
    return lambda y0, y1, x0, x1: image[:, y0:y1, x0:x1]


def extract_patch_features(
    read: Reader | np.ndarray,
    grid: WindowGrid,
    backbone: Backbone,
    *,
    patch_rows: slice | None = None,
    patch_cols: slice | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, float], None] | None = None,
    valid: Reader | np.ndarray | None = None,
) -> np.ndarray:
    """Extract blended patch features for the whole patch grid or a region of it.

    Parameters
    ----------
    read : callable or ndarray of shape (band, y, x)
        The image the grid was built for (float32 RGB in [0, 1]), or
        ``read(y0, y1, x0, x1)`` returning its pixels for a range inside the
        raster. Pixels past the raster edge are filled by
        :func:`read_window`.
    grid : WindowGrid
        Window grid of the image; its patch size must be the backbone's.
    backbone : Backbone
        Feature extractor.
    patch_rows, patch_cols : slice or None, default=None
        Region of the patch grid to compute, in patches; ``None`` is the
        whole axis.
    batch_size : int, default=8
        Windows per call to :meth:`Backbone.extract`.
    on_batch : callable or None, default=None
        Called as ``on_batch(n_windows, seconds)`` after each batch with the
        batch's window count and backbone time in seconds.
    valid : callable, ndarray of shape (y, x) of bool, or None, default=None
        Valid-pixel mask of the image, or ``valid(y0, y1, x0, x1)`` returning
        it as ``(1, y, x)`` for a range inside the raster. Windows without a
        valid pixel are not passed to the backbone, which saves its time on
        nodata collars. Every window that covers a valid patch has a valid
        pixel, so only invalid patches change.

    Returns
    -------
    ndarray of shape (rows, cols, feature_dim), float32
        Features of the requested patches: the blend-weighted mean over the
        windows that cover each patch, or zeros for a patch that only
        skipped windows cover.

    Raises
    ------
    ConfigurationError
        If the grid's patch size differs from the backbone's, or
        ``batch_size`` is not a positive integer.
    InvalidInputError
        If the image or the reader's output does not fit the grid, or a
        region is empty.
    """
    if grid.patch_size != backbone.patch_size:
        raise ConfigurationError(
            f"grid patch size {grid.patch_size} differs from {backbone.spec.name}'s patch size "
            f"{backbone.patch_size}: build the WindowGrid with patch_size={backbone.patch_size}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"invalid batch_size={batch_size!r}: expected an integer >= 1")
    reader = _array_reader(read, grid) if isinstance(read, np.ndarray) else read
    rows = _region("patch_rows", patch_rows, grid.patch_shape[0])
    cols = _region("patch_cols", patch_cols, grid.patch_shape[1])

    origins = grid.windows_touching(rows, cols)
    if valid is not None:
        valid_reader = _array_reader(valid[None], grid) if isinstance(valid, np.ndarray) else valid
        origins = windows_with_data(valid_reader, grid, origins)
    logger.debug("extracting patches %s x %s from %d windows of %s px", rows, cols, len(origins), grid.window_shape)
    outputs = iter_window_features(reader, grid, backbone, origins, batch_size=batch_size, on_batch=on_batch)
    return blend_windows(outputs, grid, rows, cols, backbone.feature_dim)


def windows_with_data(valid: Reader, grid: WindowGrid, origins: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Return the origins of the windows that contain at least one valid pixel, in the given order.

    Parameters
    ----------
    valid : callable
        ``valid(y0, y1, x0, x1)`` returning the valid-pixel mask as (1, y, x)
        for a range inside the raster.
    grid : WindowGrid
        The grid the windows belong to.
    origins : list of (int, int)
        Window origins (y0, x0) in pixels.
    """
    with_data = [(y0, x0) for y0, x0 in origins if read_window(valid, grid, y0, x0).any()]
    if len(with_data) < len(origins):
        logger.debug("skipping %d of %d windows without valid pixels", len(origins) - len(with_data), len(origins))
    return with_data


def iter_window_features(
    read: Reader,
    grid: WindowGrid,
    backbone: Backbone,
    origins: list[tuple[int, int]],
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, float], None] | None = None,
) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Run the backbone on windows in batches and yield each window's patch features.

    Parameters
    ----------
    read : callable
        ``read(y0, y1, x0, x1)`` returning raster pixels (band, y, x) for a
        range inside the raster.
    grid : WindowGrid
        The grid the windows belong to.
    backbone : Backbone
        Feature extractor.
    origins : list of (int, int)
        Window origins (y0, x0) in pixels, in the order to yield them.
    batch_size : int, default=8
        Windows per call to :meth:`Backbone.extract`.
    on_batch : callable or None, default=None
        Called as ``on_batch(n_windows, seconds)`` after each batch.

    Yields
    ------
    origin : tuple of int
        The window's (y0, x0).
    features : ndarray of shape (window_patch_y, window_patch_x, feature_dim), float32
        The window's patch features, before blending.
    """
    for first in range(0, len(origins), batch_size):
        batch_origins = origins[first:first + batch_size]
        windows = np.stack([read_window(read, grid, y0, x0) for y0, x0 in batch_origins])
        started = time.perf_counter()
        features = backbone.extract(windows)
        seconds = time.perf_counter() - started
        if on_batch is not None:
            on_batch(len(batch_origins), seconds)
        logger.debug("batch of %d windows in %.3f s", len(batch_origins), seconds)
        yield from zip(batch_origins, features, strict=True)


def blend_windows(
    outputs: Iterable[tuple[tuple[int, int], np.ndarray]],
    grid: WindowGrid,
    rows: slice,
    cols: slice,
    feature_dim: int,
) -> np.ndarray:
    """Average window features over a region of the patch grid with the grid's blend weights.

    The sums run in the order of ``outputs``. Callers pass the windows in
    row-major origin order, so that a chunk gets the values of a whole-raster
    run bit for bit.

    Parameters
    ----------
    outputs : iterable of ((int, int), ndarray)
        Window origin (y0, x0) in pixels and its features of shape
        (window_patch_y, window_patch_x, feature_dim), as from
        :func:`iter_window_features`. Windows that miss the region add nothing.
    grid : WindowGrid
        The grid the windows belong to.
    rows, cols : slice
        Region of the patch grid, in patches, with explicit start and stop.
    feature_dim : int
        Values per patch feature.

    Returns
    -------
    ndarray of shape (rows, cols, feature_dim), float32
        Blend-weighted mean over the given windows, or zeros for a patch that
        none of them covers.
    """
    weights = grid.blend_weights()
    window_rows, window_cols = grid.window_patches
    sums = np.zeros((rows.stop - rows.start, cols.stop - cols.start, feature_dim), dtype=np.float32)
    weight_sums = np.zeros(sums.shape[:2], dtype=np.float32)

    for (y0, x0), window_features in outputs:
        # Overlap of this window's patches with the region, in region and window coordinates.
        top, left = y0 // grid.patch_size, x0 // grid.patch_size
        r0, r1 = max(top, rows.start), min(top + window_rows, rows.stop)
        c0, c1 = max(left, cols.start), min(left + window_cols, cols.stop)
        if r1 <= r0 or c1 <= c0:
            continue
        local_w = weights[r0 - top:r1 - top, c0 - left:c1 - left]
        target = (slice(r0 - rows.start, r1 - rows.start), slice(c0 - cols.start, c1 - cols.start))
        sums[target] += local_w[..., None] * window_features[r0 - top:r1 - top, c0 - left:c1 - left]
        weight_sums[target] += local_w

    # Every patch lies in at least one window and blend weights are > 0, so
    # a zero weight means that only skipped windows cover the patch.
    np.divide(sums, weight_sums[..., None], out=sums, where=weight_sums[..., None] > 0)
    return sums


def patch_validity(valid: np.ndarray, patch_size: int) -> np.ndarray:
    """Mark the patches in which at least half of the pixels are valid.

    Parameters
    ----------
    valid : ndarray of shape (y, x), bool
        True where a pixel of the (resampled) image contains data.
    patch_size : int
        Patch side in pixels.

    Returns
    -------
    ndarray of shape (ceil(y / patch_size), ceil(x / patch_size)), bool
        True where at least half of the patch's pixels inside the raster are
        valid. Pixels of the last row and column of patches that lie past
        the raster edge do not count.
    """
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 2:
        raise InvalidInputError(f"invalid mask of shape {valid.shape}: expected (y, x)")
    height, width = valid.shape
    p = int(patch_size)
    rows, cols = -(-height // p), -(-width // p)

    padded = np.zeros((rows * p, cols * p), dtype=bool)
    padded[:height, :width] = valid
    valid_count = padded.reshape(rows, p, cols, p).sum(axis=(1, 3), dtype=np.int64)

    rows_inside = np.minimum(p, height - np.arange(rows) * p)
    cols_inside = np.minimum(p, width - np.arange(cols) * p)
    inside_count = np.outer(rows_inside, cols_inside)
    return 2 * valid_count >= inside_count
