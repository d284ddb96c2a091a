"""PNG pictures of a segmentation for people: legend, overlay, side by side, elbow.

Large rasters are shown decimated to at most :data:`MAX_SIDE` pixels per side;
the pictures are for looking at, the label GeoTIFF is the result.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tree_seg.core.labels import NODATA_LABEL  # noqa: E402

__all__ = [
    "MAX_SIDE",
    "boundary_mask",
    "label_colors",
    "plot_elbow",
    "plot_legend",
    "plot_overlay",
    "plot_side_by_side",
]

logger = logging.getLogger(__name__)

MAX_SIDE = 1024
"""Largest side, in pixels, of an image drawn in a picture: about the width
of a panel at the pictures' 150 dpi, and the side of the Dask engine's
picture sample."""


def label_colors(k: int) -> np.ndarray:
    """Return K distinct RGB colours, float in [0, 1], shape (K, 3)."""
    base = plt.get_cmap("tab20" if k > 10 else "tab10")
    return np.asarray([base(i % base.N)[:3] for i in range(k)], dtype=np.float64)


def _decimate(array: np.ndarray) -> np.ndarray:
    """Keep every n-th pixel of the last two axes so no side exceeds MAX_SIDE."""
    step = max(1, int(np.ceil(max(array.shape[-2:]) / MAX_SIDE)))
    return array[..., ::step, ::step]


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    """Return a float RGB image in [0, 1] as uint8, which matplotlib resamples faster than float64."""
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    """Return a (y, x, 3) float image in [0, 1] from a (band, y, x) image."""
    bands = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    return np.clip(np.moveaxis(bands, 0, -1), 0.0, 1.0)


def _colour_labels(labels: np.ndarray, k: int) -> np.ndarray:
    colours = np.vstack([label_colors(k), np.ones((NODATA_LABEL + 1 - k, 3))])
    return colours[labels]


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Return True on pixels with a 4-neighbour of another label, shape (y, x)."""
    edges = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def _save(figure: Figure, path: Path) -> Path:
    """Write the figure to a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".png", prefix=f".{path.stem}-", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=150, bbox_inches="tight")
        # mkstemp creates the file readable by its owner only; give it the
        # permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
    logger.debug("wrote %s", path)
    return path


def _legend_handles(k: int, present: np.ndarray) -> list[Patch]:
    """Return legend entries for the labels in ``present`` only."""
    colours = label_colors(k)
    handles = [Patch(color=colours[i], label=f"cluster {i}") for i in range(k) if i in present]
    if NODATA_LABEL in present:
        handles.append(Patch(facecolor="white", edgecolor="grey", label=f"nodata ({NODATA_LABEL})"))
    return handles


def plot_legend(labels: np.ndarray, k: int, path: Path, *, title: str = "") -> Path:
    """Draw the label map in K colours with a legend; write it as a PNG.

    Parameters
    ----------
    labels : ndarray of shape (y, x), uint8
        Labels 0..K-1 and 255 on nodata.
    k : int
        Number of clusters.
    path : Path
        PNG file to write.
    title : str, optional
        Figure title.
    """
    shown = _decimate(labels)
    figure, axis = plt.subplots(figsize=(8, 8 * shown.shape[0] / max(shown.shape[1], 1) + 0.5))
    axis.imshow(_as_uint8(_colour_labels(shown, k)), interpolation="nearest")
    axis.set_axis_off()
    axis.set_title(title)
    handles = _legend_handles(k, np.unique(labels))
    axis.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(figure, path)


def plot_overlay(image: np.ndarray, labels: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Draw label boundaries in yellow over the image; write it as a PNG.

    Parameters
    ----------
    image : ndarray of shape (band, y, x), float32 in [0, 1]
    labels : ndarray of shape (y, x), uint8
    path : Path
    title : str, optional
    """
    rgb = _rgb(_decimate(image)).copy()
    edges = boundary_mask(_decimate(labels))
    rgb[edges] = (1.0, 1.0, 0.0)
    figure, axis = plt.subplots(figsize=(8, 8 * rgb.shape[0] / max(rgb.shape[1], 1)))
    axis.imshow(_as_uint8(rgb), interpolation="nearest")
    axis.set_axis_off()
    axis.set_title(title)
    return _save(figure, path)


def plot_side_by_side(
    image: np.ndarray, labels: np.ndarray, k: int, path: Path, *, title: str = ""
) -> Path:
    """Draw the image and the coloured labels next to each other; write a PNG."""
    rgb = _rgb(_decimate(image))
    coloured = _colour_labels(_decimate(labels), k)
    figure, axes = plt.subplots(1, 2, figsize=(14, 7 * rgb.shape[0] / max(rgb.shape[1], 1) + 0.5))
    axes[0].imshow(_as_uint8(rgb), interpolation="nearest")
    axes[0].set_title("image")
    axes[1].imshow(_as_uint8(coloured), interpolation="nearest")
    axes[1].set_title(f"labels, K={k}")
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(title)
    return _save(figure, path)


def plot_elbow(
    ks: Sequence[int],
    inertias: Sequence[float],
    chosen_k: int,
    path: Path,
    *,
    threshold: float,
    title: str = "",
) -> Path:
    """Draw the inertia curve and the relative drops with the chosen K; write a PNG.

    Parameters
    ----------
    ks : sequence of int
        K values of the range, ascending.
    inertias : sequence of float
        K-means inertia for each K (sum of squared distances, feature units squared).
    chosen_k : int
        K picked by the elbow rule.
    path : Path
    threshold : float
        Relative drop threshold as a fraction.
    title : str, optional
    """
    ks = list(ks)
    values = np.asarray(inertias, dtype=np.float64)
    drops = np.full(len(ks), np.nan)
    drops[1:] = (values[:-1] - values[1:]) / np.where(values[:-1] > 0, values[:-1], np.nan)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(ks, values, marker="o")
    left.axvline(chosen_k, color="tab:red", linestyle="--", label=f"chosen K = {chosen_k}")
    left.set_xlabel("K")
    left.set_ylabel("inertia")
    left.legend()
    right.bar(ks, 100 * drops, color="tab:blue")
    right.axhline(100 * threshold, color="tab:red", linestyle="--", label=f"threshold {100 * threshold:g}%")
    right.set_xlabel("K")
    right.set_ylabel("relative inertia drop from K-1 (%)")
    right.legend()
    figure.suptitle(title)
    return _save(figure, path)
