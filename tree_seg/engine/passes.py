"""The engine's passes over chunks: features, sampling and K-means, V2 EM, labels, GeoTIFF.

Each pass maps one task of :mod:`tree_seg.engine.tasks` over chunks through an
:class:`~tree_seg.engine.cluster.Executor`; only small results (samples,
counts, EM statistics, label summaries) come back to this process. The
decisions between passes (K, tau, EM stopping, V2 fallback) follow
:func:`tree_seg.core.segmentation.fit_clusters` and
:func:`tree_seg.clustering.head_refine.refine` step by step, so the engine
reproduces the in-memory pipeline.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tree_seg.clustering.blend import cells_per_patch
from tree_seg.clustering.head_refine import (
    EMStats,
    aggregate,
    describe_convergence,
    log_priors_from_mass,
    nearest_margins,
    tau_from_margins,
)
from tree_seg.clustering.sampling import sample_fraction
from tree_seg.config import ClusterConfig, HeadRefineConfig
from tree_seg.clustering.model import ClusterModel, fit_cluster_model
from tree_seg.engine import tasks
from tree_seg.engine.cluster import Executor, combine_all
from tree_seg.engine.feature_store import WINDOW_PENDING, FeatureStore
from tree_seg.engine.label_store import LabelStore
from tree_seg.engine.layout import Block, SeamWork, WindowOwnership, iter_blocks
from tree_seg.exceptions import RefinementFallbackWarning
from tree_seg.io.writer import LabelRasterWriter

__all__ = [
    "HeadRefineOutcome",
    "feature_pass",
    "fit_sample",
    "gather_sample",
    "guide_pass",
    "head_refine_pass",
    "label_pass",
    "write_label_geotiff",
]

logger = logging.getLogger(__name__)


def feature_pass(executor: Executor, context: tasks.FeatureTaskContext, *,
                 blocks: list[Block] | None = None) -> tuple[int, int]:
    """Compute and store the features of every chunk not yet marked done.

    Two maps: :func:`~tree_seg.engine.tasks.seam_windows` on the seam
    windows that the pending chunks blend and that are not stored yet, in
    parts of each owner chunk's windows (see :func:`seam_work`), then
    :func:`~tree_seg.engine.tasks.feature_chunk` on the pending chunks. So
    each window runs through the backbone once. Once every chunk is done,
    the stored seam windows are deleted.

    Parameters
    ----------
    executor : Executor
        Where the tasks run; they carry the GPU annotation when workers have GPUs.
    context : FeatureTaskContext
        Raster, store and backbone settings.
    blocks : list of Block, optional
        Restrict the pass to these chunks (finished ones are still skipped).

    Returns
    -------
    chunks : int
        Chunks computed in this call.
    windows : int
        Windows that went through the backbone in this call.
    """
    store = context.store
    not_done = store.pending_blocks()
    pending = not_done
    if blocks is not None:
        requested = {block.index for block in blocks}
        pending = [block for block in not_done if block.index in requested]
    total = len(store.blocks())
    logger.info("Feature pass: %d of %d chunks to compute (%d already in %s)", len(pending), total,
                total - len(not_done), store.path)
    windows = 0
    if pending:
        ownership = context.ownership
        store.create_window_arrays(ownership)
        states = store.window_states()
        # The seam windows that a pending chunk needs, unless stored already.
        needed = set()
        for block in pending:
            for origin in ownership.grid.windows_touching(block.rows, block.cols):
                if ownership.is_seam(origin) and states[ownership.index(origin)] == WINDOW_PENDING:
                    needed.add(origin)
        work = seam_work(ownership, store.blocks(), needed, most=context.batch_size, workers=executor.n_workers)

        def mark(part: SeamWork, result: tuple[list[tuple[int, int]], list[tuple[int, int]]]) -> None:
            store.mark_seams(ownership, part.block, *result)

        seams = executor.map(tasks.seam_windows, work, context, description="seam windows", gpu=True, on_result=mark)
        windows += sum(len(written) for written, _ in seams)
        windows += sum(executor.map(tasks.feature_chunk, pending, context, description="features", gpu=True))
    if store.done_mask().all():
        store.drop_window_arrays()
    logger.info("Feature pass: %d windows through the backbone", windows)
    return len(pending), windows


def seam_work(ownership: WindowOwnership, blocks: list[Block], origins: set[tuple[int, int]], *, most: int,
              workers: int) -> list[SeamWork]:
    """Split seam windows into tasks of one owner chunk each.

    Each owner's windows are cut, row by row, into parts of at most
    ``ceil(len(origins) / (2 * workers))`` windows, and never more than
    ``most`` (a backbone batch). A small raster with few chunks thus still
    gives every worker work, while a large one keeps whole batches.

    Parameters
    ----------
    ownership : WindowOwnership
        Window assignment of the chunks.
    blocks : list of Block
        Every chunk of the feature store.
    origins : set of (int, int)
        Origins in pixels of the seam windows to compute.
    most : int
        Largest number of windows in a part, >= 1.
    workers : int
        Workers that run the tasks, >= 1.

    Returns
    -------
    list of SeamWork
        Parts in chunk order, each with its windows row by row.
    """
    size = max(1, min(most, math.ceil(len(origins) / (2 * workers))))
    work = []
    for block in blocks:
        owned = [origin for origin in ownership.seams(block) if origin in origins]
        for part, start in enumerate(range(0, len(owned), size)):
            work.append(SeamWork((*block.index, part), block, tuple(owned[start:start + size])))
    return work


def guide_pass(executor: Executor, context: tasks.GuideTaskContext, store: FeatureStore) -> None:
    """Store the guide cells of the guided V2 blend for every feature chunk."""
    factor = cells_per_patch(context.head_refine, context.geometry.patch_size)
    channels = 3 if context.head_refine.guided_colour else 1
    patch_rows, patch_cols = store.patch_shape
    context.labels.create_guide(channels=channels, cell_shape=(patch_rows * factor, patch_cols * factor),
                                chunk_cells=store.chunk_side * factor)
    executor.map(tasks.guide_chunk, store.blocks(), context, description="guide")


def gather_sample(executor: Executor, store: FeatureStore, cluster: ClusterConfig) -> tuple[np.ndarray, int]:
    """Gather the K-means sample: valid patches chosen by global coordinates and the seed.

    Returns
    -------
    sample : ndarray of shape (n, feature), float32
        Features of the chosen patches in row-major order of the whole patch
        grid, the order in which the in-memory pipeline takes them.
    n_valid : int
        Valid patches of the whole raster.
    """
    n_valid = store.n_valid_total()
    fraction = sample_fraction(n_valid, cluster.max_samples)
    parts = executor.map(tasks.sample_chunk, store.blocks(), store, cluster.seed, fraction, description="sample")
    flat_index = np.concatenate([index for index, _ in parts])
    vectors = np.concatenate([features for _, features in parts])
    order = np.argsort(flat_index, kind="stable")
    logger.info("Sampled %d of %d valid patches (fraction %.4f)", flat_index.size, n_valid, fraction)
    return vectors[order], n_valid


def fit_sample(sample: np.ndarray, n_valid: int, cluster: ClusterConfig) -> ClusterModel:
    """Choose K and fit K-means on the gathered sample with :func:`~tree_seg.clustering.model.fit_cluster_model`."""
    return fit_cluster_model(sample, n_valid, cluster)


@dataclass
class HeadRefineOutcome:
    """Result of the distributed V2 EM, the counterpart of :class:`~tree_seg.clustering.head_refine.HeadRefineResult`.

    Attributes
    ----------
    centroids : ndarray of shape (cluster, feature), float32
        Final unit-length centroids.
    log_priors : ndarray of shape (cluster,), float32
        Final log mixing proportions.
    priors : ndarray of shape (cluster,), float32
        Mixing proportions; on fallback, the K-means label shares.
    tau : float
        Temperature in squared-distance units.
    iterations_run : int
        E-steps, counting the last one that the label pass runs.
    converged : bool
        True when no centroid moved more than ``tol`` in the last M-step.
    fell_back : bool
        True when the labels are the K-means labels because EM degenerated.
    fallback_reason : str or None
        Why it fell back.
    cell_size : int
        Resampled pixels per cell side of the V2 labels.
    counts : ndarray of shape (cluster,), float64
        Patches, valid or not, nearest to each K-means centroid; they seed
        the priors and are the priors after a fallback.
    """

    centroids: np.ndarray
    log_priors: np.ndarray
    priors: np.ndarray
    tau: float
    iterations_run: int
    converged: bool
    fell_back: bool
    fallback_reason: str | None
    cell_size: int
    counts: np.ndarray

    def fall_back(self, reason: str, *, patch_size: int) -> None:
        """Switch to the K-means labels, logging and warning as :func:`~tree_seg.clustering.head_refine.refine` does."""
        logger.warning("head refinement fell back to the K-means labels: %s", reason)
        warnings.warn(f"head refinement fell back to the K-means labels: {reason}", RefinementFallbackWarning,
                      stacklevel=3)
        total = self.counts.sum()
        k = self.counts.shape[0]
        self.priors = (self.counts / total if total > 0 else np.full(k, 1.0 / k)).astype(np.float32)
        self.converged = False
        self.fell_back = True
        self.fallback_reason = reason
        self.cell_size = patch_size


def _sum_counts(*parts: np.ndarray) -> np.ndarray:
    return np.sum(parts, axis=0)


def head_refine_pass(
    executor: Executor,
    context: tasks.EMTaskContext,
    kmeans_centroids: np.ndarray,
    sample: np.ndarray,
) -> tuple[HeadRefineOutcome, tasks.EMTaskContext]:
    """Run the V2 soft EM over chunks, as :func:`~tree_seg.clustering.head_refine.refine` does on one grid.

    Parameters
    ----------
    executor : Executor
        Where the chunk tasks run.
    context : EMTaskContext
        Stores and settings; its ``tau`` is ignored and replaced.
    kmeans_centroids : ndarray of shape (cluster, feature), float32
        K-means centroids; rescaled to unit length first.
    sample : ndarray of shape (n, feature), float32
        The K-means sample, whose nearest-centroid margins calibrate
        ``tau="auto"`` (:func:`~tree_seg.clustering.head_refine.tau_from_margins`).

    Returns
    -------
    outcome : HeadRefineOutcome
        Final centroids and priors; ``fell_back`` when EM degenerated during
        the iterations (the label pass can still fall back later).
    context : EMTaskContext
        ``context`` with the tau used.
    """
    config: HeadRefineConfig = context.head_refine
    started = time.perf_counter()
    blocks = context.store.blocks()
    k = kmeans_centroids.shape[0]

    centroids_t = torch.as_tensor(kmeans_centroids, dtype=torch.float32)
    centroids_t = centroids_t / centroids_t.norm(dim=1, keepdim=True).clamp(min=1e-12)
    centroids = centroids_t.numpy()

    if config.tau == "auto":
        select = np.ones((1, sample.shape[0]), dtype=bool)
        tau = tau_from_margins(nearest_margins(sample[None], select, centroids))
    else:
        tau = float(config.tau)
    context = tasks.EMTaskContext(store=context.store, labels=context.labels, head_refine=config,
                                  patch_size=context.patch_size, tau=tau)

    counts = executor.map_reduce(tasks.count_chunk, blocks, context.store, kmeans_centroids,
                                 combine=_sum_counts, description="priors")
    log_priors = log_priors_from_mass(counts, priors=config.priors)
    factor = cells_per_patch(config, context.patch_size)
    outcome = HeadRefineOutcome(centroids=centroids, log_priors=log_priors, priors=np.exp(log_priors), tau=tau,
                                iterations_run=0, converged=False, fell_back=False, fallback_reason=None,
                                cell_size=context.patch_size // factor, counts=counts)
    logger.info("head refinement: K=%d, %d valid patches, tau=%.4g, blend=%s, alpha=%.2f, priors=%s, %d chunks",
                k, context.store.n_valid_total(), tau, config.blend, config.alpha, config.priors, len(blocks))

    # As in refine(), ``iterations`` counts E-steps: up to ``iterations - 1``
    # E- and M-steps here, then the label pass runs the last E-step.
    combine_stats = combine_all(EMStats.combine)
    m_steps = 0
    for m_step in range(config.iterations - 1):
        stats = executor.map_reduce(tasks.em_step_chunk, blocks, context, outcome.centroids, outcome.log_priors,
                                    combine=combine_stats, description=f"EM {m_step + 1}")
        new_centroids, new_log_priors = aggregate(stats, outcome.centroids, priors=config.priors)
        if not (np.isfinite(new_centroids).all() and np.isfinite(new_log_priors).all()):
            outcome.iterations_run = config.iterations
            outcome.fall_back(f"non-finite centroids or priors after M-step {m_step + 1} (tau={tau:.3g})",
                              patch_size=context.patch_size)
            return outcome, context
        shift = float((torch.as_tensor(new_centroids) - torch.as_tensor(outcome.centroids)).norm(dim=1).max())
        outcome.centroids, outcome.log_priors = new_centroids, new_log_priors
        m_steps = m_step + 1
        logger.debug("EM M-step %d: largest centroid shift %.3g, priors %s", m_steps, shift,
                     np.round(np.exp(new_log_priors), 3))
        if shift <= config.tol:
            outcome.converged = True
            break

    outcome.iterations_run = m_steps + 1
    outcome.priors = np.exp(outcome.log_priors).astype(np.float32)
    logger.info("head refinement EM finished: %s, %.2f s", describe_convergence(m_steps, outcome.converged),
                time.perf_counter() - started)
    return outcome, context


def label_pass(executor: Executor, context: tasks.LabelTaskContext, model: tasks.LabelModel) -> tasks.LabelSummary:
    """Write the pixel labels of every chunk of ``chunk_size`` input pixels to the label store."""
    label_store = context.em.labels
    blocks = list(iter_blocks(label_store.shape, label_store.chunk_size))
    return executor.map_reduce(tasks.label_chunk, blocks, context, model, combine=tasks.combine_summaries,
                               description="labels")


def write_label_geotiff(label_store: LabelStore, path: Path, *, crs: Any, transform: Any) -> Path:
    """Copy the label store into a tiled, compressed GeoTIFF with overviews, from this process only.

    One process writes the whole file, chunk by chunk, which is what keeps
    the GeoTIFF consistent: GDAL does not support concurrent writers to one
    file. The file appears under its final name only once complete
    (:class:`~tree_seg.io.writer.LabelRasterWriter`).
    """
    height, width = label_store.shape
    with LabelRasterWriter(path, height=height, width=width, crs=crs, transform=transform) as writer:
        for block in iter_blocks(label_store.shape, label_store.chunk_size):
            writer.write_window(label_store.read_labels(block.rows, block.cols), block.rows.start, block.cols.start)
    return path
