"""Turn cell-grid labels or scores into labels on the input's pixel grid.

A *cell* is the unit on which clustering produced labels: a patch of the
backbone (16 x 16 or 14 x 14 pixels of the resampled image) or a finer guide
cell of the V2 guided blend. Cell ``i`` covers resampled pixels
``[i * cell_size, (i + 1) * cell_size)``. The resampled image has
``round(H * scale)`` rows, so input row ``y`` (centre ``y + 0.5``) lies at
resampled coordinate ``(y + 0.5) * H' / H``.

Every function here takes the global position of the cells it receives and of
the pixels it must produce, so a chunk of the raster gets exactly the values
that the whole raster would.
"""

from __future__ import annotations

from typing import Required, TypedDict

import numpy as np

__all__ = ["NODATA_LABEL", "cell_span", "fill_empty_cells", "upsample_labels", "upsample_scores"]

NODATA_LABEL = 255
"""Label value of nodata pixels in every label raster."""

_ROW_BLOCK = 256


def fill_empty_cells(labels: np.ndarray, scores: np.ndarray, patch_labels: np.ndarray,
                     factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Give the cells that V2 left without a score the K-means label of their patch.

    V2 scores a cell only where its patch is valid and its guide pixels hold
    data, so a valid patch at a nodata edge can have empty cells. They take
    the patch's K-means label and its one-hot score, so that nearest and
    bilinear upsampling agree there. Without the score, bilinear upsampling
    would label their pixels with cluster 0, the argmax of zeros.

    Parameters
    ----------
    labels : ndarray of int64, shape (cell_y, cell_x)
        V2 cell labels, -1 on empty cells.
    scores : ndarray of float32, shape (K, cell_y, cell_x)
        V2 responsibilities, 0 on empty cells.
    patch_labels : ndarray of int, shape (patch_y, patch_x)
        K-means labels of the patches that the cells subdivide, -1 on
        invalid patches.
    factor : int
        Cells per patch side.

    Returns
    -------
    labels : ndarray of int64, shape (cell_y, cell_x)
        Filled labels; -1 only where the patch is invalid too.
    scores : ndarray of float32, shape (K, cell_y, cell_x)
        Filled scores, a copy when any cell was filled.
    """
    empty = labels < 0
    if not empty.any():
        return labels, scores
    from_patches = np.repeat(np.repeat(patch_labels, factor, axis=0), factor, axis=1)
    labels = labels.copy()
    labels[empty] = from_patches[: labels.shape[0], : labels.shape[1]][empty]

    scores = scores.copy()
    rows, cols = np.nonzero(empty & (labels >= 0))
    scores[labels[rows, cols], rows, cols] = 1.0
    return labels, scores


class CellPlacement(TypedDict, total=False):
    """Keyword arguments that place cells for :func:`upsample_labels` and :func:`upsample_scores`."""

    cell_size: Required[int]
    input_shape: Required[tuple[int, int]]
    resampled_shape: Required[tuple[int, int]]
    rows: slice | None
    cols: slice | None
    cell_origin: tuple[int, int]
    grid_shape: tuple[int, int] | None


def _cell_coordinates(pixels: slice, *, n_pixels: int, n_resampled: int, cell_size: int) -> np.ndarray:
    """Return the cell-grid coordinate (float64, cell units) of each pixel centre."""
    centres = np.arange(pixels.start, pixels.stop, dtype=np.float64) + 0.5
    return centres * (n_resampled / n_pixels) / cell_size


def cell_span(
    pixels: slice, *, n_pixels: int, n_resampled: int, cell_size: int, n_cells: int
) -> slice:
    """Return the cells that upsampling a range of input pixels reads.

    Parameters
    ----------
    pixels : slice
        Input pixel rows (or columns), ``start`` and ``stop`` set.
    n_pixels, n_resampled : int
        Size of that axis in the input and in the resampled image, in pixels.
    cell_size : int
        Resampled pixels per cell.
    n_cells : int
        Cells along that axis in the whole grid.

    Returns
    -------
    slice
        Cell indices, one cell of margin on each side for bilinear weights,
        clipped to the grid.
    """
    coords = _cell_coordinates(pixels, n_pixels=n_pixels, n_resampled=n_resampled, cell_size=cell_size)
    first = max(int(np.floor(coords.min() - 0.5)), 0)
    last = min(int(np.floor(coords.max() - 0.5)) + 2, n_cells)
    return slice(first, max(last, first + 1))


def _nearest_index(coords: np.ndarray, n_cells: int) -> np.ndarray:
    return np.clip(np.floor(coords).astype(np.int64), 0, n_cells - 1)


def upsample_labels(
    cell_labels: np.ndarray,
    *,
    cell_size: int,
    input_shape: tuple[int, int],
    resampled_shape: tuple[int, int],
    rows: slice | None = None,
    cols: slice | None = None,
    cell_origin: tuple[int, int] = (0, 0),
    grid_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Upsample hard cell labels to input pixels by nearest neighbour.

    Parameters
    ----------
    cell_labels : ndarray of shape (cell_y, cell_x), int
        Labels of a block of cells whose first cell is ``cell_origin``.
    cell_size : int
        Resampled pixels per cell.
    input_shape, resampled_shape : tuple of int
        (height, width) of the input raster and of the resampled image, in pixels.
    rows, cols : slice, optional
        Input pixels to produce; the whole raster by default.
    cell_origin : tuple of int, default=(0, 0)
        Global (row, col) index of ``cell_labels[0, 0]``.
    grid_shape : tuple of int, optional
        Cells in the whole grid; defaults to ``cell_origin + cell_labels.shape``.

    Returns
    -------
    ndarray of shape (len(rows), len(cols)), same dtype as ``cell_labels``
    """
    rows = rows or slice(0, input_shape[0])
    cols = cols or slice(0, input_shape[1])
    grid_shape = grid_shape or (cell_origin[0] + cell_labels.shape[0], cell_origin[1] + cell_labels.shape[1])

    row_coords = _cell_coordinates(rows, n_pixels=input_shape[0], n_resampled=resampled_shape[0], cell_size=cell_size)
    col_coords = _cell_coordinates(cols, n_pixels=input_shape[1], n_resampled=resampled_shape[1], cell_size=cell_size)
    row_index = _nearest_index(row_coords, grid_shape[0]) - cell_origin[0]
    col_index = _nearest_index(col_coords, grid_shape[1]) - cell_origin[1]
    return cell_labels[np.ix_(row_index, col_index)]


def _linear_taps(coords: np.ndarray, n_cells: int, origin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the two neighbouring cell indices (local) and the weight of the second."""
    centred = coords - 0.5
    lower = np.floor(centred)
    weight = (centred - lower).astype(np.float32)
    first = np.clip(lower.astype(np.int64), 0, n_cells - 1)
    second = np.clip(lower.astype(np.int64) + 1, 0, n_cells - 1)
    return first - origin, second - origin, weight


def upsample_scores(
    scores: np.ndarray,
    *,
    cell_size: int,
    input_shape: tuple[int, int],
    resampled_shape: tuple[int, int],
    rows: slice | None = None,
    cols: slice | None = None,
    cell_origin: tuple[int, int] = (0, 0),
    grid_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Interpolate per-cluster scores bilinearly to input pixels and take the argmax.

    Parameters
    ----------
    scores : ndarray of shape (cluster, cell_y, cell_x), float32
        Scores of a block of cells (larger means more likely), whose first
        cell is ``cell_origin``. The block must include the cells that
        :func:`cell_span` returns for ``rows`` and ``cols``.
    cell_size, input_shape, resampled_shape, rows, cols, cell_origin, grid_shape
        As in :func:`upsample_labels`.

    Returns
    -------
    ndarray of shape (len(rows), len(cols)), int64
        Index of the cluster with the largest interpolated score.

    Notes
    -----
    Cell centres sit at ``(i + 0.5) * cell_size`` resampled pixels; pixels
    beyond the outermost centres take the edge cell's value. Rows are
    processed in blocks so memory stays near ``cluster * 256 * len(cols)``
    float32 values.
    """
    rows = rows or slice(0, input_shape[0])
    cols = cols or slice(0, input_shape[1])
    grid_shape = grid_shape or (cell_origin[0] + scores.shape[1], cell_origin[1] + scores.shape[2])

    row_coords = _cell_coordinates(rows, n_pixels=input_shape[0], n_resampled=resampled_shape[0], cell_size=cell_size)
    col_coords = _cell_coordinates(cols, n_pixels=input_shape[1], n_resampled=resampled_shape[1], cell_size=cell_size)
    row_a, row_b, row_w = _linear_taps(row_coords, grid_shape[0], cell_origin[0])
    col_a, col_b, col_w = _linear_taps(col_coords, grid_shape[1], cell_origin[1])

    scores = np.asarray(scores, dtype=np.float32)
    columns_first = scores[:, :, col_a] * (1.0 - col_w) + scores[:, :, col_b] * col_w

    out = np.empty((row_coords.size, col_coords.size), dtype=np.int64)
    for start in range(0, row_coords.size, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, row_coords.size)
        weight = row_w[start:stop, None]
        block = columns_first[:, row_a[start:stop], :] * (1.0 - weight) + columns_first[:, row_b[start:stop], :] * weight
        out[start:stop] = np.argmax(block, axis=0)
    return out
