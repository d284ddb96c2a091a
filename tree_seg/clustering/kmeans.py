"""K-means on L2-normalised patch features (V1.5).

Features are L2-normalised before clustering, so squared Euclidean distances
lie in [0, 4] and equal ``2 - 2 * cosine similarity``. Fitting runs on a
sample of patches (:mod:`tree_seg.clustering.sampling`); :func:`assign` then
labels any number of patches, one chunk at a time.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from tree_seg.exceptions import InvalidInputError

__all__ = ["KMeansFit", "TooFewDistinctError", "assign", "assign_patches", "fit_kmeans", "l2_normalize"]

logger = logging.getLogger(__name__)

# Rows per block in assign(), which bounds the temporary (rows, K) distance
# matrix to a few MB.
_ASSIGN_BLOCK_ROWS = 65536


class TooFewDistinctError(InvalidInputError):
    """The features have fewer distinct vectors than the requested K.

    Attributes
    ----------
    distinct : int
        Clusters that K-means could fill.
    """

    def __init__(self, message: str, *, distinct: int) -> None:
        super().__init__(message)
        self.distinct = distinct


@dataclass(frozen=True)
class KMeansFit:
    """Result of one K-means fit.

    Attributes
    ----------
    centroids : ndarray of float32, shape (K, D)
        Cluster centres. They are means of unit vectors, so their norms are
        at most 1.
    inertia : float
        Sum of squared distances of the fitted vectors to their centre.
    labels : ndarray of int64, shape (N,)
        Cluster index in [0, K) of each fitted vector.
    """

    centroids: np.ndarray
    inertia: float
    labels: np.ndarray

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])


def l2_normalize(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Scale each vector to unit Euclidean length.

    Parameters
    ----------
    x : array_like, shape (..., D)
        Feature vectors along the last axis, any float dtype.
    eps : float, default=1e-12
        Norms below this are treated as ``eps``, so zero vectors stay zero
        instead of becoming NaN.

    Returns
    -------
    ndarray of float32, shape (..., D)
        Unit-length vectors (zero vectors stay zero). Non-finite inputs give
        non-finite rows.
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(eps))


def _check_matrix(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidInputError(f"invalid {name} of shape {x.shape}: expected a 2-D array (N, D)")
    return x


def fit_kmeans(x: np.ndarray, k: int, *, seed: int, n_init: int = 4) -> KMeansFit:
    """Fit K-means with k-means++ seeding and keep the best of ``n_init`` runs.

    Parameters
    ----------
    x : ndarray of float32, shape (N, D)
        L2-normalised feature vectors (see :func:`l2_normalize`); all finite.
    k : int
        Number of clusters, at least 1 and at most N.
    seed : int
        Seed of the k-means++ seeding; equal seeds give equal results on the
        same data and machine.
    n_init : int, default=4
        Number of seeded runs; the one with the lowest inertia is kept.

    Returns
    -------
    KMeansFit
        Centroids (K, D) float32, inertia and labels (N,).

    Raises
    ------
    InvalidInputError
        If ``x`` is not 2-D, contains non-finite values, or has fewer rows
        than ``k``.
    TooFewDistinctError
        If ``x`` has fewer than ``k`` distinct rows, so that clusters stay
        empty.
    """
    x = _check_matrix("features", x)
    if not 1 <= k <= x.shape[0]:
        raise InvalidInputError(
            f"invalid k={k}: expected 1 <= k <= {x.shape[0]} (the number of feature vectors); "
            "lower k or sample more patches"
        )
    if not np.isfinite(x).all():
        raise InvalidInputError("features contain NaN or infinite values: mask those patches as invalid")

    start = time.perf_counter()
    model = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    with warnings.catch_warnings():
        # scikit-learn warns when duplicate vectors leave clusters empty. The
        # check below turns that into an error that names the fix.
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit_predict(x)
    distinct = int(np.unique(labels).size)
    if distinct < k:
        raise TooFewDistinctError(
            f"only {distinct} distinct feature vector(s) among {x.shape[0]} patches, fewer than k={k}: the "
            "raster looks uniform; lower --k (or the bottom of --k-range)",
            distinct=distinct,
        )
    fit = KMeansFit(
        centroids=model.cluster_centers_.astype(np.float32),
        inertia=float(model.inertia_),
        labels=labels.astype(np.int64),
    )
    logger.debug("K-means K=%d on %d vectors: inertia %.4g in %.2f s", k, x.shape[0], fit.inertia,
                 time.perf_counter() - start)
    return fit


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign each vector to its nearest centroid.

    Uses ``||x||^2 - 2 x.c + ||c||^2`` with one matrix product per block of
    rows, in float32, so any number of rows fits in bounded memory.

    Parameters
    ----------
    x : ndarray of float32, shape (N, D)
        Feature vectors, normally L2-normalised.
    centroids : ndarray of float32, shape (K, D)
        Cluster centres.

    Returns
    -------
    labels : ndarray of int64, shape (N,)
        Index of the nearest centroid; ties go to the lowest index.
    sq_distances : ndarray of float32, shape (N,)
        Squared Euclidean distance to that centroid, clipped at 0 (rounding
        can make the expanded form slightly negative). Within [0, 4] for unit
        vectors and centroids of norm at most 1.

    Raises
    ------
    InvalidInputError
        If the inputs are not 2-D or their feature dimensions differ.
    """
    x = _check_matrix("features", x)
    centroids = _check_matrix("centroids", centroids)
    if x.shape[1] != centroids.shape[1]:
        raise InvalidInputError(
            f"feature dimension mismatch: features {x.shape} and centroids {centroids.shape} "
            "must have the same last dimension"
        )

    labels = np.empty(x.shape[0], dtype=np.int64)
    sq_distances = np.empty(x.shape[0], dtype=np.float32)
    centroid_sq_norms = np.einsum("kd,kd->k", centroids, centroids)
    for start in range(0, x.shape[0], _ASSIGN_BLOCK_ROWS):
        block = x[start:start + _ASSIGN_BLOCK_ROWS]
        dist = centroid_sq_norms[None, :] - 2.0 * (block @ centroids.T)
        dist += np.einsum("nd,nd->n", block, block)[:, None]
        nearest = np.argmin(dist, axis=1)
        labels[start:start + block.shape[0]] = nearest
        sq_distances[start:start + block.shape[0]] = np.maximum(
            np.take_along_axis(dist, nearest[:, None], axis=1)[:, 0], 0.0
        )
    return labels, sq_distances


def assign_patches(
    features: np.ndarray, valid: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label a patch grid with the nearest centroid, -1 on invalid patches.

    Parameters
    ----------
    features : ndarray of float32, shape (patch_y, patch_x, D)
        L2-normalised patch features. Values on invalid patches are ignored
        and may be NaN.
    valid : ndarray of bool, shape (patch_y, patch_x)
        True on patches that hold data.
    centroids : ndarray of float32, shape (K, D)
        Cluster centres.

    Returns
    -------
    labels : ndarray of int64, shape (patch_y, patch_x)
        Cluster index in [0, K), or -1 on invalid patches.
    sq_distances : ndarray of float32, shape (patch_y, patch_x)
        Squared distance to the nearest centroid, NaN on invalid patches.

    Raises
    ------
    InvalidInputError
        If the shapes of ``features`` and ``valid`` disagree.
    """
    features = np.asarray(features, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    if features.ndim != 3 or valid.shape != features.shape[:2]:
        raise InvalidInputError(
            f"shape mismatch: features {features.shape} must be (patch_y, patch_x, D) "
            f"and valid {valid.shape} must equal its first two dimensions"
        )

    labels = np.full(valid.shape, -1, dtype=np.int64)
    sq_distances = np.full(valid.shape, np.nan, dtype=np.float32)
    if valid.any():
        labels[valid], sq_distances[valid] = assign(features[valid], centroids)
    return labels, sq_distances
