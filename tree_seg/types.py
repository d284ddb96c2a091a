"""String option aliases shared across tree_seg."""

from typing import Literal

Method = Literal["kmeans", "head-refine"]
"""Clustering method: ``"kmeans"`` is V1.5, ``"head-refine"`` is V2."""

Upsampling = Literal["nearest", "bilinear"]
"""Method that turns patch scores into pixel labels."""

Refinement = Literal["none", "slic"]
"""Pixel snapping applied after the labels are made."""

Blend = Literal["neighbour", "guided"]
"""Spatial blend of the V2 head refinement."""

FeatureDtype = Literal["float16", "float32"]
"""dtype of the Dask engine's feature store."""

Device = Literal["auto", "cpu", "cuda"]
"""Device of the backbone; ``"auto"`` picks CUDA when available."""

BACKBONE_NAMES = (
    "auto",
    "texture",
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vith16plus",
    "dinov3_vit7b16",
    "dinov3_vitl16_sat",
    "dinov3_vit7b16_sat",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
)
"""Backbone names accepted by ``--backbone`` (aliases live in the registry)."""
