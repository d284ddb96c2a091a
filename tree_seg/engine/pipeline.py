"""Public entry points of the Dask engine: one raster, a batch, or the feature store alone.

:func:`segment_raster` runs every pass on one raster larger than memory and
writes the same outputs as :func:`tree_seg.core.segmentation.segment_to_files`
(names from :class:`~tree_seg.io.outputs.OutputManager`), plus two zarr stores:

- ``<stem>_features.zarr``: patch features, reusable by later runs with the
  same input, read, backbone and window settings (any method, K or V2
  setting), and resumable after an interruption;
- ``<stem>_<method>_labels.zarr``: the run's pixel labels (and V2 guide cells).

The label GeoTIFF is written last, so a finished-looking ``*_labels.tif``
never sits next to missing companions.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from tree_seg.config import SegmentationConfig
from tree_seg.core.export import method_label
from tree_seg.clustering.model import ClusterModel
from tree_seg.core.profiling import RunProfile, peak_rss_mb, peak_vram_mb
from tree_seg.core.segmentation import head_refine_metadata
from tree_seg.core.versions import package_versions
from tree_seg.engine import passes, tasks
from tree_seg.engine.cluster import Executor, open_client
from tree_seg.engine.feature_store import FeatureStore, feature_settings
from tree_seg.engine.label_store import LabelStore
from tree_seg.engine.layout import patch_chunk_side, slic_depth
from tree_seg.engine.progress import progress_enabled
from tree_seg.engine.worker import backbone_info
from tree_seg.exceptions import ClusterLostError, ConfigurationError, InvalidInputError, TreeSegError
from tree_seg.features.grid import patch_transform
from tree_seg.features.resample import resampled_shape
from tree_seg.features.scale import resolve_scale
from tree_seg.io.outputs import OutputManager, sanitize_name
from tree_seg.io.reader import SAMPLE_MAX_SIDE, RasterSource, open_raster
from tree_seg.io.writer import write_json_atomic
from tree_seg.log_context import input_context
from tree_seg.models.base import resolve_device

__all__ = ["BatchItem", "EngineResult", "build_feature_store", "segment_many", "segment_raster"]

logger = logging.getLogger(__name__)


@dataclass
class EngineResult:
    """Outputs and record of one engine run.

    Attributes
    ----------
    labels_path : Path
        Label GeoTIFF, uint8, 0..K-1, 255 on nodata, the input's CRS and transform.
    metadata_path : Path
        Metadata JSON.
    feature_store : Path
        Zarr store of patch features.
    label_store : Path
        Zarr store of the pixel labels.
    k : int
        Number of clusters.
    elbow : dict or None
        The elbow curve when K came from the elbow rule.
    timings : dict of str to float
        Wall time per pass, in seconds.
    metadata : dict
        The JSON-ready record also written to ``metadata_path``.
    kmeans_centroids : ndarray of shape (cluster, feature), float32
        K-means centroids.
    centroids : ndarray of shape (cluster, feature), float32
        Centroids the labels come from: the final V2 centroids, or the
        K-means ones for V1.5 and after a V2 fallback.
    outputs : dict of str to Path
        Every file written, by kind.
    """

    labels_path: Path
    metadata_path: Path
    feature_store: Path
    label_store: Path
    k: int
    elbow: dict[str, Any] | None
    timings: dict[str, float]
    metadata: dict[str, Any]
    kmeans_centroids: np.ndarray
    centroids: np.ndarray
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass
class BatchItem:
    """Status of one input of :func:`segment_many`.

    Attributes
    ----------
    path : Path
        The input.
    status : {"ok", "failed"}
        Whether its outputs were written.
    result : EngineResult or None
        Its result when ``status`` is ``"ok"``.
    error : str or None
        The error message when it failed.
    """

    path: Path
    status: Literal["ok", "failed"]
    result: EngineResult | None = None
    error: str | None = None


@contextmanager
def _executor(client: Any, config: SegmentationConfig, progress: bool | None) -> Iterator[Executor]:
    enabled = progress_enabled(progress)
    if client is not None:
        yield Executor(client, progress=enabled)
        return
    # Only a local cluster is sized for a local GPU. A remote cluster's
    # workers may have GPUs that this machine lacks.
    use_gpu = (config.engine.scheduler is None and config.backbone.device != "cpu"
               and resolve_device(config.backbone.device).type == "cuda")
    with open_client(config.engine, use_gpu=use_gpu) as opened:
        yield Executor(opened, progress=enabled)


def _cluster_lost(executor: Executor, path: Path, error: Exception) -> ClusterLostError | None:
    # Both cases end the batch: every later input would fail the same way,
    # or wait for workers that may never come.
    client = executor.client
    if client is None:
        return None
    address = client.scheduler.address
    resume = "then run the same command again to resume from the feature stores"
    if client.status != "running":
        # The client leaves the "running" state when its scheduler connection drops.
        reason = " ".join(str(error).split())
        return ClusterLostError(f"lost the Dask scheduler at {address} while segmenting {path} ({reason}): check "
                                f"that the scheduler runs, {resume}")
    if isinstance(error, FutureCancelledError):
        # Killing every worker of an external cluster mid-run ended this way,
        # with reason "unknown".
        return ClusterLostError(f"the Dask scheduler at {address} cancelled a task while segmenting {path} (reason: "
                                f"{error.reason}), as it does when its workers are gone: check the workers, {resume}")
    return None


def _killed_workers_text(error: Exception) -> str | None:
    # distributed gives up on a task after it was running on
    # distributed.scheduler.allowed-failures + 1 workers that died, which is
    # often a worker running out of memory.
    if not isinstance(error, KilledWorker):
        return None
    return (f"Dask workers died {error.allowed_failures + 1} times while running task {error.task!r}: a "
            "worker may have run out of memory, so lower --chunk-size or give each worker more memory")


def _geometry(source: RasterSource, config: SegmentationConfig, patch_size: int) -> tasks.RasterGeometry:
    input_shape = (source.height, source.width)
    scale = resolve_scale(config.window, crs=source.crs, transform=source.transform, shape=(source.height, source.width))
    geometry = tasks.RasterGeometry(
        input_shape=input_shape,
        resampled_shape=resampled_shape(input_shape, scale),
        scale=scale,
        patch_size=patch_size,
        window=config.window.window,
        overlap=config.window.overlap,
    )
    geometry.window_grid()
    return geometry


def _store_path(feature_store: str | Path | None, outdir: Path, stem: str) -> Path:
    """Resolve the feature store: a ``.zarr`` path is the store, another path a folder of stores."""
    name = f"{sanitize_name(stem, role='stem')}_features.zarr"
    if feature_store is None:
        return outdir / name
    path = Path(feature_store)
    return path if path.suffix == ".zarr" else path / name


def _chunk_size(config: SegmentationConfig, source: RasterSource) -> int:
    # A chunk larger than the raster would only allocate zarr chunks of that
    # size, so the raster's longer side caps it.
    return min(config.engine.chunk_size, max(source.height, source.width))


def _open_feature_store(executor: Executor, source: RasterSource, config: SegmentationConfig,
                        store_path: Path) -> tuple[FeatureStore, tasks.FeatureTaskContext, dict[str, Any]]:
    feature_dtype = config.engine.feature_dtype
    loaded = executor.run_on_each_worker(backbone_info, config.backbone, gpu=True)
    info = loaded[0][0]
    for category, message in dict.fromkeys(warning for _, found in loaded for warning in found):
        warnings.warn(message, category, stacklevel=2)
    geometry = _geometry(source, config, int(info["patch_size"]))
    side = patch_chunk_side(_chunk_size(config, source), scale=geometry.scale, patch_size=geometry.patch_size,
                            window=config.window.window, overlap=config.window.overlap)
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store = FeatureStore.open_or_create(
        store_path,
        feature_settings(source, config, info, scale=geometry.scale, feature_dtype=feature_dtype),
        patch_shape=geometry.patch_shape,
        feature_dim=int(info["feature_dim"]),
        chunk_side=side,
        crs_wkt=None if source.crs is None else source.crs.to_wkt(),
        transform=patch_transform(source.transform, input_shape=geometry.input_shape,
                                  resampled_shape=geometry.resampled_shape, patch_size=geometry.patch_size),
    )
    context = tasks.FeatureTaskContext(source=source, geometry=geometry, store=store, backbone=config.backbone,
                                       batch_size=config.backbone.batch_size, feature_dtype=feature_dtype)
    return store, context, info


def build_feature_store(
    source_path: str | Path,
    store_path: str | Path,
    config: SegmentationConfig | None = None,
    *,
    client: Any = None,
    chunks: Sequence[tuple[int, int]] | None = None,
    progress: bool | None = None,
) -> FeatureStore:
    """Run (or resume) only the feature pass of one raster.

    Parameters
    ----------
    source_path : str or Path
        Input raster.
    store_path : str or Path
        Zarr feature store, created when missing and resumed otherwise.
    config : SegmentationConfig, optional
        ``read``, ``backbone``, ``window`` and ``engine`` are used.
    client : distributed.Client, optional
        A running client; by default one is opened from ``config.engine``.
    chunks : sequence of (int, int), optional
        Compute only these chunk indices (row, col of the chunk grid); the
        others stay pending. For tests and for spreading one store over jobs.
    progress : bool, optional
        Show progress bars; by default when the ``tree_seg`` logger shows INFO.

    Returns
    -------
    FeatureStore

    Raises
    ------
    FeatureStoreMismatchError
        If ``store_path`` contains a store written with other settings.
    """
    config = config or SegmentationConfig()
    source = open_raster(source_path, config.read, chunks=None)
    with _executor(client, config, progress) as executor:
        store, context, _ = _open_feature_store(executor, source, config, Path(store_path))
        selected = None
        if chunks is not None:
            requested = {tuple(index) for index in chunks}
            selected = [block for block in store.blocks() if block.index in requested]
        passes.feature_pass(executor, context, blocks=selected)
    return store


def segment_raster(
    source_path: str | Path,
    outdir: str | Path,
    config: SegmentationConfig | None = None,
    *,
    client: Any = None,
    pictures: bool = True,
    progress: bool | None = None,
) -> EngineResult:
    """Segment one raster chunk by chunk on Dask and write its outputs.

    Parameters
    ----------
    source_path : str or Path
        A raster file GDAL can open.
    outdir : str or Path
        Output folder, created when missing.
    config : SegmentationConfig, optional
        All settings. ``engine`` sets the chunk size, workers, scheduler and
        feature store. The feature store ``None`` is
        ``OUTDIR/<stem>_features.zarr``, a path ending in ``.zarr`` is the
        store itself, and another path is a folder of stores.
    client : distributed.Client, optional
        A running client to reuse; by default one is opened from
        ``config.engine`` and closed at the end.
    pictures : bool, default=True
        Write the legend, overlay and side-by-side PNGs from a decimated
        preview (at most 1024 pixels a side), and the elbow plot.
    progress : bool, optional
        Show a progress bar per pass; by default when the ``tree_seg``
        logger shows INFO.

    Returns
    -------
    EngineResult

    Raises
    ------
    InvalidInputError
        On unreadable input, no valid pixels or too few valid patches for K.
    FeatureStoreMismatchError
        If the feature store was written with other settings.
    """
    config = config or SegmentationConfig()
    with _executor(client, config, progress) as executor:
        store_path = _store_path(config.engine.feature_store, Path(outdir), Path(source_path).stem)
        return _segment(executor, Path(source_path), Path(outdir), config, pictures=pictures, store_path=store_path)


def segment_many(
    paths: Sequence[str | Path],
    outdir: str | Path,
    config: SegmentationConfig | None = None,
    *,
    client: Any = None,
    pictures: bool = True,
    progress: bool | None = None,
) -> list[BatchItem]:
    """Segment several rasters on one cluster, one output set per input.

    Every input shares the cluster and therefore each worker's cached
    backbone. An input that fails is logged with its error and reported as
    ``"failed"``, and the batch goes on, unless the scheduler or all its
    workers are gone. That log record has the attribute ``input_failure=True``, so a
    caller that reports the failures itself can filter it out.
    ``config.engine.feature_store`` names a folder here (one
    ``<stem>_features.zarr`` per input).

    Returns
    -------
    list of BatchItem
        One per input, in input order.

    Raises
    ------
    ConfigurationError
        If ``config.engine.feature_store`` is a single ``.zarr`` store and
        there are several inputs.
    ClusterLostError
        If the connection to the scheduler is lost, or the scheduler cancels
        a task as it does when its workers are gone. Inputs finished before
        keep their outputs, and a rerun resumes the others from their
        feature stores.
    """
    config = config or SegmentationConfig()
    outdir = Path(outdir)
    store_setting = config.engine.feature_store
    if store_setting is not None and Path(store_setting).suffix == ".zarr" and len(paths) > 1:
        raise ConfigurationError(
            f"invalid feature_store={store_setting} for {len(paths)} inputs: pass a folder, which gets one "
            "<stem>_features.zarr per input"
        )

    items: list[BatchItem] = []
    with _executor(client, config, progress) as executor:
        for path in map(Path, paths):
            with input_context(path.name):
                try:
                    result = _segment(executor, path, outdir, config, pictures=pictures,
                                      store_path=_store_path(store_setting, outdir, path.stem))
                except Exception as error:
                    lost = _cluster_lost(executor, path, error)
                    if lost is not None:
                        raise lost from error
                    # One bad input must not end the batch: besides tree_seg's own
                    # errors this catches a task that kills workers or a full disk.
                    text = _killed_workers_text(error) or str(error)
                    logger.error("Failed to segment %s: %s", path, text,
                                 exc_info=not isinstance(error, (TreeSegError, OSError, KilledWorker)),
                                 extra={"input_failure": True})
                    items.append(BatchItem(path=path, status="failed", error=text))
                    continue
            items.append(BatchItem(path=path, status="ok", result=result))
    failed = sum(item.status == "failed" for item in items)
    logger.info("%d of %d inputs segmented, %d failed", len(items) - failed, len(items), failed)
    return items


def _segment(executor: Executor, source_path: Path, outdir: Path, config: SegmentationConfig, *,
             pictures: bool, store_path: Path) -> EngineResult:
    # Times the driver's passes; the peak RSS it records is this process's.
    timer = RunProfile()
    with timer.stage("open"):
        source = open_raster(source_path, config.read, chunks=None)
        store, feature_context, info = _open_feature_store(executor, source, config, store_path)
    geometry = feature_context.geometry
    n_chunks = len(store.blocks())
    logger.info("Engine run on %s: %d x %d pixels, %d x %d patches (width x height) in %d chunk%s of %d patches, "
                "label chunks of %d px", source_path, geometry.input_shape[1], geometry.input_shape[0],
                geometry.patch_shape[1], geometry.patch_shape[0], n_chunks, "" if n_chunks == 1 else "s",
                store.chunk_side, _chunk_size(config, source))

    with timer.stage("features"):
        computed, windows = passes.feature_pass(executor, feature_context)

    with timer.stage("clustering"):
        sample, n_valid = passes.gather_sample(executor, store, config.cluster)
        if n_valid == 0:
            raise InvalidInputError(f"no valid pixels in {source_path}: check --nodata and --bands")
        model = passes.fit_sample(sample, n_valid, config.cluster)

    outputs = OutputManager(outdir, source.stem, method_label(config.method, config.labels.refine))
    # The label store is rewritten from here on, so an earlier run's label
    # raster and pictures would no longer match it if this run stops early.
    outputs.remove_existing()
    label_store = LabelStore.create(outputs.path("labels", "zarr"), shape=geometry.input_shape,
                                    chunk_size=_chunk_size(config, source),
                                    crs_wkt=None if source.crs is None else source.crs.to_wkt(),
                                    transform=source.transform)
    em_context = tasks.EMTaskContext(store=store, labels=label_store, head_refine=config.head_refine,
                                     patch_size=geometry.patch_size, tau=float("nan"))

    outcome: passes.HeadRefineOutcome | None = None
    label_model = tasks.LabelModel(mode="kmeans", kmeans_centroids=model.centroids)
    if config.method == "head-refine":
        with timer.stage("head_refine"):
            if config.head_refine.blend == "guided":
                passes.guide_pass(executor, tasks.GuideTaskContext(source, geometry, label_store, config.head_refine),
                                  store)
            outcome, em_context = passes.head_refine_pass(executor, em_context, model.centroids, sample)
        label_model = tasks.LabelModel(mode="fallback" if outcome.fell_back else "head-refine",
                                       kmeans_centroids=model.centroids, centroids=outcome.centroids,
                                       log_priors=outcome.log_priors)
    del sample

    label_context = tasks.LabelTaskContext(source=source, geometry=geometry, em=em_context,
                                           labels_config=config.labels, slic_depth=slic_depth(config.labels.slic_size))
    with timer.stage("labels"):
        summary = passes.label_pass(executor, label_context, label_model)
        if outcome is not None and label_model.mode == "head-refine":
            reason = _degenerate_reason(summary, model.k, outcome.tau)
            if reason is not None:
                outcome.fall_back(reason, patch_size=geometry.patch_size)
                label_model = tasks.LabelModel(mode="fallback", kmeans_centroids=model.centroids)
                summary = passes.label_pass(executor, label_context, label_model)

    record = _metadata(source, config, info, store, geometry, model, outcome, timer.stages, computed=computed,
                       windows=windows, label_store=label_store.path)
    # K counts fitted clusters; fewer may own a pixel after refinement.
    record["clusters_used"] = int(np.count_nonzero(summary.pixels))
    written: dict[str, Path] = {"feature_store": store.path, "label_store": label_store.path}
    with timer.stage("write"):
        outputs.remove_existing()
        if pictures:
            written.update(_pictures(outputs, source, label_store, model, config))
        written["metadata"] = outputs.path("metadata", "json")
        record["outputs"] = {kind: str(path) for kind, path in written.items()}
        record["outputs"]["labels"] = str(outputs.path("labels", "tif"))
        write_json_atomic(record, written["metadata"])
        written["labels"] = passes.write_label_geotiff(label_store, outputs.path("labels", "tif"), crs=source.crs,
                                                       transform=source.transform)
    logger.info("Engine run on %s finished: K=%d, %d in use, passes %s", source_path, model.k,
                record["clusters_used"], ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timer.stages.items()))
    final_centroids = model.centroids
    if label_model.mode == "head-refine":
        # A head-refine label model is built from the outcome's centroids.
        assert label_model.centroids is not None
        final_centroids = label_model.centroids
    return EngineResult(labels_path=written["labels"], metadata_path=written["metadata"], feature_store=store.path,
                        label_store=label_store.path, k=model.k, elbow=model.elbow, timings=dict(timer.stages),
                        metadata=record, kmeans_centroids=model.centroids, centroids=final_centroids, outputs=written)


def _degenerate_reason(summary: tasks.LabelSummary, k: int, tau: float) -> str | None:
    if not summary.finite:
        return f"non-finite responsibilities (tau={tau:.3g})"
    n_used = int(summary.used.sum())
    if n_used < 2:
        return f"only {n_used} of {k} clusters hold any cell after EM (tau={tau:.3g}); lower tau or alpha"
    return None


def _metadata(source: RasterSource, config: SegmentationConfig, info: dict[str, Any], store: FeatureStore,
              geometry: tasks.RasterGeometry, model: ClusterModel, outcome: passes.HeadRefineOutcome | None,
              timings: dict[str, float], *, computed: int, windows: int, label_store: Path) -> dict[str, Any]:
    """Build the run record with the keys of :func:`tree_seg.core.segmentation.run_metadata`, plus ``engine``."""
    record: dict[str, Any] = {
        "method": config.method,
        "input": source.to_dict(),
        "configuration": config.to_dict(),
        "backbone": info,
        "patch_grid": {"shape": list(store.patch_shape), "n_valid": store.n_valid_total(),
                       "patch_size_px": geometry.patch_size, "scale": geometry.scale},
        "k": model.k,
        "k_source": "fixed" if model.elbow is None else "elbow",
        "elbow": model.elbow,
        "kmeans": {"inertia": model.inertia, "n_samples": model.n_samples},
        "head_refine": None,
        # Peak RSS and VRAM of the driver process; workers keep their own.
        "profile": {"stage_seconds": dict(timings), "total_seconds": sum(timings.values()),
                    "peak_rss_mb": peak_rss_mb(), "peak_vram_mb": peak_vram_mb()},
        "versions": package_versions(),
        "engine": {
            "feature_store": str(store.path),
            "label_store": str(label_store),
            "feature_dtype": config.engine.feature_dtype,
            "feature_chunk_patches": store.chunk_side,
            "feature_chunks": len(store.blocks()),
            "feature_chunks_computed": computed,
            "windows_computed": windows,
            "label_chunk_pixels": _chunk_size(config, source),
        },
    }
    if outcome is not None:
        record["head_refine"] = head_refine_metadata(outcome, config)
    return record


def _pictures(outputs: OutputManager, source: RasterSource, label_store: LabelStore, model: ClusterModel,
              config: SegmentationConfig) -> dict[str, Path]:
    """Draw the PNGs from a decimated preview, so the whole raster is never in memory."""
    from tree_seg.visualization.plots import plot_elbow, plot_legend, plot_overlay, plot_side_by_side

    image, _ = source.read_sample(max_side=SAMPLE_MAX_SIDE)
    # read_sample keeps every step-th pixel with this step, so the labels are
    # decimated the same way.
    step = max(1, math.ceil(max(source.height, source.width) / SAMPLE_MAX_SIDE))
    labels = label_store.read_labels(slice(None, None, step), slice(None, None, step))
    height, width = min(labels.shape[0], image.shape[1]), min(labels.shape[1], image.shape[2])
    labels, image = labels[:height, :width], image[:, :height, :width]
    method = method_label(config.method, config.labels.refine)
    title = f"{source.stem} - {method}, K={model.k}"
    written = {
        "legend": plot_legend(labels, model.k, outputs.path("legend", "png"), title=title),
        "overlay": plot_overlay(image, labels, outputs.path("overlay", "png"), title=title),
        "side_by_side": plot_side_by_side(image, labels, model.k, outputs.path("side_by_side", "png"), title=title),
    }
    if model.elbow:
        written["elbow"] = plot_elbow(model.elbow["ks"], model.elbow["inertias"], model.k,
                                      outputs.path("elbow", "png"), threshold=model.elbow["threshold"],
                                      title=f"{source.stem} - elbow")
    return written
