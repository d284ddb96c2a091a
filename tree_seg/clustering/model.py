"""The fitted V1.5 model and the one function that fits it on a sample of patches.

Both the in-memory pipeline and the Dask engine draw their sample from global
patch coordinates and call :func:`fit_cluster_model`, so they choose the same
K and the same centroids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from tree_seg.clustering.elbow import select_k
from tree_seg.clustering.kmeans import fit_kmeans
from tree_seg.config import ClusterConfig
from tree_seg.exceptions import InvalidInputError

__all__ = ["ClusterModel", "fit_cluster_model"]

logger = logging.getLogger(__name__)

UNIFORM_SPREAD = 1e-10
"""Mean squared distance of unit feature vectors to their mean below which a sample counts as uniform.

With the texture backbone a constant raster gave about 1e-16 (rounding in
the window blend), a raster of two flat colours 0.18, and the bundled
OAM-TCD tile 0.22.
"""


@dataclass
class ClusterModel:
    """Fitted V1.5 model: chosen K, centroids and the elbow curve.

    Attributes
    ----------
    k : int
        Number of clusters.
    centroids : ndarray of shape (cluster, feature), float32
        Unit-length K-means centroids.
    inertia : float
        K-means inertia on the fitted sample (sum of squared distances).
    elbow : dict or None
        ``{"ks", "inertias", "drops", "threshold", "hit_top_of_range"}`` when
        K came from the elbow rule.
    n_samples : int
        Patch vectors used for the fit.
    sample : ndarray of shape (patch_y, patch_x), bool, optional
        The patches of the fit; ``tau="auto"`` is calibrated on them, as the
        Dask engine does.
    """

    k: int
    centroids: np.ndarray
    inertia: float
    elbow: dict[str, Any] | None
    n_samples: int
    sample: np.ndarray | None = None


def fit_cluster_model(sample: np.ndarray, n_valid: int, cluster: ClusterConfig) -> ClusterModel:
    """Choose K (fixed or by the elbow rule) and fit K-means on a sample of patch vectors.

    Parameters
    ----------
    sample : ndarray of shape (n, feature), float32
        L2-normalised patch vectors, in row-major order of the patch grid.
    n_valid : int
        Valid patches of the whole raster, for the log and the error.
    cluster : ClusterConfig
        K, the K range, the elbow threshold, the seed and the restarts.

    Returns
    -------
    ClusterModel
        Without ``sample``; the caller sets it when it has the mask.

    Raises
    ------
    InvalidInputError
        If there are fewer valid patches than clusters, or every sampled
        vector is the same (a uniform raster).
    """
    k_needed = cluster.k if cluster.k is not None else cluster.k_min
    if n_valid < 2 or sample.shape[0] < 2:
        raise InvalidInputError(
            f"only {n_valid} valid patch(es): clustering needs at least 2; use a larger input, or a larger "
            "--scale (or a finer --target-resolution) so that it spans more patches"
        )
    if n_valid < k_needed:
        raise InvalidInputError(f"only {n_valid} valid patches for K={k_needed}: use a smaller --k or a larger input")
    centred = sample.astype(np.float64) - sample.mean(axis=0, dtype=np.float64)
    spread = float(np.mean(np.sum(centred**2, axis=1)))
    if spread < UNIFORM_SPREAD:
        raise InvalidInputError(
            f"the sampled patches have identical features (mean squared distance to their mean {spread:.2g}), so "
            "the raster looks uniform and there is nothing to cluster: check --bands and --nodata"
        )

    elbow: dict[str, Any] | None = None
    if cluster.k is None:
        k_max = min(cluster.k_max, sample.shape[0] - 1)
        k_min = min(cluster.k_min, k_max)
        result = select_k(
            sample, k_min=k_min, k_max=k_max, threshold=cluster.elbow_threshold, seed=cluster.seed,
            n_init=cluster.n_init,
        )
        k = int(result.k)
        elbow = {
            "ks": [int(v) for v in result.ks],
            "inertias": [float(v) for v in result.inertias],
            "drops": [None if not np.isfinite(v) else float(v) for v in result.drops],
            "threshold": cluster.elbow_threshold,
            "hit_top_of_range": bool(result.hit_top_of_range),
        }
    else:
        k = cluster.k

    fit = fit_kmeans(sample, k, seed=cluster.seed, n_init=cluster.n_init)
    logger.info("K-means: K=%d on %d of %d valid patches", k, sample.shape[0], n_valid)
    return ClusterModel(
        k=k, centroids=fit.centroids, inertia=float(fit.inertia), elbow=elbow, n_samples=int(sample.shape[0])
    )
