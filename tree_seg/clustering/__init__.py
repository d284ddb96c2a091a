"""Clustering of patch features: K-means with the elbow rule (V1.5) and the
V2 head refinement (soft EM with a spatial blend).

The per-chunk functions here take and return plain arrays or tensors;
:mod:`tree_seg.engine` maps them over Dask chunks.
"""

from tree_seg.clustering.blend import GuideCells, blend_halo, cells_per_patch, prepare_guide
from tree_seg.clustering.elbow import ElbowResult, choose_elbow, relative_drops, select_k
from tree_seg.clustering.head_refine import (
    EMStats,
    HeadRefineResult,
    aggregate,
    em_chunk,
    labels_from_responsibilities,
    log_priors_from_mass,
    nearest_margins,
    refine,
    tau_from_margins,
)
from tree_seg.clustering.kmeans import KMeansFit, assign, assign_patches, fit_kmeans, l2_normalize
from tree_seg.clustering.sampling import sample_fraction, sample_patches

__all__ = [
    "EMStats",
    "ElbowResult",
    "GuideCells",
    "HeadRefineResult",
    "KMeansFit",
    "aggregate",
    "assign",
    "assign_patches",
    "blend_halo",
    "cells_per_patch",
    "choose_elbow",
    "em_chunk",
    "fit_kmeans",
    "l2_normalize",
    "labels_from_responsibilities",
    "log_priors_from_mass",
    "nearest_margins",
    "prepare_guide",
    "refine",
    "relative_drops",
    "sample_fraction",
    "sample_patches",
    "select_k",
    "tau_from_margins",
]
