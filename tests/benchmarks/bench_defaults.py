"""Measure the choices behind default settings on the shared labelled tiles.

Run with ``python -m pytest tests/benchmarks/bench_defaults.py -m benchmark -s``.
Prints, per backbone and image: K chosen by the elbow rule at several
thresholds with its mIoU and boundary F, and nearest versus bilinear
upsampling at the chosen K. Nothing is asserted beyond the run completing
with finite scores; the numbers feed docs/results/.
"""

from __future__ import annotations

import math

import pytest

from tree_seg.config import BackboneConfig, SegmentationConfig
from tree_seg.core.segmentation import extract_features, fit_clusters, run_segmentation
from tree_seg.evaluation.dataset import Pair, read_mask
from tree_seg.evaluation.metrics import score_image
from tree_seg.io.reader import open_raster
from tree_seg.models import load_backbone

PAIRS = [
    ("oam_tcd/tcd_00004_image.tif", "oam_tcd/tcd_00004_mask.tif", 0.5),
    ("denmark_crowns/dk41_image.tif", "denmark_crowns/dk41_mask.tif", 1.0),
]
THRESHOLDS = (0.05, 0.075, 0.10, 0.15)


def _backbones(dinov2_weights):
    return {
        "texture": BackboneConfig(name="texture"),
        "dinov2_vits14": BackboneConfig(name="dinov2_vits14", weights=dinov2_weights),
    }


@pytest.mark.benchmark
def test_bench_elbow_threshold_and_upsampling(shared_data, dinov2_weights):
    rows = []
    for backbone_name, backbone_config in _backbones(dinov2_weights).items():
        backbone = load_backbone(backbone_config)
        for image_name, mask_name, scale in PAIRS:
            base = SegmentationConfig(backbone=backbone_config).with_updates(
                {"window": {"scale": scale}, "cluster": {"k_min": 2, "k_max": 12}}
            )
            source = open_raster(shared_data / image_name, base.read)
            truth = read_mask(
                Pair(source.stem, shared_data / image_name, shared_data / mask_name),
                image_shape=(source.height, source.width), image_crs=source.crs, image_transform=source.transform,
            )
            grid = extract_features(source, base, backbone=backbone)
            for threshold in THRESHOLDS:
                config = base.with_updates({"cluster": {"elbow_threshold": threshold}})
                with _quiet():
                    model = fit_clusters(grid, config)
                for upsampling in ("nearest", "bilinear"):
                    run = run_segmentation(
                        source, config.with_updates({"labels": {"upsampling": upsampling}}), grid=grid, model=model
                    )
                    scores = score_image(run.labels, truth)
                    rows.append((backbone_name, source.stem, threshold, model.k, upsampling,
                                 scores.miou_many_to_one, scores.boundary_f))
    print("\nbackbone        image       threshold  K  upsampling  mIoU   boundary F")
    for row in rows:
        print(f"{row[0]:<15} {row[1]:<11} {row[2]:>9.3f} {row[3]:>2}  {row[4]:<10} {row[5]:.3f}  {row[6]:.3f}")
    assert all(math.isfinite(row[5]) for row in rows)


class _quiet:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
