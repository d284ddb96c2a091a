"""Comparison pictures for evaluation: image, ground truth and each method."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tree_seg.core.labels import NODATA_LABEL
from tree_seg.visualization.plots import _as_uint8, _decimate, _rgb, _save, boundary_mask, label_colors

__all__ = ["plot_comparison"]

_IGNORE = 255


def _blend_labels(rgb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mix label colours half and half with the image, boundaries in yellow, nodata grey."""
    colours = label_colors(max(k, 1))
    out = rgb.copy()
    labelled = labels != NODATA_LABEL
    out[labelled] = 0.5 * rgb[labelled] + 0.5 * colours[labels[labelled] % len(colours)]
    out[~labelled] = 0.5 * rgb[~labelled] + 0.25
    out[boundary_mask(labels) & labelled] = (1.0, 1.0, 0.0)
    return out


def plot_comparison(
    image: np.ndarray,
    truth: np.ndarray,
    label_maps: dict[str, np.ndarray],
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Draw the image, the ground truth and each method's labels with boundaries.

    Parameters
    ----------
    image : ndarray of shape (band, y, x), float32 in [0, 1]
    truth : ndarray of shape (y, x), uint8
        Ground-truth classes, 255 where ignored.
    label_maps : dict of str to ndarray of shape (y, x), uint8
        Labels per method name, 255 on nodata.
    path : Path
        PNG file to write.
    title : str, optional

    Returns
    -------
    Path
    """
    rgb = _rgb(_decimate(image))
    truth_shown = _decimate(truth)
    n_classes = int(truth_shown[truth_shown != _IGNORE].max()) + 1 if (truth_shown != _IGNORE).any() else 1

    panels = [("image", rgb), ("ground truth", _blend_labels(rgb, truth_shown, n_classes))]
    for name, labels in label_maps.items():
        shown = _decimate(labels)
        k = int(shown[shown != NODATA_LABEL].max()) + 1 if (shown != NODATA_LABEL).any() else 1
        panels.append((name, _blend_labels(rgb, shown, k)))

    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    aspect = rgb.shape[0] / max(rgb.shape[1], 1)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 5 * rows * aspect + 0.6), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, (name, picture) in zip(axes.ravel(), panels, strict=False):
        axis.imshow(_as_uint8(picture), interpolation="nearest")
        axis.set_title(name)
    figure.suptitle(title)
    return _save(figure, path)
