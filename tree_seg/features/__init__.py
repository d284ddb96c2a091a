"""Window grid, resampling and windowed patch-feature extraction."""

from tree_seg.features.extract import extract_patch_features, patch_validity
from tree_seg.features.grid import WindowGrid
from tree_seg.features.resample import input_span, resample_image, resample_mask, resampled_shape

__all__ = [
    "WindowGrid",
    "extract_patch_features",
    "input_span",
    "patch_validity",
    "resample_image",
    "resample_mask",
    "resampled_shape",
]
