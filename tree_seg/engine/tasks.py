"""Per-chunk tasks of the engine: read a chunk, call a kernel, write or return the result.

Every task is a module-level function ``task(*shared, block)`` that Dask
ships to workers by reference. The shared arguments are small frozen
dataclasses of store handles, settings and the raster handle, and these
handles reopen their files inside the worker. The numerics live in
:mod:`tree_seg.engine.kernels`; the graph building in :mod:`tree_seg.engine.passes`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tree_seg.clustering.blend import blend_halo, cells_per_patch, prepare_guide
from tree_seg.clustering.head_refine import EMStats, em_chunk
from tree_seg.config import BackboneConfig, HeadRefineConfig, LabelConfig
from tree_seg.core.labels import NODATA_LABEL, cell_span
from tree_seg.core.snapping import slic_snap
from tree_seg.engine import kernels
from tree_seg.engine.feature_store import WINDOW_PENDING, WINDOW_STORED, FeatureStore
from tree_seg.engine.label_store import LabelStore
from tree_seg.engine.layout import Block, SeamWork, WindowOwnership, halo_slices
from tree_seg.engine.worker import get_backbone
from tree_seg.exceptions import InvalidInputError
from tree_seg.features.extract import blend_windows, iter_window_features, patch_validity, windows_with_data
from tree_seg.features.grid import WindowGrid
from tree_seg.features.resample import input_span, resample_image, resample_mask
from tree_seg.io.reader import RasterSource

__all__ = [
    "FeatureTaskContext",
    "LabelModel",
    "LabelSummary",
    "LabelTaskContext",
    "RasterGeometry",
    "count_chunk",
    "em_step_chunk",
    "feature_chunk",
    "guide_chunk",
    "label_chunk",
    "read_resampled",
    "sample_chunk",
    "seam_windows",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RasterGeometry:
    """Sizes that place every chunk: the input, the resampled image and the window grid.

    Attributes
    ----------
    input_shape : tuple of int
        (height, width) of the input raster in pixels.
    resampled_shape : tuple of int
        (height, width) of the resampled image in pixels.
    scale : float
        Resampling factor.
    patch_size : int
        Patch side in resampled pixels.
    window, overlap : int
        Window side and overlap in resampled pixels.
    """

    input_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    scale: float
    patch_size: int
    window: int
    overlap: int

    def window_grid(self) -> WindowGrid:
        """Return the window grid of the resampled image."""
        return WindowGrid(self.resampled_shape[0], self.resampled_shape[1], patch_size=self.patch_size,
                          window=self.window, overlap=self.overlap)

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(patch_y, patch_x) of the patch grid."""
        p = self.patch_size
        return -(-self.resampled_shape[0] // p), -(-self.resampled_shape[1] // p)

    def patch_pixels(self, block: Block) -> tuple[slice, slice]:
        """Return the resampled pixels (rows, cols) that a block of patches covers inside the raster."""
        p = self.patch_size
        return (slice(block.rows.start * p, min(block.rows.stop * p, self.resampled_shape[0])),
                slice(block.cols.start * p, min(block.cols.stop * p, self.resampled_shape[1])))


def read_resampled(source: RasterSource, geometry: RasterGeometry, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Read a region of the resampled image and its valid mask.

    With a resampled size equal to the input size the region is read as is.
    Otherwise the input pixels that :func:`~tree_seg.features.resample.input_span`
    names are read and resampled with global offsets, which gives the crop
    of the whole resampled raster.

    Parameters
    ----------
    source : RasterSource
        The input raster.
    geometry : RasterGeometry
        Raster and resampled sizes and the scale.
    rows, cols : slice
        Region in resampled pixels, inside the resampled image.

    Returns
    -------
    image : ndarray of shape (band, rows, cols), float32 in [0, 1]
    valid : ndarray of shape (rows, cols), bool
    """
    if geometry.resampled_shape == geometry.input_shape:
        return source.read_window(rows.start, rows.stop, cols.start, cols.stop)

    height, width = geometry.input_shape
    span_y = input_span(rows, height, geometry.scale)
    span_x = input_span(cols, width, geometry.scale)
    image, valid = source.read_window(span_y.start, span_y.stop, span_x.start, span_x.stop)
    place = {"out_rows": rows, "out_cols": cols, "in_row0": span_y.start, "in_col0": span_x.start,
             "in_shape": geometry.input_shape}
    return (resample_image(image, geometry.scale, **place),
            resample_mask(valid, geometry.scale, **place))


@dataclass(frozen=True)
class FeatureTaskContext:
    """Shared arguments of the feature pass.

    Attributes
    ----------
    source : RasterSource
        The input raster (a path handle; each read reopens the file).
    geometry : RasterGeometry
        Raster sizes and the window grid.
    store : FeatureStore
        Where the features go.
    backbone : BackboneConfig
        Key of the per-process backbone cache.
    batch_size : int
        Windows per forward pass.
    feature_dtype : str
        dtype of the stored features.
    """

    source: RasterSource
    geometry: RasterGeometry
    store: FeatureStore
    backbone: BackboneConfig
    batch_size: int
    feature_dtype: str

    @property
    def ownership(self) -> WindowOwnership:
        """Which chunk computes each window."""
        return WindowOwnership(self.geometry.window_grid(), self.store.chunk_side)


def seam_windows(context: FeatureTaskContext, work: SeamWork) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Compute and store some seam windows of one chunk (the first step of the feature pass).

    A seam window's patches reach into other chunks, which blend its stored
    features in :func:`feature_chunk` instead of computing it again. The
    caller records the returned origins with
    :meth:`~tree_seg.engine.feature_store.FeatureStore.mark_seams`.

    Returns
    -------
    written : list of (int, int)
        Origins of the windows that went through the backbone and were stored.
    empty : list of (int, int)
        Origins of the windows without valid pixels.
    """
    ownership = context.ownership
    grid = ownership.grid
    seams = list(work.origins)
    read_rows, read_cols = kernels.window_read_bounds(grid, seams)
    image, valid_pixels = read_resampled(context.source, context.geometry, read_rows, read_cols)
    with_data = windows_with_data(kernels.BlockReader(valid_pixels[None], read_rows, read_cols), grid, seams)
    empty = sorted(set(seams) - set(with_data))
    computed = iter_window_features(kernels.BlockReader(image, read_rows, read_cols), grid,
                                    get_backbone(context.backbone), with_data, batch_size=context.batch_size)

    written = context.store.write_seams(ownership, computed)
    logger.debug("seam windows of chunk %s, part %d: %d computed, %d without valid pixels",
                 work.block.index, work.index[2], len(written), len(empty))
    return written, empty


def feature_chunk(context: FeatureTaskContext, block: Block) -> int:
    """Extract, normalise and store the features and valid mask of one chunk of patches.

    The chunk computes the windows it owns that stay inside it, and blends
    them with the stored seam windows of its own and of its neighbours, which
    :func:`seam_windows` must have written. Windows are blended in row-major
    order, as in a whole-raster run, so the features equal that run's. The
    windows it computes are served from a single read of their bounding box.
    Returns the number of windows that went through the backbone.

    Raises
    ------
    InvalidInputError
        If a seam window that the chunk needs is not stored yet.
    """
    ownership = context.ownership
    grid = ownership.grid
    geometry = context.geometry
    touching = grid.windows_touching(block.rows, block.cols)
    interior = [origin for origin in touching
                if ownership.owner(origin) == block.index and not ownership.is_seam(origin)]
    seams = set(touching) - set(interior)

    pixel_rows, pixel_cols = geometry.patch_pixels(block)
    read_rows, read_cols = kernels.window_read_bounds(grid, interior, (pixel_rows, pixel_cols))
    image, valid_pixels = read_resampled(context.source, geometry, read_rows, read_cols)
    reader = kernels.BlockReader(image, read_rows, read_cols)
    computed = set(windows_with_data(kernels.BlockReader(valid_pixels[None], read_rows, read_cols), grid, interior))
    states = context.store.window_states() if seams else None
    backbone = get_backbone(context.backbone)
    fresh = iter_window_features(reader, grid, backbone, [o for o in touching if o in computed],
                                 batch_size=context.batch_size)

    def in_order() -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        # Both lists are row-major, so the fresh windows come in turn.
        for origin in touching:
            if origin in computed:
                yield next(fresh)
            elif origin in seams:
                assert states is not None
                state = states[ownership.index(origin)]
                if state == WINDOW_PENDING:
                    raise InvalidInputError(
                        f"seam window at pixel {origin} of chunk {ownership.owner(origin)} is missing for chunk "
                        f"{block.index}: run the seam pass of that chunk first"
                    )
                if state == WINDOW_STORED:
                    yield origin, context.store.read_seam(ownership.index(origin))

    features = blend_windows(in_order(), grid, block.rows, block.cols, backbone.feature_dim)
    chunk_valid = valid_pixels[pixel_rows.start - read_rows.start:pixel_rows.stop - read_rows.start,
                               pixel_cols.start - read_cols.start:pixel_cols.stop - read_cols.start]
    valid = patch_validity(chunk_valid, geometry.patch_size)

    context.store.write_block(block, kernels.normalise_features(features, context.feature_dtype), valid)
    logger.debug("features of chunk %s: %d valid of %d patches, %d windows computed, %d seam windows blended",
                 block.index, int(valid.sum()), valid.size, len(computed), len(seams))
    return len(computed)


@dataclass(frozen=True)
class GuideTaskContext:
    """Shared arguments of the guide pass (guided V2 blend only)."""

    source: RasterSource
    geometry: RasterGeometry
    labels: LabelStore
    head_refine: HeadRefineConfig


def guide_chunk(context: GuideTaskContext, block: Block) -> None:
    """Average the resampled image of one chunk of patches to guide cells and store them."""
    geometry = context.geometry
    rows, cols = geometry.patch_pixels(block)
    image, valid = read_resampled(context.source, geometry, rows, cols)
    guide = prepare_guide(image, valid, grid_shape=block.shape, patch_size=geometry.patch_size,
                          config=context.head_refine)
    factor = cells_per_patch(context.head_refine, geometry.patch_size)
    cell_rows = slice(block.rows.start * factor, block.rows.stop * factor)
    cell_cols = slice(block.cols.start * factor, block.cols.stop * factor)
    context.labels.write_guide(cell_rows, cell_cols, guide.cells.numpy(), guide.valid.numpy())


def sample_chunk(store: FeatureStore, seed: int, fraction: float, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """Return the global flat indices and float32 features of the chunk's sampled patches."""
    valid = store.read_valid(block.rows, block.cols)
    flat_index, rows, cols = kernels.sample_block(valid, row0=block.rows.start, col0=block.cols.start,
                                                  grid_width=store.patch_shape[1], seed=seed, fraction=fraction)
    if flat_index.size == 0:
        return flat_index, np.zeros((0, store.feature_dim), dtype=np.float32)
    features = store.read_features(block.rows, block.cols)
    return flat_index, features[rows, cols]


def count_chunk(store: FeatureStore, centroids: np.ndarray, block: Block) -> np.ndarray:
    """Count the chunk's patches nearest to each K-means centroid (float64, shape (cluster,))."""
    return kernels.kmeans_counts(store.read_features(block.rows, block.cols), centroids)


@dataclass(frozen=True)
class EMTaskContext:
    """Shared arguments of the V2 EM iterations.

    Attributes
    ----------
    store : FeatureStore
        Features and valid mask.
    labels : LabelStore
        Holds the guide cells of the guided blend.
    head_refine : HeadRefineConfig
        Blend and EM settings.
    patch_size : int
        Patch side in resampled pixels.
    tau : float
        Temperature, fixed for the whole run.
    """

    store: FeatureStore
    labels: LabelStore
    head_refine: HeadRefineConfig
    patch_size: int
    tau: float

    @property
    def depth(self) -> int:
        """Halo in patches that one E-step with the blend needs."""
        return blend_halo(self.head_refine, self.patch_size)


def _guide_block(context: EMTaskContext, rows: slice, cols: slice, depth: int) -> kernels.GuideCells | None:
    if context.head_refine.blend != "guided":
        return None
    factor = cells_per_patch(context.head_refine, context.patch_size)
    cells, valid = context.labels.read_guide_with_halo(
        slice(rows.start * factor, rows.stop * factor), slice(cols.start * factor, cols.stop * factor), depth * factor
    )
    return kernels.guide_cells_block(cells, valid)


def em_step_chunk(context: EMTaskContext, centroids: np.ndarray, log_priors: np.ndarray, block: Block) -> EMStats:
    """Run one E-step with the blend on a chunk and its halo; return its M-step statistics."""
    depth = context.depth
    features, valid = context.store.read_with_halo(block.rows, block.cols, depth)
    guide = _guide_block(context, block.rows, block.cols, depth)
    _, stats = em_chunk(features, valid, centroids, log_priors, context.tau, context.head_refine, halo=depth,
                        patch_size=context.patch_size, guide=guide, responsibilities=False, device="cpu")
    assert stats is not None  # em_chunk sums the statistics unless statistics=False.
    return stats


@dataclass(frozen=True)
class LabelModel:
    """Mode and centroids of the label pass.

    Attributes
    ----------
    mode : {"kmeans", "head-refine", "fallback"}
        K-means labels (V1.5); the final V2 E-step and blend; or the
        K-means labels as one-hot V2 scores after V2 degenerated.
    kmeans_centroids : ndarray of shape (cluster, feature), float32
        K-means centroids.
    centroids, log_priors : ndarray or None
        Final V2 centroids and log priors (mode "head-refine").
    """

    mode: Literal["kmeans", "head-refine", "fallback"]
    kmeans_centroids: np.ndarray
    centroids: np.ndarray | None = None
    log_priors: np.ndarray | None = None

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.kmeans_centroids.shape[0])


@dataclass(frozen=True)
class LabelSummary:
    """Report of one label task, besides the labels it writes.

    Attributes
    ----------
    used : ndarray of shape (cluster,), bool
        Clusters that win a valid cell of the chunk (V2 only).
    finite : bool
        Whether every V2 responsibility of the chunk is finite.
    pixels : ndarray of shape (cluster,), int64
        Number of pixels of the chunk written with each label, after any
        SLIC snapping.
    """

    used: np.ndarray
    finite: bool
    pixels: np.ndarray


def combine_summaries(*parts: LabelSummary) -> LabelSummary:
    """Combine label summaries of several chunks (union of clusters in use, all finite)."""
    used = np.logical_or.reduce([part.used for part in parts])
    pixels = np.sum([part.pixels for part in parts], axis=0)
    return LabelSummary(used=used, finite=all(part.finite for part in parts), pixels=pixels)


@dataclass(frozen=True)
class LabelTaskContext:
    """Shared arguments of the label pass.

    Attributes
    ----------
    source : RasterSource
        The input raster (valid mask, and the image for SLIC).
    geometry : RasterGeometry
        Raster sizes.
    em : EMTaskContext
        Feature store, label store, V2 settings and tau.
    labels_config : LabelConfig
        Upsampling and SLIC settings.
    slic_depth : int
        Pixel halo read around each chunk for SLIC.
    """

    source: RasterSource
    geometry: RasterGeometry
    em: EMTaskContext
    labels_config: LabelConfig
    slic_depth: int


def _cells(context: LabelTaskContext, model: LabelModel, rows: slice, cols: slice) -> tuple[kernels.CellBlock, tuple[int, int]]:
    """Compute cell labels and scores that cover input pixels ``rows`` x ``cols``."""
    geometry = context.geometry
    em = context.em
    p = geometry.patch_size
    factor = cells_per_patch(em.head_refine, p) if model.mode == "head-refine" else 1
    grid_shape = (geometry.patch_shape[0] * factor, geometry.patch_shape[1] * factor)
    cell_size = p // factor
    spans = [cell_span(region, n_pixels=geometry.input_shape[axis], n_resampled=geometry.resampled_shape[axis],
                       cell_size=cell_size, n_cells=grid_shape[axis])
             for axis, region in enumerate((rows, cols))]
    patch_rows, patch_cols = (kernels.patches_for_cells(span, factor) for span in spans)

    origin = (patch_rows.start, patch_cols.start)
    if model.mode != "head-refine":
        kmeans_labels, kmeans_scores = kernels.kmeans_cells(em.store.read_features(patch_rows, patch_cols),
                                                            model.kmeans_centroids)
        if model.mode == "fallback":
            return kernels.one_hot_cells(kmeans_labels, model.k, patch_origin=origin, patch_size=p), grid_shape
        cells = kernels.CellBlock(labels=kmeans_labels, scores=kmeans_scores, origin=origin, cell_size=p,
                                  used=np.zeros(model.k, dtype=bool), finite=True)
        return cells, grid_shape

    depth = em.depth
    features_halo, valid_halo = em.store.read_with_halo(patch_rows, patch_cols, depth)
    inner = features_halo[depth:features_halo.shape[0] - depth, depth:features_halo.shape[1] - depth]
    kmeans_labels, _ = kernels.kmeans_cells(inner, model.kmeans_centroids)
    if model.centroids is None or model.log_priors is None:
        raise InvalidInputError("LabelModel(mode='head-refine') is missing centroids or log_priors: "
                                "pass the final V2 centroids and log priors")
    guide = _guide_block(em, patch_rows, patch_cols, depth)
    cells = kernels.v2_cells(features_halo, valid_halo, kmeans_labels, guide=guide, centroids=model.centroids,
                             log_priors=model.log_priors, tau=em.tau, config=em.head_refine, depth=depth,
                             patch_size=p, patch_origin=origin)
    return cells, grid_shape


def label_chunk(context: LabelTaskContext, model: LabelModel, block: Block) -> LabelSummary:
    """Make the pixel labels of one chunk of input pixels and write them to the label store.

    With SLIC the chunk is labelled and snapped with a pixel halo of
    ``slic_depth``, then cropped.
    """
    geometry = context.geometry
    snap = context.labels_config.refine == "slic"
    depth = context.slic_depth if snap else 0
    rows = halo_slices(block.rows, depth, geometry.input_shape[0]).read
    cols = halo_slices(block.cols, depth, geometry.input_shape[1]).read

    cells, grid_shape = _cells(context, model, rows, cols)
    image, valid = context.source.read_window(rows.start, rows.stop, cols.start, cols.stop)
    labels = kernels.pixel_labels(cells, valid, upsampling=context.labels_config.upsampling,
                                  input_shape=geometry.input_shape, resampled_shape=geometry.resampled_shape,
                                  rows=rows, cols=cols, grid_shape=grid_shape)
    if snap:
        labels = slic_snap(image, labels, valid, n_labels=model.k, segment_size=context.labels_config.slic_size,
                           compactness=context.labels_config.slic_compactness)

    inner = (slice(block.rows.start - rows.start, block.rows.stop - rows.start),
             slice(block.cols.start - cols.start, block.cols.stop - cols.start))
    written = np.ascontiguousarray(labels[inner])
    context.em.labels.write_labels(block, written)
    pixels = np.bincount(written[written != NODATA_LABEL].ravel(), minlength=model.k)[:model.k]
    return LabelSummary(used=cells.used, finite=cells.finite, pixels=pixels.astype(np.int64))
