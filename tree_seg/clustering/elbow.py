"""Choice of the number of clusters K by the elbow of the inertia curve.

K-means is fit for every K in an inclusive range. The relative inertia drop
of K is ``d[K] = (W[K-1] - W[K]) / W[K-1]``, the fraction of the remaining
within-cluster scatter that one more cluster removes. The elbow is the K
*before* the first K whose drop falls below the threshold, because that
first K adds the cluster that is not worth adding.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np

from tree_seg.clustering.kmeans import KMeansFit, TooFewDistinctError, fit_kmeans
from tree_seg.exceptions import ElbowRangeWarning, InvalidInputError

__all__ = ["ElbowResult", "choose_elbow", "relative_drops", "select_k"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ElbowResult:
    """Outcome of the elbow search.

    Attributes
    ----------
    k : int
        Chosen number of clusters.
    ks : tuple of int
        Every K fitted, ``k_min`` to ``k_max`` inclusive.
    inertias : tuple of float
        Inertia W[K] of each K in ``ks``.
    drops : tuple of float
        Relative drop d[K] of each K in ``ks``, a fraction; NaN for ``k_min``,
        which has no predecessor.
    hit_top_of_range : bool
        True when no drop fell below the threshold, so ``k == k_max`` and the
        range may be too small.
    fit : KMeansFit
        The K-means fit of the chosen K.
    """

    k: int
    ks: tuple[int, ...]
    inertias: tuple[float, ...]
    drops: tuple[float, ...]
    hit_top_of_range: bool
    fit: KMeansFit


def relative_drops(inertias: np.ndarray) -> np.ndarray:
    """Compute the relative inertia drop of each K against the previous K.

    Parameters
    ----------
    inertias : array_like of float, shape (n,)
        Inertias of consecutive K values, all >= 0.

    Returns
    -------
    ndarray of float64, shape (n,)
        ``(W[i-1] - W[i]) / W[i-1]``; NaN at index 0. Where ``W[i-1]`` is 0
        the data already fit exactly, so the drop is 0 (nothing left to gain).
        A negative drop means K-means found a worse local minimum for the
        larger K.
    """
    inertias = np.asarray(inertias, dtype=np.float64)
    drops = np.full(inertias.shape, np.nan)
    previous = inertias[:-1]
    gained = previous - inertias[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        drops[1:] = np.where(previous > 0.0, gained / np.where(previous > 0.0, previous, 1.0), 0.0)
    return drops


def choose_elbow(ks: tuple[int, ...], inertias: np.ndarray, threshold: float) -> tuple[int, bool]:
    """Apply the elbow rule to an inertia curve.

    Parameters
    ----------
    ks : tuple of int
        Consecutive K values, increasing.
    inertias : array_like of float, shape (len(ks),)
        Inertia of each K.
    threshold : float
        Relative drop, a fraction, below which adding a cluster is not worth it.

    Returns
    -------
    k : int
        The K before the first K whose relative drop is below ``threshold``;
        ``ks[-1]`` when there is none.
    hit_top_of_range : bool
        True when no drop was below the threshold and ``ks`` has more than one
        value.
    """
    drops = relative_drops(inertias)
    below = np.flatnonzero(drops[1:] < threshold)
    if below.size:
        # drops[1:][i] belongs to ks[i + 1], so the K before it is ks[i].
        return ks[int(below[0])], False
    return ks[-1], len(ks) > 1


def select_k(
    x: np.ndarray,
    *,
    k_min: int,
    k_max: int,
    threshold: float,
    seed: int,
    n_init: int = 4,
) -> ElbowResult:
    """Choose K by the elbow rule and return the fit of that K.

    Parameters
    ----------
    x : ndarray of float32, shape (N, D)
        L2-normalised feature vectors of the sampled patches.
    k_min, k_max : int
        Inclusive K range, ``1 <= k_min <= k_max <= N``. Every K in it is
        fitted, so the whole inertia curve can be plotted.
    threshold : float
        Relative drop, a fraction in (0, 1), below which adding a cluster is
        not worth it.
    seed : int
        K-means seed, the same for every K.
    n_init : int, default=4
        K-means runs per K.

    Returns
    -------
    ElbowResult
        The chosen K is the K before the first K whose drop is below
        ``threshold``. When ``k_min == k_max`` that K is returned without a
        search. The search stops before a K that exceeds the number of
        distinct vectors, so ``ks`` may end below ``k_max``.

    Raises
    ------
    InvalidInputError
        If the range is empty or reaches past the number of vectors, or the
        threshold is outside (0, 1).
    TooFewDistinctError
        If the vectors have fewer distinct values than ``k_min``.

    Warns
    -----
    ElbowRangeWarning
        When no drop falls below the threshold; ``k_max`` is returned.
    """
    x = np.asarray(x, dtype=np.float32)
    if not 1 <= k_min <= k_max:
        raise InvalidInputError(f"invalid K range {k_min}:{k_max}: expected 1 <= k_min <= k_max")
    if x.ndim != 2:
        raise InvalidInputError(f"invalid features of shape {x.shape}: expected a 2-D array (N, D)")
    if x.shape[0] < k_max:
        raise InvalidInputError(
            f"features of shape {x.shape} have fewer vectors than k_max={k_max}: "
            "lower k_max or sample more patches"
        )
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(f"invalid threshold={threshold!r}: expected a fraction in (0, 1)")

    start = time.perf_counter()
    fits: dict[int, KMeansFit] = {}
    for k in range(k_min, k_max + 1):
        try:
            fits[k] = fit_kmeans(x, k, seed=seed, n_init=n_init)
        except TooFewDistinctError as error:
            if not fits:
                raise
            # More clusters than distinct vectors would stay empty.
            logger.info("elbow search stops at K=%d: the sample has only %d distinct feature vectors",
                        k - 1, error.distinct)
            break
    ks = tuple(fits)
    inertias = np.array([fits[k].inertia for k in ks])
    drops = relative_drops(inertias)

    chosen, hit_top = choose_elbow(ks, inertias, threshold)
    hit_top = hit_top and ks[-1] == k_max
    if hit_top:
        warnings.warn(
            f"no relative inertia drop fell below {threshold:.3g} ({threshold * 100:g}%) for K in {k_min}..{k_max}, "
            f"so K={k_max} was chosen: raise k_max (the top of --k-range) or the threshold "
            "(--elbow-threshold, in percent), or fix K with --k",
            ElbowRangeWarning,
            stacklevel=2,
        )

    logger.info(
        "elbow chose K=%d over K=%d..%d on %d vectors in %.2f s (drops %s)",
        chosen, k_min, k_max, x.shape[0], time.perf_counter() - start,
        ", ".join(f"{d:.3f}" for d in drops[1:]),
    )
    return ElbowResult(
        k=chosen,
        ks=ks,
        inertias=tuple(float(w) for w in inertias),
        drops=tuple(float(d) for d in drops),
        hit_top_of_range=hit_top,
        fit=fits[chosen],
    )
