"""Per-chunk computations of the Dask engine, as pure NumPy and torch functions.

Nothing here reads files, writes stores or touches Dask: :mod:`tree_seg.engine.tasks`
reads a chunk, calls these functions and writes the result. Each function
takes the global position of its chunk, so a chunk computes exactly what the
whole-raster pipeline in :mod:`tree_seg.core.segmentation` computes for the
same patches, cells and pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tree_seg.clustering.blend import GuideCells
from tree_seg.clustering.head_refine import em_chunk, labels_from_responsibilities
from tree_seg.clustering.kmeans import assign, l2_normalize
from tree_seg.clustering.sampling import sample_patches
from tree_seg.config import HeadRefineConfig
from tree_seg.core.labels import NODATA_LABEL, CellPlacement, fill_empty_cells, upsample_labels, upsample_scores
from tree_seg.engine.layout import HaloSlice
from tree_seg.exceptions import InvalidInputError
from tree_seg.features.extract import reflect_index
from tree_seg.features.grid import WindowGrid

__all__ = [
    "BlockReader",
    "CellBlock",
    "guide_cells_block",
    "kmeans_cells",
    "kmeans_counts",
    "normalise_features",
    "one_hot_cells",
    "pad_halo",
    "patches_for_cells",
    "pixel_labels",
    "sample_block",
    "v2_cells",
    "window_read_bounds",
]


def window_read_bounds(grid: WindowGrid, origins: list[tuple[int, int]],
                       pixels: tuple[slice, slice] | None = None) -> tuple[slice, slice]:
    """Return the resampled pixels that reading some windows (and a region) takes.

    :func:`~tree_seg.features.extract.read_window` reflects indices past the
    raster edge back inside. The returned box contains every read of the
    given windows, so one read of it can serve them all (see
    :class:`BlockReader`).

    Parameters
    ----------
    grid : WindowGrid
        Window grid of the resampled image.
    origins : list of (int, int)
        Window origins (y0, x0) in pixels.
    pixels : tuple of slice, optional
        A region (rows, cols) of resampled pixels inside the raster that the
        box must contain as well.

    Returns
    -------
    rows, cols : slice
        Bounding box in pixels of the resampled image, inside the raster.

    Raises
    ------
    InvalidInputError
        If there are neither origins nor a region.
    """
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    if origins:
        height, width = grid.window_shape
        ys = np.unique([y for y, _ in origins])
        xs = np.unique([x for _, x in origins])
        row_parts.append(reflect_index((ys[:, None] + np.arange(height)[None, :]).ravel(), grid.height))
        col_parts.append(reflect_index((xs[:, None] + np.arange(width)[None, :]).ravel(), grid.width))
    if pixels is not None:
        row_parts.append(np.array([pixels[0].start, pixels[0].stop - 1]))
        col_parts.append(np.array([pixels[1].start, pixels[1].stop - 1]))
    if not row_parts:
        raise InvalidInputError("no windows and no region to read: pass at least one of them")
    rows, cols = np.concatenate(row_parts), np.concatenate(col_parts)
    return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)


@dataclass(frozen=True)
class BlockReader:
    """A :data:`~tree_seg.features.extract.Reader` that serves windows from one block read in advance.

    Attributes
    ----------
    image : ndarray of shape (band, y, x), float32
        Pixels of the resampled image inside the box ``rows`` x ``cols``.
    rows, cols : slice
        Global position of ``image`` in the resampled image, in pixels.
    """

    image: np.ndarray
    rows: slice
    cols: slice

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Return resampled pixels ``[:, y0:y1, x0:x1]``, which must lie inside the block."""
        if y0 < self.rows.start or y1 > self.rows.stop or x0 < self.cols.start or x1 > self.cols.stop:
            raise InvalidInputError(
                f"read of rows {y0}:{y1}, cols {x0}:{x1} falls outside the block read for this chunk "
                f"(rows {self.rows.start}:{self.rows.stop}, cols {self.cols.start}:{self.cols.stop})"
            )
        return self.image[:, y0 - self.rows.start:y1 - self.rows.start, x0 - self.cols.start:x1 - self.cols.start]


def normalise_features(features: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """L2-normalise patch features along the last axis and cast them to the store's dtype.

    Parameters
    ----------
    features : ndarray of shape (patch_y, patch_x, feature), float32
        Blended backbone features.
    dtype : numpy dtype or str
        ``float16`` or ``float32``.

    Returns
    -------
    ndarray of shape (patch_y, patch_x, feature), ``dtype``
        Unit-length vectors; zero vectors stay zero. The normalisation runs in
        float32, as in the in-memory pipeline, before the cast.
    """
    height, width, dim = features.shape
    unit = l2_normalize(features.reshape(-1, dim)).reshape(height, width, dim)
    return unit.astype(dtype, copy=False)


def pad_halo(array: np.ndarray, rows: HaloSlice, cols: HaloSlice, *, fill: float | bool, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Pad a block read with a halo by the part of the halo that lies outside the grid.

    Parameters
    ----------
    array : ndarray
        The block as read, ``rows.read`` x ``cols.read`` along ``axes``.
    rows, cols : HaloSlice
        The halo on each axis, from :func:`~tree_seg.engine.layout.halo_slices`.
    fill : float or bool
        Value of the padding: ``False`` for valid masks, ``0`` for features
        and guide cells, which the invalid mask keeps out of every sum.
    axes : tuple of int, default=(0, 1)
        Positions of the row and column axes in ``array``.

    Returns
    -------
    ndarray
        The padded block; ``array`` itself when no padding is needed.
    """
    if not (rows.pad_before or rows.pad_after or cols.pad_before or cols.pad_after):
        return array
    widths = [(0, 0)] * array.ndim
    widths[axes[0]] = (rows.pad_before, rows.pad_after)
    widths[axes[1]] = (cols.pad_before, cols.pad_after)
    return np.pad(array, widths, constant_values=fill)


def sample_block(
    valid: np.ndarray, *, row0: int, col0: int, grid_width: int, seed: int, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose the sampled patches of one chunk by their global coordinates.

    Parameters
    ----------
    valid : ndarray of shape (patch_y, patch_x), bool
        Valid patches of the chunk.
    row0, col0 : int
        Global patch coordinates of ``valid[0, 0]``.
    grid_width : int
        Columns of the whole patch grid, for the row-major flat index.
    seed : int
        Sampling seed (``ClusterConfig.seed``).
    fraction : float
        Selection probability from :func:`~tree_seg.clustering.sampling.sample_fraction`.

    Returns
    -------
    flat_index : ndarray of shape (n,), int64
        Global row-major index ``row * grid_width + col`` of each chosen patch,
        ascending within the chunk.
    rows, cols : ndarray of shape (n,), int64
        Chunk-local positions of the chosen patches.
    """
    chosen = sample_patches(valid, row0=row0, col0=col0, seed=seed, fraction=fraction)
    rows, cols = np.nonzero(chosen)
    flat_index = (rows.astype(np.int64) + row0) * grid_width + (cols.astype(np.int64) + col0)
    return flat_index, rows.astype(np.int64), cols.astype(np.int64)


def kmeans_cells(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label every patch of a block with its nearest K-means centroid and score each cluster.

    Invalid patches are labelled too, as in the in-memory pipeline: their
    labels reach only valid pixels that lie in a mostly-invalid patch, and
    nodata pixels become 255 later.

    Parameters
    ----------
    features : ndarray of shape (patch_y, patch_x, feature)
        L2-normalised features, any float dtype (computed in float32).
    centroids : ndarray of shape (cluster, feature), float32
        K-means centroids.

    Returns
    -------
    labels : ndarray of shape (patch_y, patch_x), int64
        Nearest centroid; ties go to the lowest index.
    scores : ndarray of shape (cluster, patch_y, patch_x), float32
        ``2 x.c_k - |c_k|^2``, the negative squared distance up to a term
        that all clusters share.
    """
    height, width, dim = features.shape
    flat = np.asarray(features, dtype=np.float32).reshape(-1, dim)
    labels, _ = assign(flat, centroids)
    centroid_sq_norms = np.einsum("kd,kd->k", centroids, centroids)
    scores = 2.0 * (centroids @ flat.T) - centroid_sq_norms[:, None]
    return labels.reshape(height, width), scores.astype(np.float32).reshape(centroids.shape[0], height, width)


def kmeans_counts(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Count the patches of a block, valid or not, nearest to each centroid.

    These counts seed the V2 priors; the in-memory pipeline counts the
    K-means labels of every patch, so invalid patches count here too.

    Returns
    -------
    ndarray of shape (cluster,), float64
    """
    dim = features.shape[-1]
    labels, _ = assign(np.asarray(features, dtype=np.float32).reshape(-1, dim), centroids)
    return np.bincount(labels, minlength=centroids.shape[0]).astype(np.float64)


def patches_for_cells(cells: slice, factor: int) -> slice:
    """Return the patches that contain a range of cells, ``factor`` cells per patch side."""
    return slice(cells.start // factor, math.ceil(cells.stop / factor))


@dataclass(frozen=True)
class CellBlock:
    """Cell labels and scores of a block of the cell grid, ready for upsampling.

    Attributes
    ----------
    labels : ndarray of shape (cell_y, cell_x), int64
        Cluster per cell.
    scores : ndarray of shape (cluster, cell_y, cell_x), float32
        Scores per cell; larger means more likely.
    origin : tuple of int
        Global (row, col) cell index of ``labels[0, 0]``.
    cell_size : int
        Pixels of the resampled image per cell side.
    used : ndarray of shape (cluster,), bool
        Clusters that win at least one valid cell of the block (V2 only;
        all False for K-means).
    finite : bool
        Whether every score is finite.
    """

    labels: np.ndarray
    scores: np.ndarray
    origin: tuple[int, int]
    cell_size: int
    used: np.ndarray
    finite: bool


def v2_cells(
    features: np.ndarray,
    valid: np.ndarray,
    kmeans_labels: np.ndarray,
    *,
    guide: GuideCells | None,
    centroids: np.ndarray,
    log_priors: np.ndarray,
    tau: float,
    config: HeadRefineConfig,
    depth: int,
    patch_size: int,
    patch_origin: tuple[int, int],
) -> CellBlock:
    """Run the final V2 E-step with the blend on a block and turn it into cell labels.

    Parameters
    ----------
    features : ndarray of shape (patch_y + 2 * depth, patch_x + 2 * depth, feature)
        L2-normalised features of the block and its halo. Halo patches past
        the raster edge are zeros.
    valid : ndarray of shape (patch_y + 2 * depth, patch_x + 2 * depth), bool
        Valid patches; False on halo patches past the raster edge.
    kmeans_labels : ndarray of shape (patch_y, patch_x), int64
        K-means labels of the block's patches (no halo), which fill the
        cells V2 leaves empty, as the in-memory pipeline does.
    guide : GuideCells or None
        Guide cells of the block and halo, for the guided blend.
    centroids, log_priors, tau : ndarray, ndarray, float
        Final V2 centroids (cluster, feature), log priors (cluster,) and temperature.
    config : HeadRefineConfig
        Blend settings.
    depth : int
        Halo in patches, at least :func:`~tree_seg.clustering.blend.blend_halo`.
    patch_size : int
        Patch side in resampled pixels.
    patch_origin : tuple of int
        Global patch index of the block's first patch (without halo).

    Returns
    -------
    CellBlock
    """
    responsibilities, _ = em_chunk(features, valid, centroids, log_priors, tau, config, halo=depth,
                                   patch_size=patch_size, guide=guide, statistics=False, device="cpu")
    assert responsibilities is not None  # em_chunk returns them unless responsibilities=False.
    factor = responsibilities.shape[1] // kmeans_labels.shape[0]
    labels = labels_from_responsibilities(responsibilities)
    used = np.zeros(centroids.shape[0], dtype=bool)
    used[np.unique(labels[labels >= 0])] = True

    labels, scores = fill_empty_cells(labels, responsibilities.astype(np.float32, copy=False), kmeans_labels, factor)
    return CellBlock(
        labels=labels,
        scores=scores,
        origin=(patch_origin[0] * factor, patch_origin[1] * factor),
        cell_size=patch_size // factor,
        used=used,
        finite=bool(np.isfinite(responsibilities).all()),
    )


def one_hot_cells(kmeans_labels: np.ndarray, k: int, *, patch_origin: tuple[int, int], patch_size: int) -> CellBlock:
    """Return the K-means labels as a V2 fallback block: one-hot scores on the patch grid."""
    scores = np.zeros((k, *kmeans_labels.shape), dtype=np.float32)
    rows, cols = np.nonzero(kmeans_labels >= 0)
    scores[kmeans_labels[rows, cols], rows, cols] = 1.0
    return CellBlock(labels=kmeans_labels, scores=scores, origin=patch_origin, cell_size=patch_size,
                     used=np.zeros(k, dtype=bool), finite=True)


def pixel_labels(
    cells: CellBlock,
    pixel_valid: np.ndarray,
    *,
    upsampling: str,
    input_shape: tuple[int, int],
    resampled_shape: tuple[int, int],
    rows: slice,
    cols: slice,
    grid_shape: tuple[int, int],
) -> np.ndarray:
    """Upsample a block of cell labels or scores to input pixels and mark nodata.

    Parameters
    ----------
    cells : CellBlock
        Cells covering :func:`~tree_seg.core.labels.cell_span` of ``rows`` and ``cols``.
    pixel_valid : ndarray of shape (len(rows), len(cols)), bool
        Valid mask of the input pixels.
    upsampling : {"nearest", "bilinear"}
        Nearest on hard labels, or bilinear on scores then argmax.
    input_shape, resampled_shape : tuple of int
        (height, width) of the input raster and the resampled image, in pixels.
    rows, cols : slice
        Input pixels to produce, global.
    grid_shape : tuple of int
        Cells in the whole cell grid.

    Returns
    -------
    ndarray of shape (len(rows), len(cols)), uint8
        Labels 0..K-1, 255 on nodata pixels.
    """
    place: CellPlacement = {"cell_size": cells.cell_size, "input_shape": input_shape,
                            "resampled_shape": resampled_shape, "rows": rows, "cols": cols,
                            "cell_origin": cells.origin, "grid_shape": grid_shape}
    if upsampling == "nearest":
        pixels = upsample_labels(cells.labels, **place)
    else:
        pixels = upsample_scores(cells.scores, **place)
    labels = pixels.astype(np.uint8)
    labels[~pixel_valid] = NODATA_LABEL
    return labels


def guide_cells_block(cells: np.ndarray, valid: np.ndarray) -> GuideCells:
    """Wrap stored guide cells of a block (with halo) for :func:`~tree_seg.clustering.head_refine.em_chunk`."""
    return GuideCells(cells=torch.from_numpy(np.ascontiguousarray(cells, dtype=np.float32)),
                      valid=torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)))
