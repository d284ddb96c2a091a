"""Run several methods on a labelled dataset folder and score them.

Features are extracted once per image and backbone, and K-means is fitted
once per image. Every method variant (``kmeans``, ``head-refine``, each with
or without ``+slic``) starts from the same features and the same K-means fit,
so score differences come from the method alone.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tree_seg.config import SegmentationConfig
from tree_seg.core.profiling import RunProfile, peak_rss_mb, peak_vram_mb
from tree_seg.core.segmentation import extract_features, fit_clusters, run_segmentation
from tree_seg.core.versions import package_versions
from tree_seg.evaluation.dataset import load_dataset, read_mask
from tree_seg.evaluation.metrics import ImageScores, mean_scores, score_image
from tree_seg.exceptions import ConfigurationError
from tree_seg.io.reader import open_raster
from tree_seg.io.writer import write_json_atomic
from tree_seg.log_context import input_context
from tree_seg.models import load_backbone
from tree_seg.models.base import Backbone

__all__ = ["MethodVariant", "evaluate_dataset", "parse_variant"]

logger = logging.getLogger(__name__)

_METHODS = ("kmeans", "head-refine")


@dataclass(frozen=True)
class MethodVariant:
    """A method and its pixel snapping, named like ``"head-refine+slic"``."""

    method: str
    refine: str

    @property
    def name(self) -> str:
        """Name used in results and file names."""
        return self.method if self.refine == "none" else f"{self.method}+{self.refine}"


def parse_variant(name: str) -> MethodVariant:
    """Parse ``"kmeans"``, ``"head-refine"``, ``"kmeans+slic"`` or ``"head-refine+slic"``.

    Raises
    ------
    ConfigurationError
        For any other name.
    """
    method, _, refine = name.partition("+")
    if method not in _METHODS or refine not in ("", "slic"):
        raise ConfigurationError(
            f"unknown method {name!r}: use kmeans, head-refine, kmeans+slic or head-refine+slic"
        )
    return MethodVariant(method, refine or "none")


def _variant_config(config: SegmentationConfig, variant: MethodVariant) -> SegmentationConfig:
    return config.with_updates({"method": variant.method, "labels": {"refine": variant.refine}})


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _evaluate_image(
    pair: Any,
    config: SegmentationConfig,
    variants: list[MethodVariant],
    backbone: Backbone,
    n_classes: int | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Score every variant on one image; return records, label maps, image and truth."""
    source = open_raster(pair.image_path, config.read)
    truth = read_mask(pair, image_shape=(source.height, source.width), image_crs=source.crs,
                      image_transform=source.transform)

    shared = RunProfile(detailed=config.metrics)
    grid = extract_features(source, config, backbone=backbone, profile=shared)
    model = fit_clusters(grid, config, profile=shared)

    records: dict[str, dict[str, Any]] = {}
    label_maps: dict[str, np.ndarray] = {}
    for variant in variants:
        profile = RunProfile(detailed=config.metrics)
        profile.stages.update(shared.stages)
        run = run_segmentation(source, _variant_config(config, variant), grid=grid, model=model, profile=profile)
        scores: ImageScores = score_image(run.labels, truth, n_classes=n_classes)
        refinement = run.refinement
        records[variant.name] = {
            "image": pair.stem,
            "k": model.k,
            "scores": scores.to_dict(),
            "stage_seconds": dict(profile.stages),
            "total_seconds": profile.total_seconds,
            "fell_back": None if refinement is None else bool(refinement.fell_back),
            "iterations_run": None if refinement is None else int(refinement.iterations_run),
            "tau": None if refinement is None else float(refinement.tau),
        }
        label_maps[variant.name] = run.labels
        logger.info(
            "%s %s: mIoU %.3f, boundary F %.3f, K=%d",
            pair.stem, variant.name, scores.miou_many_to_one, scores.boundary_f, model.k,
        )
    return records, label_maps, grid.image, truth


def _summarise(
    variant: MethodVariant, config: SegmentationConfig, records: list[dict[str, Any]], scores: list[ImageScores]
) -> dict[str, Any]:
    means = mean_scores(scores)
    stages = sorted({stage for record in records for stage in record["stage_seconds"]})
    stage_seconds = {
        stage: float(np.mean([record["stage_seconds"].get(stage, 0.0) for record in records])) for stage in stages
    }
    return {
        "miou_many_to_one": means["miou_many_to_one"],
        "miou_hungarian": means["miou_hungarian"],
        "boundary_f": means["boundary_f"],
        "pixel_accuracy": means["pixel_accuracy"],
        "per_class_iou_many_to_one": means["per_class_iou_many_to_one"],
        "k": [record["k"] for record in records],
        "stage_seconds": stage_seconds,
        "total_seconds": float(np.mean([record["total_seconds"] for record in records])),
        "peak_rss_mb": peak_rss_mb(),
        "peak_vram_mb": peak_vram_mb(),
        "configuration": _variant_config(config, variant).to_dict(),
        "images": records,
    }


def _write_csv(path: Path, methods: dict[str, dict[str, Any]]) -> None:
    columns = ["method", "image", "k", "miou_many_to_one", "miou_hungarian", "boundary_f", "pixel_accuracy",
               "total_seconds"]
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for name, summary in methods.items():
            for record in summary["images"]:
                scores = record["scores"]
                writer.writerow([name, record["image"], record["k"], scores["miou_many_to_one"],
                                 scores["miou_hungarian"], scores["boundary_f"], scores["pixel_accuracy"],
                                 round(record["total_seconds"], 3)])
            writer.writerow([name, "mean", "", summary["miou_many_to_one"], summary["miou_hungarian"],
                             summary["boundary_f"], summary["pixel_accuracy"], round(summary["total_seconds"], 3)])
    os.replace(temporary, path)


def evaluate_dataset(
    dataset_dir: str | Path,
    outdir: str | Path,
    config: SegmentationConfig | None = None,
    *,
    methods: list[str] | None = None,
    backbone: Backbone | None = None,
    pictures: bool = True,
) -> dict[str, Any]:
    """Segment every image of a dataset folder with each method and score it.

    Parameters
    ----------
    dataset_dir : str or Path
        Folder with ``images/`` and ``masks/`` (see :func:`load_dataset`).
    outdir : str or Path
        Receives ``results.json``, ``results.csv`` and comparison pictures.
    config : SegmentationConfig, optional
        Shared settings; ``method`` and ``labels.refine`` come from each variant.
    methods : list of str, optional
        Variant names; default ``["kmeans", "head-refine", "kmeans+slic", "head-refine+slic"]``.
    backbone : Backbone, optional
        A loaded backbone (loaded from ``config.backbone`` otherwise).
    pictures : bool, default=True
        Write one comparison PNG per image.

    Returns
    -------
    dict
        The content of ``results.json``: ``methods`` keyed by variant name,
        each with dataset-mean ``miou_many_to_one``, ``miou_hungarian``,
        ``boundary_f``, ``pixel_accuracy``, per-image records, mean stage
        times in seconds, peak RSS and VRAM in MiB, K per image and the full
        configuration; plus ``dataset``, ``machine`` and ``versions``.
    """
    config = config or SegmentationConfig()
    variants = [parse_variant(name) for name in (methods or ["kmeans", "head-refine", "kmeans+slic", "head-refine+slic"])]
    dataset = load_dataset(dataset_dir)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    backbone = backbone or load_backbone(config.backbone)
    n_classes = len(dataset.class_names) if dataset.class_names else None

    records: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    scores: dict[str, list[ImageScores]] = {v.name: [] for v in variants}
    for pair in dataset.pairs:
        with input_context(pair.image_path.name):
            image_records, label_maps, image, truth = _evaluate_image(pair, config, variants, backbone, n_classes)
        for name, record in image_records.items():
            records[name].append(record)
            fields: dict[str, Any] = {
                key: tuple(value) if isinstance(value, list) else value for key, value in record["scores"].items()
            }
            scores[name].append(ImageScores(**fields))
        if pictures:
            from tree_seg.visualization.comparison import plot_comparison

            plot_comparison(image, truth, label_maps, outdir / f"{pair.stem}_comparison.png", title=pair.stem)

    methods_summary = {v.name: _summarise(v, config, records[v.name], scores[v.name]) for v in variants}
    results = {
        "methods": methods_summary,
        "dataset": {"root": str(dataset.root), "images": [p.stem for p in dataset.pairs],
                    "class_names": dataset.class_names},
        "backbone": backbone.info(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": package_versions(),
        "units": {"times": "seconds", "memory": "MiB"},
    }
    write_json_atomic(_finite_or_none(results), outdir / "results.json")
    _write_csv(outdir / "results.csv", methods_summary)
    return results
