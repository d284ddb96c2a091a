"""Sweep V2 head-refinement settings over one raster, reusing its features.

Features are extracted and K-means is fitted once; each (tau, alpha) pair then
runs only the refinement and the label stage, and the K-means labels of the
same fit give the V1.5 baseline.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tree_seg.config import SegmentationConfig
from tree_seg.core.segmentation import extract_features, fit_clusters, head_refine_metadata, run_segmentation
from tree_seg.evaluation.dataset import Pair, read_mask
from tree_seg.evaluation.metrics import score_image
from tree_seg.io.reader import open_raster
from tree_seg.io.writer import write_json_atomic
from tree_seg.models.base import Backbone

__all__ = ["SweepResult", "sweep_head_refine"]

logger = logging.getLogger(__name__)

_COLUMNS = ("method", "tau", "tau_used", "alpha", "k", "clusters_used", "iterations_run", "converged", "fell_back",
            "seconds", "miou_many_to_one", "boundary_f")


@dataclass(frozen=True)
class SweepResult:
    """Output of :func:`sweep_head_refine`.

    Attributes
    ----------
    rows : list of dict
        One row per distinct (tau, alpha) pair with the columns of
        ``sweep.csv``, whose first row is the V1.5 baseline.
    kmeans : dict
        The V1.5 baseline on the same features and K-means fit: ``k``,
        ``clusters_used``, ``seconds``, ``miou_many_to_one`` and
        ``boundary_f`` (None without a mask).
    """

    rows: list[dict[str, Any]]
    kmeans: dict[str, Any]


def sweep_head_refine(
    source_path: str | Path,
    outdir: str | Path,
    config: SegmentationConfig,
    *,
    taus: Sequence[float | str],
    alphas: Sequence[float],
    mask_path: str | Path | None = None,
    backbone: Backbone | None = None,
) -> SweepResult:
    """Run the V2 refinement for every (tau, alpha) pair on shared features.

    Parameters
    ----------
    source_path : str or Path
        The raster.
    outdir : str or Path
        Receives ``sweep.csv`` and ``sweep.json``.
    config : SegmentationConfig
        Base settings; the method is forced to ``"head-refine"``.
    taus : sequence of float or "auto"
        Temperatures to try; a repeated value runs once.
    alphas : sequence of float
        Blend weights to try, each in [0, 1]; a repeated value runs once.
    mask_path : str or Path, optional
        Ground-truth mask on the raster's grid (1 = tree, 0 = other, 255 =
        ignore); adds ``miou_many_to_one`` and ``boundary_f`` to each row.
    backbone : Backbone, optional
        A loaded backbone.

    Returns
    -------
    SweepResult
        One row per pair, and the K-means baseline; times in seconds.
        ``converged`` is None in rows that ran no M-step.
    """
    base = config.with_updates({"method": "head-refine"})
    taus, alphas = list(dict.fromkeys(taus)), list(dict.fromkeys(alphas))
    source = open_raster(source_path, base.read)
    grid = extract_features(source, base, backbone=backbone)
    model = fit_clusters(grid, base)
    truth = None
    if mask_path is not None:
        pair = Pair(stem=source.stem, image_path=Path(source_path), mask_path=Path(mask_path))
        truth = read_mask(pair, image_shape=(source.height, source.width), image_crs=source.crs,
                          image_transform=source.transform)

    def scores(labels: np.ndarray) -> dict[str, float | None]:
        if truth is None:
            return {"miou_many_to_one": None, "boundary_f": None}
        image_scores = score_image(labels, truth)
        return {"miou_many_to_one": image_scores.miou_many_to_one, "boundary_f": image_scores.boundary_f}

    baseline = run_segmentation(source, base.with_updates({"method": "kmeans"}), grid=grid, model=model)
    kmeans = {"k": model.k, "clusters_used": baseline.clusters_used,
              "seconds": round(baseline.profile.total_seconds, 3), **scores(baseline.labels)}
    logger.info("kmeans baseline: %s", kmeans)

    rows: list[dict[str, Any]] = []
    for tau, alpha in itertools.product(taus, alphas):
        settings = base.with_updates({"head_refine": {"tau": tau, "alpha": alpha}})
        run = run_segmentation(source, settings, grid=grid, model=model)
        assert run.refinement is not None
        record = head_refine_metadata(run.refinement, settings)
        row: dict[str, Any] = {
            "method": "head-refine",
            "tau": tau,
            "tau_used": record["tau"],
            "alpha": alpha,
            "k": model.k,
            "clusters_used": run.clusters_used,
            "iterations_run": record["iterations_run"],
            "converged": record["converged"],
            "fell_back": record["fell_back"],
            "seconds": round(run.profile.total_seconds, 3),
            **scores(run.labels),
        }
        logger.info("tau=%s alpha=%s: %s", tau, alpha, row)
        rows.append(row)

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    temporary = outdir / ".sweep.csv.tmp"
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_COLUMNS), restval="")
        writer.writeheader()
        writer.writerow({"method": "kmeans", **kmeans})
        writer.writerows(rows)
    os.replace(temporary, outdir / "sweep.csv")
    write_json_atomic({"source": str(source_path), "k": model.k, "kmeans": kmeans, "rows": rows,
                       "configuration": base.to_dict()}, outdir / "sweep.json")
    return SweepResult(rows=rows, kmeans=kmeans)
