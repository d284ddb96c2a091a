"""Write the files of one segmentation run: labels, metadata and pictures."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tree_seg.io.outputs import OutputManager
from tree_seg.io.writer import write_json_atomic, write_label_raster
from tree_seg.visualization.plots import plot_elbow, plot_legend, plot_overlay, plot_side_by_side

__all__ = ["method_label", "write_run_outputs"]

logger = logging.getLogger(__name__)


def method_label(method: str, refine: str) -> str:
    """Return the method part of output names, e.g. ``"kmeans"`` or ``"head-refine+slic"``."""
    return method if refine == "none" else f"{method}+{refine}"


def write_run_outputs(
    *,
    outdir: Path,
    stem: str,
    method: str,
    labels: np.ndarray,
    image: np.ndarray,
    k: int,
    crs: Any,
    transform: Any,
    metadata: dict[str, Any],
    pictures: bool = True,
) -> dict[str, Path]:
    """Write the label GeoTIFF, the metadata JSON and the PNGs of one run.

    The label raster and the JSON are written to temporary names and renamed,
    and the label raster is written last, so a finished-looking
    ``*_labels.tif`` never sits next to missing or partial companions.

    Parameters
    ----------
    outdir : Path
        Output folder, created when missing.
    stem : str
        Input file stem.
    method : str
        Method label from :func:`method_label`.
    labels : ndarray of shape (y, x), uint8
        Labels 0..K-1, 255 on nodata.
    image : ndarray of shape (band, y, x), float32 in [0, 1]
        The input image, for the pictures.
    k : int
        Number of clusters.
    crs, transform
        The input's ``rasterio`` CRS (or None) and ``affine.Affine`` transform.
    metadata : dict
        JSON-ready run record.
    pictures : bool, default=True
        Write the PNGs.

    Returns
    -------
    dict of str to Path
        Written files keyed by kind (``labels``, ``metadata``, ``legend``, ...).
    """
    outputs = OutputManager(outdir, stem, method)
    outputs.remove_existing()
    # A Dask run of the same input and method left its label store, whose
    # labels would disagree with this run's. The feature store stays: it is
    # a cache that a later Dask run with the same settings reuses.
    stale_store = outputs.path("labels", "zarr")
    if stale_store.is_dir():
        shutil.rmtree(stale_store)
        logger.info("removed the label store of an earlier Dask run: %s", stale_store.name)
    written: dict[str, Path] = {}
    title = f"{stem} - {method}, K={k}"

    if pictures:
        written["legend"] = plot_legend(labels, k, outputs.path("legend", "png"), title=title)
        written["overlay"] = plot_overlay(image, labels, outputs.path("overlay", "png"), title=title)
        written["side_by_side"] = plot_side_by_side(image, labels, k, outputs.path("side_by_side", "png"), title=title)
        elbow = metadata.get("elbow")
        if elbow:
            written["elbow"] = plot_elbow(
                elbow["ks"], elbow["inertias"], k, outputs.path("elbow", "png"),
                threshold=elbow["threshold"], title=f"{stem} - elbow",
            )

    written["metadata"] = outputs.path("metadata", "json")
    metadata = {**metadata, "outputs": {kind: str(path) for kind, path in written.items()}}
    metadata["outputs"]["labels"] = str(outputs.path("labels", "tif"))
    write_json_atomic(metadata, written["metadata"])

    written["labels"] = outputs.path("labels", "tif")
    write_label_raster(labels, written["labels"], crs=crs, transform=transform, nodata=255)
    logger.info("wrote %s", written["labels"])
    return written
