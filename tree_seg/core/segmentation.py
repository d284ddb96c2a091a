"""Compose the stages of one segmentation run on a raster held in memory.

This is the one place where the stages meet:

1. read the raster and its valid mask (:mod:`tree_seg.io.reader`);
2. resample it by ``window.scale`` (:mod:`tree_seg.features.resample`);
3. extract patch features on the window grid (:mod:`tree_seg.features.extract`);
4. choose K and fit K-means on L2-normalised patch vectors (V1.5);
5. optionally refine with the V2 head (:mod:`tree_seg.clustering.head_refine`);
6. upsample cell labels or scores to the input's pixels, snap to SLIC
   superpixels if asked, and mark nodata pixels 255.

:func:`segment` returns an :class:`xarray.Dataset`; :func:`segment_to_files`
also writes the label GeoTIFF, the metadata JSON and the pictures.
The Dask engine (:mod:`tree_seg.engine`) runs the same stage functions per chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np
import xarray as xr
from rioxarray.rioxarray import affine_to_coords

from tree_seg.clustering.head_refine import HeadRefineResult, refine
from tree_seg.clustering.kmeans import assign, l2_normalize
from tree_seg.clustering.model import ClusterModel, fit_cluster_model
from tree_seg.clustering.sampling import sample_fraction, sample_patches
from tree_seg.config import SegmentationConfig
from tree_seg.core.export import method_label, write_run_outputs
from tree_seg.core.labels import NODATA_LABEL, CellPlacement, fill_empty_cells, upsample_labels, upsample_scores
from tree_seg.core.profiling import RunProfile
from tree_seg.core.snapping import slic_snap
from tree_seg.core.versions import package_versions
from tree_seg.exceptions import ConfigurationError, InvalidInputError
from tree_seg.features.extract import extract_patch_features, patch_validity
from tree_seg.features.grid import WindowGrid, patch_transform
from tree_seg.features.scale import resolve_scale
from tree_seg.features.resample import resample_image, resample_mask, resampled_shape
from tree_seg.io.reader import RasterSource, open_raster
from tree_seg.io.writer import to_json
from tree_seg.models import load_backbone
from tree_seg.models.base import Backbone

__all__ = [
    "ClusterModel",
    "FeatureGrid",
    "SegmentationRun",
    "extract_features",
    "fit_clusters",
    "label_pixels",
    "run_segmentation",
    "segment",
    "segment_to_files",
]

logger = logging.getLogger(__name__)


@dataclass
class FeatureGrid:
    """Patch features of one raster, ready for clustering.

    Attributes
    ----------
    features : ndarray of shape (patch_y, patch_x, feature), float32
        L2-normalised patch vectors.
    valid : ndarray of shape (patch_y, patch_x), bool
        Patches with at least half of their pixels valid.
    patch_size : int
        Resampled pixels per patch.
    input_shape, resampled_shape : tuple of int
        (height, width) of the input and of the resampled image, in pixels.
    image : ndarray of shape (band, y, x), float32 in [0, 1]
        The input image (kept for SLIC, the V2 guide and pictures).
    pixel_valid : ndarray of shape (y, x), bool
        Valid mask of the input.
    backbone : dict
        :meth:`Backbone.info` of the backbone that made the features.
    scale : float
        Resampling factor actually used (``"auto"`` resolved).
    """

    features: np.ndarray
    valid: np.ndarray
    patch_size: int
    input_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    image: np.ndarray
    pixel_valid: np.ndarray
    backbone: dict[str, Any]
    scale: float


def extract_features(
    source: RasterSource,
    config: SegmentationConfig,
    *,
    backbone: Backbone | None = None,
    profile: RunProfile | None = None,
) -> FeatureGrid:
    """Read the raster, resample it and extract L2-normalised patch features.

    Parameters
    ----------
    source : RasterSource
        Opened input raster.
    config : SegmentationConfig
        Uses ``backbone``, ``window`` and ``read`` settings.
    backbone : Backbone, optional
        An already loaded backbone (loaded from ``config.backbone`` otherwise).
    profile : RunProfile, optional
        Receives stage times.

    Returns
    -------
    FeatureGrid
    """
    profile = profile or RunProfile()
    with profile.stage("load_backbone"):
        backbone = backbone or load_backbone(config.backbone)
    logger.info("backbone: %s", backbone.info()["name"])

    with profile.stage("read"):
        image, pixel_valid = source.read()
    if not pixel_valid.any():
        raise InvalidInputError(
            f"no valid pixels in {source.path or source.stem}: check --nodata and --bands"
        )

    with profile.stage("features"):
        scale = resolve_scale(
            config.window, crs=source.crs, transform=source.transform, shape=(source.height, source.width)
        )
        shape = resampled_shape((source.height, source.width), scale)
        resampled = resample_image(image, scale) if scale != 1.0 else image
        model_valid = resample_mask(pixel_valid, scale) if scale != 1.0 else pixel_valid
        grid = WindowGrid(
            shape[0],
            shape[1],
            patch_size=backbone.patch_size,
            window=config.window.window,
            overlap=config.window.overlap,
        )
        features = extract_patch_features(
            resampled,
            grid,
            backbone,
            batch_size=config.backbone.batch_size,
            on_batch=profile.record_batch,
            valid=model_valid,
        )
        valid = patch_validity(model_valid, backbone.patch_size)
        flat = l2_normalize(features.reshape(-1, features.shape[-1]))
        # The numpy 2.4 stubs type reshape(shape) as 0-d when the shape has unknown length.
        features = cast(np.ndarray, flat.reshape(features.shape))

    logger.info(
        "features: %d x %d patches (width x height) of %d values, %d valid",
        features.shape[1], features.shape[0], features.shape[2], int(valid.sum()),
    )
    return FeatureGrid(
        features=features,
        valid=valid,
        patch_size=backbone.patch_size,
        input_shape=(source.height, source.width),
        resampled_shape=shape,
        image=image,
        pixel_valid=pixel_valid,
        backbone=backbone.info(),
        scale=scale,
    )


def fit_clusters(grid: FeatureGrid, config: SegmentationConfig, *, profile: RunProfile | None = None) -> ClusterModel:
    """Choose K (fixed or elbow) and fit K-means on a deterministic sample of valid patches."""
    profile = profile or RunProfile()
    cluster = config.cluster
    n_valid = int(grid.valid.sum())

    with profile.stage("clustering"):
        fraction = sample_fraction(n_valid, cluster.max_samples)
        chosen = sample_patches(grid.valid, seed=cluster.seed, fraction=fraction)
        model = fit_cluster_model(grid.features[chosen], n_valid, cluster)
    model.sample = chosen
    return model


def _kmeans_scores(grid: FeatureGrid, model: ClusterModel) -> tuple[np.ndarray, np.ndarray]:
    """Return patch labels (patch_y, patch_x) and scores (cluster, patch_y, patch_x).

    The score of cluster k is ``2 x.c_k - |c_k|^2``, which is the negative
    squared distance up to the term ``|x|^2`` that all clusters share.
    """
    h, w, d = grid.features.shape
    flat = grid.features.reshape(-1, d)
    labels, _ = assign(flat, model.centroids)
    centroid_sq_norms = np.einsum("kd,kd->k", model.centroids, model.centroids)
    scores = 2.0 * (model.centroids @ flat.T) - centroid_sq_norms[:, None]
    return labels.reshape(h, w), scores.astype(np.float32).reshape(model.k, h, w)


def _guide(grid: FeatureGrid) -> tuple[np.ndarray, np.ndarray]:
    if grid.scale == 1.0:
        return grid.image, grid.pixel_valid
    return resample_image(grid.image, grid.scale), resample_mask(grid.pixel_valid, grid.scale)


def _refine_head(
    grid: FeatureGrid, model: ClusterModel, patch_labels: np.ndarray, config: SegmentationConfig
) -> HeadRefineResult:
    guide, guide_valid = (None, None)
    if config.head_refine.blend == "guided":
        guide, guide_valid = _guide(grid)
    return refine(
        grid.features,
        grid.valid,
        model.centroids,
        config.head_refine,
        patch_size=grid.patch_size,
        guide=guide,
        guide_valid=guide_valid,
        kmeans_labels=patch_labels,
        tau_sample=model.sample,
    )


def label_pixels(
    grid: FeatureGrid,
    cell_labels: np.ndarray,
    cell_scores: np.ndarray,
    *,
    cell_size: int,
    k: int,
    config: SegmentationConfig,
    profile: RunProfile | None = None,
) -> np.ndarray:
    """Upsample cell labels or scores to input pixels, snap, and mask nodata.

    Returns
    -------
    ndarray of shape (y, x), uint8
        Labels 0..K-1, 255 on nodata pixels.
    """
    profile = profile or RunProfile()
    with profile.stage("labels"):
        shapes: CellPlacement = {"cell_size": cell_size, "input_shape": grid.input_shape,
                                 "resampled_shape": grid.resampled_shape}
        if config.labels.upsampling == "nearest":
            pixels = upsample_labels(cell_labels, **shapes)
        else:
            pixels = upsample_scores(cell_scores, **shapes)
        labels = pixels.astype(np.uint8)
        labels[~grid.pixel_valid] = NODATA_LABEL

    if config.labels.refine == "slic":
        with profile.stage("slic"):
            labels = slic_snap(
                grid.image,
                labels,
                grid.pixel_valid,
                n_labels=k,
                segment_size=config.labels.slic_size,
                compactness=config.labels.slic_compactness,
            )
    return labels


def _cells_from_refinement(
    result: HeadRefineResult, patch_labels: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return V2 cell labels and scores, with K-means labels where V2 left cells empty."""
    scores = np.asarray(result.responsibilities, dtype=np.float32)
    return fill_empty_cells(np.asarray(result.labels), scores, patch_labels, patch_size // result.cell_size)


def _dataset(
    source: RasterSource,
    labels: np.ndarray,
    *,
    model: ClusterModel,
    config: SegmentationConfig,
    grid: FeatureGrid,
    refinement: HeadRefineResult | None,
) -> xr.Dataset:
    coords = {name: source.data.coords[name] for name in ("y", "x") if name in source.data.coords}
    label_array = xr.DataArray(labels, dims=("y", "x"), coords=coords, name="labels")
    label_array.attrs.update({"_FillValue": NODATA_LABEL, "long_name": "cluster label"})
    data_vars: dict[str, xr.DataArray] = {
        "labels": label_array,
        "centroids": xr.DataArray(model.centroids, dims=("cluster", "feature")),
    }
    if model.elbow is not None:
        data_vars["inertia"] = xr.DataArray(
            np.asarray(model.elbow["inertias"]), dims=("k",), coords={"k": model.elbow["ks"]}
        )

    dataset = xr.Dataset(data_vars)
    dataset.attrs.update({"method": config.method, "k": model.k, "backbone": grid.backbone["name"]})
    if refinement is not None:
        record = head_refine_metadata(refinement, config)
        dataset.attrs.update({key: record[key] for key in ("tau", "iterations_run", "m_steps", "fell_back")})
        if record["converged"] is not None:
            # netCDF attributes cannot be None, so the key is left out when no M-step ran.
            dataset.attrs["converged"] = record["converged"]
    if source.georeferenced:
        dataset = dataset.rio.write_crs(source.crs)
    return dataset.rio.write_transform(source.transform)


def _cell_pixel_ranges(
    n_cells: int, *, cell_size: int, n_pixels: int, n_resampled: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the first input pixel and the pixel past the last one that each cell overlaps, on one axis.

    Cell ``i`` spans input coordinates ``[i, i + 1) * cell_size * n_pixels / n_resampled``.
    The edges are computed in integers, so an edge that falls on a pixel
    boundary stays exact.
    """
    edges = np.arange(n_cells + 1, dtype=np.int64) * (cell_size * n_pixels)
    starts = edges[:-1] // n_resampled
    stops = np.minimum(-(-edges[1:] // n_resampled), n_pixels)
    return starts, stops


def _any_per_cell(mask: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Return, for each cell along axis 0, whether ``mask`` is True on any of its rows ``starts:stops``.

    The ranges come from :func:`_cell_pixel_ranges`, so they are sorted, the
    last one ends at the last row, and two neighbouring cells share at most
    the row where the second one starts.
    """
    # reduceat covers starts[i]:starts[i + 1], or only the row starts[i] where a
    # cell lies inside one pixel. The shared row is added after it.
    found = np.logical_or.reduceat(mask[: stops[-1]], starts, axis=0)
    shared = np.flatnonzero(stops[:-1] > starts[1:])
    found[shared] |= mask[starts[shared + 1]]
    return found


def _responsibilities(source: RasterSource, grid: FeatureGrid, refinement: HeadRefineResult) -> xr.DataArray:
    """Crop the V2 responsibilities to the input, set cells without data to NaN and georeference them.

    See :func:`segment` for the layout of the returned DataArray.
    """
    cell_size = refinement.cell_size
    height, width = grid.input_shape
    height_resampled, width_resampled = grid.resampled_shape
    scores = np.asarray(refinement.responsibilities, dtype=np.float32)

    # The grid covers whole patches. Cells that start past the resampled
    # image's edge cover only padding and are dropped.
    n_rows = min(scores.shape[1], -(-height_resampled // cell_size))
    n_cols = min(scores.shape[2], -(-width_resampled // cell_size))
    scores = scores[:, :n_rows, :n_cols].copy()

    row_ranges = _cell_pixel_ranges(n_rows, cell_size=cell_size, n_pixels=height, n_resampled=height_resampled)
    col_ranges = _cell_pixel_ranges(n_cols, cell_size=cell_size, n_pixels=width, n_resampled=width_resampled)
    rows_with_data = _any_per_cell(grid.pixel_valid, *row_ranges)
    cells_with_data = _any_per_cell(rows_with_data.T, *col_ranges).T
    # The refinement leaves all K scores at 0 on cells it skipped, for
    # example a patch with fewer than half of its pixels valid.
    scored = scores.sum(axis=0) > 0
    scores[:, ~(cells_with_data & scored)] = np.nan

    transform = patch_transform(source.transform, input_shape=grid.input_shape,
                                resampled_shape=grid.resampled_shape, patch_size=cell_size)
    coords: dict[str, np.ndarray] = {"cluster": np.arange(scores.shape[0])}
    spatial = affine_to_coords(transform, n_cols, n_rows)
    # A rotated transform has no 1-D coordinates, so rioxarray places the
    # cells by the transform alone, as it does for the labels.
    if spatial["x"].ndim == 1:
        coords.update(spatial)
    array = xr.DataArray(
        scores,
        dims=("cluster", "y", "x"),
        coords=coords,
        name="responsibilities",
        attrs={"long_name": "V2 cluster responsibility", "units": "probability", "cell_size_px": cell_size},
    )
    if source.georeferenced:
        array = array.rio.write_crs(source.crs)
    return array.rio.write_transform(transform).rio.write_nodata(np.nan, encoded=False)


@dataclass
class SegmentationRun:
    """Everything one run produced, before it becomes a Dataset or files."""

    source: RasterSource
    config: SegmentationConfig
    grid: FeatureGrid
    model: ClusterModel
    refinement: HeadRefineResult | None
    labels: np.ndarray
    profile: RunProfile

    @property
    def clusters_used(self) -> int:
        """Number of clusters that own at least one pixel.

        At most K, and fewer when refinement or snapping emptied a cluster.
        """
        return int(np.unique(self.labels[self.labels != NODATA_LABEL]).size)

    def metadata(self) -> dict[str, Any]:
        """Return the JSON-ready record of the run."""
        record = run_metadata(self.source, self.config, self.grid, self.model, self.refinement, self.profile)
        record["clusters_used"] = self.clusters_used
        return record

    def to_dataset(self) -> xr.Dataset:
        """Return the labels and fitted model as an :class:`xarray.Dataset` (see :func:`segment`)."""
        dataset = _dataset(
            self.source, self.labels, model=self.model, config=self.config, grid=self.grid,
            refinement=self.refinement,
        )
        # JSON text rather than a dict, because netCDF attributes cannot be dicts.
        dataset.attrs["metadata"] = to_json(self.metadata())
        return dataset

    def responsibilities(self) -> xr.DataArray:
        """Return the V2 soft scores as a georeferenced raster of cells (see :func:`segment`).

        Raises
        ------
        ConfigurationError
            If the run used K-means only (``method="kmeans"``).
        """
        if self.refinement is None:
            raise ConfigurationError(
                f"the run used method={self.config.method!r}, which has no responsibilities: "
                "use method='head-refine'"
            )
        return _responsibilities(self.source, self.grid, self.refinement)


def run_segmentation(
    source: str | Path | xr.DataArray | RasterSource,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    grid: FeatureGrid | None = None,
    model: ClusterModel | None = None,
    profile: RunProfile | None = None,
) -> SegmentationRun:
    """Run every stage on one raster and keep the intermediate results.

    ``grid`` reuses features extracted earlier, and ``model`` a K-means fit
    made on them, as a sweep or an evaluation of several methods does. Both
    must come from the same source and settings.
    """
    config = config or SegmentationConfig()
    profile = profile or RunProfile(detailed=config.metrics)
    if not isinstance(source, RasterSource):
        source = open_raster(source, config.read, chunks=config.engine.chunk_size)

    grid = grid or extract_features(source, config, backbone=backbone, profile=profile)
    model = model or fit_clusters(grid, config, profile=profile)
    with profile.stage("assign"):
        patch_labels, patch_scores = _kmeans_scores(grid, model)

    refinement: HeadRefineResult | None = None
    cell_labels, cell_scores, cell_size = patch_labels, patch_scores, grid.patch_size
    if config.method == "head-refine":
        with profile.stage("head_refine"):
            refinement = _refine_head(grid, model, patch_labels, config)
        cell_labels, cell_scores = _cells_from_refinement(refinement, patch_labels, grid.patch_size)
        cell_size = refinement.cell_size

    labels = label_pixels(
        grid, cell_labels, cell_scores, cell_size=cell_size, k=model.k, config=config, profile=profile
    )
    return SegmentationRun(
        source=source, config=config, grid=grid, model=model, refinement=refinement, labels=labels, profile=profile
    )


@overload
def segment(
    source: str | Path | xr.DataArray | RasterSource,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    return_scores: Literal[False] = False,
    profile: RunProfile | None = None,
) -> xr.Dataset: ...


@overload
def segment(
    source: str | Path | xr.DataArray | RasterSource,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    return_scores: Literal[True],
    profile: RunProfile | None = None,
) -> tuple[xr.Dataset, xr.DataArray]: ...


@overload
def segment(
    source: str | Path | xr.DataArray | RasterSource,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    return_scores: bool = False,
    profile: RunProfile | None = None,
) -> xr.Dataset | tuple[xr.Dataset, xr.DataArray]: ...


def segment(
    source: str | Path | xr.DataArray | RasterSource,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    return_scores: bool = False,
    profile: RunProfile | None = None,
) -> xr.Dataset | tuple[xr.Dataset, xr.DataArray]:
    """Segment one raster into K clusters of similar vegetation.

    Parameters
    ----------
    source : str, Path, xarray.DataArray or RasterSource
        A file GDAL can open, or a DataArray with dims ("band", "y", "x").
    config : SegmentationConfig, optional
        All settings; defaults to ``SegmentationConfig()`` (V2 head
        refinement, automatic backbone, elbow K).
    backbone : Backbone, optional
        A loaded backbone to reuse across calls.
    return_scores : bool, default=False
        Also return the V2 soft responsibilities as a georeferenced raster
        of cells. Needs ``config.method="head-refine"``.
    profile : RunProfile, optional
        Receives stage times and memory.

    Returns
    -------
    result : xarray.Dataset
        ``labels`` (y, x) uint8, 0..K-1 and 255 on nodata, with the input's
        CRS and transform in ``rio``; ``centroids`` (cluster, feature);
        ``inertia`` (k) when K came from the elbow rule; attributes ``method``,
        ``k``, ``backbone`` and, for V2, ``tau``, ``iterations_run``,
        ``m_steps``, ``converged`` (left out when no M-step ran) and
        ``fell_back``, as in the metadata. ``attrs["metadata"]`` holds the
        full run record (configuration, backbone, timings) as JSON text
        (``json.loads`` reads it), so that ``to_zarr`` and ``to_netcdf``
        can store it. netCDF3, the format of xarray's built-in scipy
        writer, has no uint8, so ``to_netcdf`` of labels with nodata needs
        the netCDF4 or h5netcdf package.
    responsibilities : xarray.DataArray of shape (cluster, y, x), float32
        Only with ``return_scores=True``, as the second item of a tuple. The
        probability in [0, 1] that each cell belongs to each cluster, on the
        grid of cells that V2 refined rather than on the input's pixels. A
        cell spans ``cell_size_px * input / resampled`` input pixels per axis
        (about ``cell_size_px / scale``, not always an integer), where
        ``attrs["cell_size_px"]`` is in resampled pixels. The coordinates
        ``y`` and ``x`` are the cell centres in the input's CRS units (input
        pixels when it has no CRS, and absent for a rotated transform), and
        ``rio`` holds the input's CRS and the transform of the cells, so
        ``.rio.to_raster(path)`` writes a GeoTIFF. The grid starts at the
        input's top-left corner and keeps only the cells that overlap the
        input, so the last row and column may reach past its edge by less
        than one cell.
        ``cluster`` has coordinates 0..K-1 as in ``labels``. The K values sum
        to 1 on every cell, except that they are all NaN (the nodata value in
        ``rio``) on cells whose input pixels are all nodata and on cells that
        V2 left unscored, such as a patch with fewer than half of its pixels
        valid. ``idxmax("cluster")`` gives the most likely cluster and NaN on
        those cells, whereas ``argmax`` raises on them.

    Raises
    ------
    ConfigurationError
        If ``return_scores`` is True and ``config.method`` is ``"kmeans"``.

    Notes
    -----
    The responsibilities come as a separate DataArray because their grid
    differs from the labels' grid. Inside one Dataset they would share the
    labels' ``spatial_ref`` coordinate, and rioxarray falls back to its pixel
    transform as soon as an operation such as ``max`` drops the variable's
    ``grid_mapping`` encoding.

    Examples
    --------
    >>> from tree_seg import SegmentationConfig, segment
    >>> result = segment("examples/tcd_00000_image.tif")  # doctest: +SKIP
    >>> result.labels.rio.crs  # doctest: +SKIP
    >>> result, scores = segment("examples/tcd_00000_image.tif", return_scores=True)  # doctest: +SKIP
    >>> scores.max("cluster").rio.to_raster("confidence.tif")  # doctest: +SKIP
    """
    config = config or SegmentationConfig()
    if return_scores and config.method != "head-refine":
        raise ConfigurationError(
            f"return_scores=True needs method='head-refine', but method={config.method!r} has no "
            "responsibilities: use method='head-refine' or return_scores=False"
        )
    run = run_segmentation(source, config, backbone=backbone, profile=profile)
    dataset = run.to_dataset()
    if return_scores:
        return dataset, run.responsibilities()
    return dataset


def segment_to_files(
    source: str | Path | xr.DataArray | RasterSource,
    outdir: str | Path,
    config: SegmentationConfig | None = None,
    *,
    backbone: Backbone | None = None,
    pictures: bool = True,
) -> tuple[SegmentationRun, dict[str, Path]]:
    """Segment one raster and write its label GeoTIFF, metadata JSON and pictures.

    Returns
    -------
    run : SegmentationRun
    files : dict of str to Path
        Written files keyed by kind; names follow :class:`tree_seg.io.outputs.OutputManager`.
    """
    config = config or SegmentationConfig()
    run = run_segmentation(source, config, backbone=backbone)
    with run.profile.stage("write"):
        files = write_run_outputs(
            outdir=Path(outdir),
            stem=run.source.stem,
            method=method_label(config.method, config.labels.refine),
            labels=run.labels,
            image=run.grid.image,
            k=run.model.k,
            crs=run.source.crs,
            transform=run.source.transform,
            metadata=run.metadata(),
            pictures=pictures,
        )
    return run, files


def run_metadata(
    source: RasterSource,
    config: SegmentationConfig,
    grid: FeatureGrid,
    model: ClusterModel,
    refinement: HeadRefineResult | None,
    profile: RunProfile,
) -> dict[str, Any]:
    """Return the JSON-ready record of one run."""
    record: dict[str, Any] = {
        "method": config.method,
        "input": source.to_dict(),
        "configuration": config.to_dict(),
        "backbone": grid.backbone,
        "patch_grid": {
            "shape": list(grid.features.shape[:2]), "n_valid": int(grid.valid.sum()),
            "patch_size_px": grid.patch_size, "scale": grid.scale,
        },
        "k": model.k,
        "k_source": "fixed" if model.elbow is None else "elbow",
        "elbow": model.elbow,
        "kmeans": {"inertia": model.inertia, "n_samples": model.n_samples},
        "head_refine": None,
        "profile": profile.to_dict(),
        "versions": package_versions(),
    }
    if refinement is not None:
        record["head_refine"] = head_refine_metadata(refinement, config)
    return record


def head_refine_metadata(refinement: Any, config: SegmentationConfig) -> dict[str, Any]:
    """Return the JSON-ready record of a V2 refinement.

    ``refinement`` is a :class:`~tree_seg.clustering.head_refine.HeadRefineResult`
    or the Dask engine's outcome, which have the same fields. ``converged``
    is None when no M-step ran (one E-step, the default), because there was
    nothing to converge.
    """
    m_steps = max(int(refinement.iterations_run) - 1, 0)
    return {
        "tau": float(refinement.tau),
        "alpha": config.head_refine.alpha,
        "iterations": config.head_refine.iterations,
        "iterations_run": int(refinement.iterations_run),
        "m_steps": m_steps,
        "converged": bool(refinement.converged) if m_steps else None,
        "fell_back": bool(refinement.fell_back),
        "fallback_reason": refinement.fallback_reason,
        "blend": config.head_refine.blend,
        "cell_size_px": int(refinement.cell_size),
        "priors": [float(p) for p in np.asarray(refinement.priors).ravel()],
    }

