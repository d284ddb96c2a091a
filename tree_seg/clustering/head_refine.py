"""V2 head refinement: soft EM seeded from the K-means centroids.

Each iteration is an E-step with a spatial blend, run per chunk
(:func:`em_chunk`). Between consecutive E-steps an M-step turns additive
statistics (:class:`EMStats`, :meth:`EMStats.combine`, :func:`aggregate`)
into new centroids and priors, and the last E-step gives the labels, so
``iterations`` E-steps run ``iterations - 1`` M-steps and each iteration is
one pass over the features. :func:`refine` runs the same chunk function on a
whole grid with a zero halo.

E-step. With unit-length features x and centroids mu,
``log r_k = log pi_k - ||x - mu_k||^2 / tau``, normalised over k with a
softmax that subtracts the largest logit first, so it stays finite for any
tau. The softmax depends only on differences of squared distances
between clusters. A smaller tau makes assignments harder (tau -> 0 is
K-means), a larger tau softens them until clusters merge. ``tau="auto"``
sets tau so that a patch with the median margin (second-nearest minus
nearest squared distance) gets responsibility 0.95 for its nearest cluster
against the runner-up, before priors and blend. Typical patches then stay
nearly hard and only patches near a border between clusters are soft.

M-step. ``pi_k = sum(r_k) / sum(r)`` (with ``priors=True``) and
``mu_k = sum(r_k x) / sum(r_k)``, accumulated in float64 (each block of
patches is one float32 matrix product), then rescaled to unit length. The
E-step compares unit features with the centroids, and unit centroids keep
the scale of the distances, and therefore of tau, fixed across iterations.

Empty clusters. A cluster whose total responsibility is below
``EMPTY_CLUSTER_MASS`` patches keeps its previous centroid. Every prior is
floored at ``PRIOR_FLOOR`` and the priors renormalised, so an emptied cluster
can still win patches back later. Neither rule uses randomness.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from tree_seg.clustering.blend import (
    GuideCells,
    blend_neighbours_last,
    cells_per_patch,
    cells_to_patches,
    guided_blend,
    neighbour_weights,
    prepare_guide,
)
from tree_seg.clustering.em import (
    EMPTY_CLUSTER_MASS,
    PRIOR_FLOOR,
    ArrayLike,
    EMStats,
    _check_shapes,
    _margins,
    _partial_distances,
    _resolve_device,
    _scaled_products,
    _to_tensor,
    aggregate,
    log_priors_from_mass,
    nearest_margins,
    tau_from_margins,
)
from tree_seg.config import HeadRefineConfig
from tree_seg.exceptions import InvalidInputError, RefinementFallbackWarning

__all__ = [
    "EMPTY_CLUSTER_MASS",
    "PRIOR_FLOOR",
    "EMStats",
    "HeadRefineResult",
    "aggregate",
    "describe_convergence",
    "em_chunk",
    "labels_from_responsibilities",
    "log_priors_from_mass",
    "nearest_margins",
    "refine",
    "tau_from_margins",
]

logger = logging.getLogger(__name__)

# Patches per matrix product in the M-step; each product is float32 and the
# partial sums are added in float64. Batches of such products also run about
# 1.6x faster on the CPU than one long product.
_M_STEP_BLOCK = 4096


@dataclass(frozen=True)
class HeadRefineResult:
    """Output of :func:`refine`.

    Attributes
    ----------
    labels : ndarray of int64, shape (cell_y, cell_x)
        Cluster index in [0, K) per cell, -1 on invalid cells.
    responsibilities : ndarray of float32, shape (K, cell_y, cell_x)
        Soft assignments, summing to 1 on valid cells and 0 elsewhere.
    cell_size : int
        Pixels of the resampled image per cell side: the patch size for the
        neighbour blend and on fallback, ``guide_stride`` for the guided blend.
    centroids : ndarray of float32, shape (K, D)
        Final unit-length centroids (the input centroids on fallback).
    priors : ndarray of float32, shape (K,)
        Final mixing proportions, summing to 1.
    tau : float
        Temperature used, in squared-distance units.
    iterations_run : int
        E-steps performed (M-steps plus one); 0 on fallback without valid
        patches.
    converged : bool
        True when the last M-step moved no centroid more than ``tol``; False
        when no M-step ran.
    fell_back : bool
        True when the result is the K-means partition because EM degenerated.
    fallback_reason : str or None
        Why it fell back.
    """

    labels: np.ndarray
    responsibilities: np.ndarray
    cell_size: int
    centroids: np.ndarray
    priors: np.ndarray
    tau: float
    iterations_run: int
    converged: bool
    fell_back: bool
    fallback_reason: str | None


def _e_step(features: torch.Tensor, valid: torch.Tensor, centroids: torch.Tensor, log_priors: torch.Tensor,
            tau: float, partial: torch.Tensor | None = None,
            check: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Returns the responsibilities, shape (patch_y, patch_x, K), 0 on invalid
    # patches. The second value is the mask of patches with finite logits when
    # check finds a non-finite one, and None otherwise.
    if partial is None:
        # log pi - (||mu||^2 - 2 x.mu) / tau as one product.
        bias = log_priors - (centroids * centroids).sum(dim=1) / tau
        logits = _scaled_products(features, centroids, 2.0 / tau, bias)
    else:
        logits = torch.add(log_priors, partial, alpha=-1.0 / tau)

    finite = None
    if check and not _all_finite(logits):
        # Invalid patches may contain NaN, so only valid patches must be finite.
        finite = torch.isfinite(logits).all(dim=-1)
        if not bool(finite[valid].all()):
            raise InvalidInputError(f"non-finite E-step values on valid patches: features or centroids contain NaN "
                                    f"or infinity (mask those patches as invalid), or tau={tau:g} is too small")

    resp = _softmax_last(logits)
    if not bool(valid.all()):
        resp.masked_fill_(~valid[..., None], 0.0)
    return resp, finite


def _softmax_last(logits: torch.Tensor) -> torch.Tensor:
    # Softmax over the last axis, in place. Subtracting each patch's largest
    # logit before exponentiating (the log-sum-exp shift) keeps every
    # exponential finite, however small tau is. On a 2-core AVX-512 Xeon,
    # torch.softmax over a last axis of K = 8 took 4.9 ms on a 256 x 256
    # grid, and these three passes 0.9 ms.
    logits = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=-1, keepdim=True))


def _all_finite(x: torch.Tensor) -> bool:
    # One reduction instead of isfinite's three passes: a sum is finite when
    # every term is, unless it overflows, which the exact test then settles.
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _weighted_sums(weights: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Returns weights.sum(0), shape (K,), and weights.T @ features, shape
    # (K, D), for weights (n, K) and features (n, D). Each block of
    # _M_STEP_BLOCK patches is summed in float32, and the blocks in float64.
    n, k = weights.shape
    dim = features.shape[1]
    blocks = n // _M_STEP_BLOCK
    split = blocks * _M_STEP_BLOCK
    sum_r = torch.zeros(k, dtype=torch.float64, device=features.device)
    sum_rx = torch.zeros((k, dim), dtype=torch.float64, device=features.device)
    if blocks:
        blocked = weights[:split].reshape(blocks, _M_STEP_BLOCK, k)
        sum_r += blocked.sum(dim=1).sum(dim=0, dtype=torch.float64)
        products = torch.bmm(blocked.transpose(1, 2), features[:split].reshape(blocks, _M_STEP_BLOCK, dim))
        sum_rx += products.sum(dim=0, dtype=torch.float64)
    if split < n:
        sum_r += weights[split:].sum(dim=0).to(torch.float64)
        sum_rx += (weights[split:].T @ features[split:]).to(torch.float64)
    return sum_r, sum_rx


def _statistics(features: torch.Tensor, resp: torch.Tensor, used: torch.Tensor, halo: int) -> EMStats:
    # Sums the M-step statistics of the interior patches. features must be
    # finite everywhere, because 0 * NaN is NaN, and resp must be 0 wherever
    # used is False. Whole rows are read so that they stay contiguous, and
    # the halo columns get weight 0.
    height, width, dim = features.shape
    rows = slice(halo, height - halo)
    weights = resp[rows]
    if halo:
        weights = weights.clone()
        weights[:, :halo] = 0.0
        weights[:, width - halo:] = 0.0
    weights = weights.reshape(-1, resp.shape[2])

    sum_r, sum_rx = _weighted_sums(weights, features[rows].reshape(-1, dim))
    n_valid = int(used[rows, halo:width - halo].sum())
    return EMStats(sum_r.cpu().numpy(), sum_rx.cpu().numpy(), n_valid)


def em_chunk(
    features_with_halo: ArrayLike,
    valid_with_halo: ArrayLike,
    centroids: ArrayLike,
    log_priors: ArrayLike,
    tau: float,
    config: HeadRefineConfig,
    *,
    halo: int,
    patch_size: int,
    guide: ArrayLike | GuideCells | None = None,
    guide_valid: ArrayLike | None = None,
    statistics: bool = True,
    responsibilities: bool = True,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray | None, EMStats | None]:
    """Run the E-step with the spatial blend on one chunk and sum its statistics.

    Parameters
    ----------
    features_with_halo : ndarray or Tensor, shape (patch_y, patch_x, D)
        L2-normalised patch features of the chunk plus ``halo`` patches on
        every side. Any float dtype is accepted and computed in float32.
        Values on invalid patches are ignored and may be NaN.
    valid_with_halo : ndarray or Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data. Halo patches beyond the raster edge
        must be False.
    centroids : ndarray or Tensor, shape (K, D)
        Current unit-length centroids, K >= 2.
    log_priors : ndarray or Tensor, shape (K,)
        Natural log of the mixing proportions (all equal for ``priors=False``).
    tau : float
        Temperature, > 0, in squared-distance units.
    config : HeadRefineConfig
        ``blend``, ``alpha`` and the guided-filter settings are read.
    halo : int
        Patches on each side that only feed the blend. Results equal those of
        the whole grid when ``halo >= blend_halo(config, patch_size)``; 0 gives
        the whole-grid computation, with nothing beyond the grid.
    patch_size : int
        Patch side in pixels of the resampled image.
    guide : ndarray, Tensor of shape (C, H, W), or GuideCells, optional
        Required for the guided blend. Either the resampled image in [0, 1]
        covering the same patches, with ``H = patch_y * patch_size``, or its
        cells from :func:`~tree_seg.clustering.blend.prepare_guide`, which a
        caller running several iterations on one chunk can compute once. A
        last partial patch row or column of pixels may be missing and is then
        treated as invalid.
    guide_valid : ndarray or Tensor of bool, shape (H, W), optional
        True on guide pixels that hold data; None treats all as valid. Not
        read when ``guide`` is a GuideCells.
    statistics : bool, default=True
        Sum the M-step statistics; False skips that matrix product, for a
        final pass that only needs the responsibilities.
    responsibilities : bool, default=True
        Return the responsibilities; False skips copying them out, for a
        pass that only needs the statistics.
    device : str or torch.device, optional
        Where to compute; default: the device of ``features_with_halo`` if it
        is a tensor, else the CPU.

    Returns
    -------
    responsibilities : ndarray of float32, shape (K, cell_y, cell_x), or None
        Blended responsibilities of the interior cells, summing to 1 on valid
        cells and 0 elsewhere; None when ``responsibilities`` is False. Cells are patches for the neighbour blend and
        ``patch_size // guide_stride`` cells per patch side for the guided one.
    stats : EMStats or None
        M-step statistics of the interior patches, None when ``statistics``
        is False. For the guided blend a patch's responsibility is the mean
        over its valid cells.

    Raises
    ------
    InvalidInputError
        On inconsistent shapes, a missing guide, or non-finite features on
        valid patches.
    ConfigurationError
        If ``guide_stride`` does not divide ``patch_size`` (guided blend).
    """
    device = _resolve_device(device, features_with_halo)
    features = _to_tensor(features_with_halo, device, torch.float32).contiguous()
    valid = _to_tensor(valid_with_halo, device, torch.bool)
    centroids_t = _to_tensor(centroids, device, torch.float32)
    log_priors_t = _to_tensor(log_priors, device, torch.float32)
    _check_shapes(features, valid, centroids_t, log_priors_t, halo)
    factor = cells_per_patch(config, patch_size)
    height, width = valid.shape

    guide_cells = None
    if config.blend == "guided":
        guide_cells = guide if isinstance(guide, GuideCells) else prepare_guide(
            guide, guide_valid, grid_shape=(height, width), patch_size=patch_size, config=config, device=device)
    return _em_chunk(features, valid, centroids_t, log_priors_t, tau, config, halo=halo, factor=factor,
                     guide_cells=guide_cells, statistics=statistics, responsibilities=responsibilities)


def _em_chunk(features: torch.Tensor, valid: torch.Tensor, centroids: torch.Tensor, log_priors: torch.Tensor,
              tau: float, config: HeadRefineConfig, *, halo: int, factor: int, guide_cells: GuideCells | None,
              statistics: bool, responsibilities: bool = True, partial: torch.Tensor | None = None,
              blend_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
              check: bool = True) -> tuple[np.ndarray | None, EMStats | None]:
    # em_chunk() after its checks and conversions. refine() calls it directly
    # with the blend weights computed once. refine() has also checked the
    # features already, so it passes check=False after the first E-step.
    height, width = valid.shape
    resp, finite = _e_step(features, valid, centroids, log_priors, tau, partial, check=check)
    if finite is not None and statistics:
        # The statistics need finite features everywhere, because 0 * NaN is NaN.
        features = features.masked_fill(~finite[..., None], 0.0)

    if guide_cells is not None:
        cell_resp, cell_valid = guided_blend(
            resp.permute(2, 0, 1).contiguous(), valid, guide_cells.cells, guide_cells.valid,
            factor=factor, alpha=config.alpha, radius=config.guided_radius, eps=config.guided_eps,
        )
        patch_resp, used = cells_to_patches(cell_resp, cell_valid, factor)
        patch_resp = patch_resp.permute(1, 2, 0)
    else:
        if config.alpha > 0:
            own, window = blend_weights if blend_weights is not None else neighbour_weights(valid, config.alpha)
            resp = blend_neighbours_last(resp, own, window)
        patch_resp, used = resp, valid
        cell_resp = resp.permute(2, 0, 1)

    stats = _statistics(features, patch_resp, used, halo) if statistics else None
    out = None
    if responsibilities:
        inner = slice(halo * factor, (height - halo) * factor), slice(halo * factor, (width - halo) * factor)
        out = cell_resp[:, inner[0], inner[1]].contiguous().cpu().numpy()
    return out, stats


def describe_convergence(m_steps: int, converged: bool) -> str:
    """Return "no M-step", "converged" or "not converged after N M-steps", for logs."""
    if m_steps == 0:
        return "no M-step"
    return "converged" if converged else f"not converged after {m_steps} M-steps"


def labels_from_responsibilities(responsibilities: np.ndarray) -> np.ndarray:
    """Return the argmax cluster per cell, -1 where all responsibilities are 0.

    Parameters
    ----------
    responsibilities : ndarray of float32, shape (K, cell_y, cell_x)
        Output of :func:`em_chunk` or :func:`refine`; 0 on invalid cells.

    Returns
    -------
    ndarray of int64, shape (cell_y, cell_x)
        Cluster index in [0, K) (ties go to the lowest index), -1 on invalid
        cells.
    """
    # torch's max over the leading axis runs about 3x faster than numpy's
    # argmax, and it too returns the first index among equal values.
    scores = torch.from_numpy(np.ascontiguousarray(responsibilities))
    labels = scores.max(dim=0).indices
    labels[~(scores.sum(dim=0) > 0)] = -1
    return labels.numpy()


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, *labels.shape), dtype=np.float32)
    rows, cols = np.nonzero(labels >= 0)
    out[labels[rows, cols], rows, cols] = 1.0
    return out


def _fall_back(reason: str, kmeans_labels: np.ndarray, centroids: np.ndarray, *, patch_size: int, tau: float,
               iterations_run: int) -> HeadRefineResult:
    logger.warning("head refinement fell back to the K-means labels: %s", reason)
    warnings.warn(f"head refinement fell back to the K-means labels: {reason}", RefinementFallbackWarning,
                  stacklevel=3)
    k = centroids.shape[0]
    counts = np.bincount(kmeans_labels[kmeans_labels >= 0], minlength=k).astype(np.float64)
    priors = counts / counts.sum() if counts.sum() > 0 else np.full(k, 1.0 / k)
    return HeadRefineResult(
        labels=kmeans_labels.astype(np.int64),
        responsibilities=_one_hot(kmeans_labels, k),
        cell_size=patch_size,
        centroids=centroids,
        priors=priors.astype(np.float32),
        tau=tau,
        iterations_run=iterations_run,
        converged=False,
        fell_back=True,
        fallback_reason=reason,
    )


def _kmeans_labels(kmeans_labels: ArrayLike | None, nearest: torch.Tensor, valid: torch.Tensor,
                   k: int) -> np.ndarray:
    # nearest: index of the nearest centroid per patch, shape (patch_y, patch_x).
    if kmeans_labels is None:
        return torch.where(valid, nearest, -1).cpu().numpy().astype(np.int64)

    labels = np.asarray(kmeans_labels.cpu() if isinstance(kmeans_labels, torch.Tensor) else kmeans_labels)
    if labels.shape != tuple(valid.shape) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(
            f"invalid kmeans_labels of shape {labels.shape} and dtype {labels.dtype}: expected integers of "
            f"shape {tuple(valid.shape)}, the patch grid"
        )
    if labels.size and (labels.min() < -1 or labels.max() >= k):
        raise InvalidInputError(f"invalid kmeans_labels in [{labels.min()}, {labels.max()}]: expected -1..{k - 1}")
    return labels.astype(np.int64)


def refine(
    features: ArrayLike,
    valid: ArrayLike,
    centroids: ArrayLike,
    config: HeadRefineConfig,
    *,
    patch_size: int,
    guide: ArrayLike | None = None,
    guide_valid: ArrayLike | None = None,
    kmeans_labels: ArrayLike | None = None,
    tau_sample: ArrayLike | None = None,
    device: str | torch.device | None = None,
) -> HeadRefineResult:
    """Refine a K-means partition with soft EM and a spatial blend.

    Runs the chunk function of :func:`em_chunk` with a zero halo on the
    whole grid for up to ``config.iterations`` E-steps with an M-step between
    each two. After an M-step that moves no centroid more than
    ``config.tol``, the next E-step is the last. The argmax of the last
    E-step's blended responsibilities gives the labels.

    Parameters
    ----------
    features : ndarray or Tensor, shape (patch_y, patch_x, D)
        L2-normalised patch features; values on invalid patches are ignored.
    valid : ndarray or Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data.
    centroids : ndarray or Tensor, shape (K, D)
        K-means centroids, K >= 2; they are rescaled to unit length.
    config : HeadRefineConfig
        EM and blend settings.
    patch_size : int
        Patch side in pixels of the resampled image.
    guide : ndarray or Tensor, shape (C, H, W), optional
        The resampled image in [0, 1]; required for the guided blend (see
        :func:`em_chunk`).
    guide_valid : ndarray or Tensor of bool, shape (H, W), optional
        True on guide pixels that hold data.
    kmeans_labels : ndarray or Tensor of int, shape (patch_y, patch_x), optional
        K-means labels, -1 on invalid patches. They are returned on fallback
        and set the initial priors. Default: the nearest centroid.
    tau_sample : ndarray or Tensor of bool, shape (patch_y, patch_x), optional
        Patches whose margins calibrate ``tau="auto"``, e.g. the K-means
        sample, so that a chunked run can use the same patches; default: all
        valid patches.
    device : str or torch.device, optional
        Where to compute; default: the device of ``features`` if it is a
        tensor, else the CPU.

    Returns
    -------
    HeadRefineResult
        Labels and responsibilities on the cell grid, final centroids, priors
        and tau. When EM degenerates (no valid patch, fewer than two non-empty
        clusters, non-finite values) it contains the K-means labels on the patch
        grid with ``fell_back=True``.

    Raises
    ------
    InvalidInputError
        On inconsistent shapes, K < 2, non-finite centroids or features on
        valid patches, or a missing guide for the guided blend.
    ConfigurationError
        If ``guide_stride`` does not divide ``patch_size`` (guided blend).

    Warns
    -----
    RefinementFallbackWarning
        When the K-means labels are returned instead.
    """
    start = time.perf_counter()
    device = _resolve_device(device, features)
    features_t = _to_tensor(features, device, torch.float32).contiguous()
    valid_t = _to_tensor(valid, device, torch.bool)
    centroids_t = _to_tensor(centroids, device, torch.float32)
    k = centroids_t.shape[0]
    _check_shapes(features_t, valid_t, centroids_t, torch.zeros(k), 0)
    if not bool(torch.isfinite(centroids_t).all()):
        raise InvalidInputError(f"centroids of shape {tuple(centroids_t.shape)} contain NaN or infinite values")
    factor = cells_per_patch(config, patch_size)
    guide_cells = None
    if config.blend == "guided":
        guide_cells = prepare_guide(guide, guide_valid, grid_shape=cast("tuple[int, int]", tuple(valid_t.shape)),
                                    patch_size=patch_size, config=config, device=device)
    centroids_t = centroids_t / centroids_t.norm(dim=1, keepdim=True).clamp(min=1e-12)

    # One product serves the K-means labels, the tau margins, the input check
    # and the first E-step.
    partial = _partial_distances(features_t, centroids_t)
    if not _all_finite(partial):
        finite = torch.isfinite(partial).all(dim=-1)
        if not bool(finite[valid_t].all()):
            raise InvalidInputError("features contain NaN or infinite values on valid patches: "
                                    "mask those patches as invalid")
        # The M-step gives these patches weight 0, and 0 * NaN is NaN.
        features_t = features_t.masked_fill(~finite[..., None], 0.0)
        partial = partial.masked_fill(~finite[..., None], 0.0)
    nearest = partial.min(dim=-1, keepdim=True)
    labels_km = _kmeans_labels(kmeans_labels, nearest.indices[..., 0], valid_t, k)
    n_valid = int(valid_t.sum())
    if n_valid == 0:
        return _fall_back("no valid patches", labels_km, centroids_t.cpu().numpy(), patch_size=patch_size,
                          tau=math.nan, iterations_run=0)
    if config.tau == "auto":
        sample = valid_t if tau_sample is None else _to_tensor(tau_sample, device, torch.bool) & valid_t
        tau = tau_from_margins(_margins(partial, sample, nearest))
    else:
        tau = float(config.tau)
    logger.info("head refinement: K=%d, %d valid patches of %s, tau=%.4g, blend=%s, alpha=%.2f, priors=%s",
                k, n_valid, tuple(valid_t.shape), tau, config.blend, config.alpha, config.priors)

    blend_weights = None
    if config.blend == "neighbour" and config.alpha > 0:
        blend_weights = neighbour_weights(valid_t, config.alpha)

    def run_chunk(centroids_now: torch.Tensor, log_priors_now: torch.Tensor, statistics: bool,
                  partial_now: torch.Tensor | None = None) -> tuple[np.ndarray | None, EMStats | None]:
        # The features are checked. Only the first E-step, which gets the
        # distances, checks that tau keeps the logits finite. Centroids stay
        # unit-length, so the later logits have the same bound.
        return _em_chunk(features_t, valid_t, centroids_now, log_priors_now, tau, config, halo=0, factor=factor,
                         guide_cells=guide_cells, statistics=statistics, responsibilities=not statistics,
                         partial=partial_now, blend_weights=blend_weights, check=partial_now is not None)

    counts = np.bincount(labels_km[labels_km >= 0], minlength=k).astype(np.float64)
    initial_log_priors = log_priors_from_mass(counts, priors=config.priors)
    em = _iterate(run_chunk, centroids_t, torch.as_tensor(initial_log_priors, device=device), partial, config)
    if isinstance(em, str):
        return _fall_back(f"{em} (tau={tau:.3g})", labels_km, centroids_t.cpu().numpy(), patch_size=patch_size,
                          tau=tau, iterations_run=config.iterations)
    centroids_t, log_priors_t, m_steps, converged = em
    iterations_run = m_steps + 1

    responsibilities, _ = run_chunk(centroids_t, log_priors_t, False, partial if m_steps == 0 else None)
    # Without statistics, run_chunk returns the responsibilities.
    responsibilities = cast(np.ndarray, responsibilities)
    labels = labels_from_responsibilities(responsibilities)
    n_used = int(np.count_nonzero(np.bincount(labels[labels >= 0], minlength=k)))
    reason = None
    if not np.isfinite(responsibilities).all():
        reason = f"non-finite responsibilities (tau={tau:.3g})"
    elif n_used < 2:
        reason = f"only {n_used} of {k} clusters hold any cell after EM (tau={tau:.3g}); lower tau or alpha"
    if reason is not None:
        return _fall_back(reason, labels_km, centroids_t.cpu().numpy(), patch_size=patch_size, tau=tau,
                          iterations_run=iterations_run)

    logger.info("head refinement finished: %d E-steps (%s), %d of %d clusters in use, %.2f s",
                iterations_run, describe_convergence(m_steps, converged), n_used, k, time.perf_counter() - start)
    return HeadRefineResult(
        labels=labels,
        responsibilities=responsibilities,
        cell_size=patch_size // factor,
        centroids=centroids_t.cpu().numpy(),
        priors=log_priors_t.exp().cpu().numpy(),
        tau=tau,
        iterations_run=iterations_run,
        converged=converged,
        fell_back=False,
        fallback_reason=None,
    )


def _iterate(
    run_chunk: Callable[..., tuple[np.ndarray | None, EMStats | None]],
    centroids: torch.Tensor,
    log_priors: torch.Tensor,
    partial: torch.Tensor,
    config: HeadRefineConfig,
) -> tuple[torch.Tensor, torch.Tensor, int, bool] | str:
    # Runs the E- and M-steps before the last E-step and returns the final
    # centroids, log priors, number of M-steps and convergence, or the reason
    # to fall back.
    for m_step in range(config.iterations - 1):
        # The first E-step reuses the distances to the starting centroids.
        _, stats = run_chunk(centroids, log_priors, True, partial if m_step == 0 else None)
        assert stats is not None
        new_centroids, new_log_priors = aggregate(stats, centroids, priors=config.priors)
        if not (np.isfinite(new_centroids).all() and np.isfinite(new_log_priors).all()):
            return f"non-finite centroids or priors after M-step {m_step + 1}"

        new_centroids_t = torch.as_tensor(new_centroids, device=centroids.device)
        shift = float((new_centroids_t - centroids).norm(dim=1).max())
        centroids = new_centroids_t
        log_priors = torch.as_tensor(new_log_priors, device=centroids.device)
        logger.debug("EM M-step %d: largest centroid shift %.3g, priors %s", m_step + 1, shift,
                     np.round(np.exp(new_log_priors), 3))
        if shift <= config.tol:
            return centroids, log_priors, m_step + 1, True
    return centroids, log_priors, config.iterations - 1, False
