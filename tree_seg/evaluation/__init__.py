"""Evaluation of segmentations against labelled masks: metrics and dataset folders."""

from tree_seg.evaluation.dataset import Dataset, Pair, load_dataset, read_mask
from tree_seg.evaluation.metrics import (
    ImageScores,
    boundary_f,
    confusion_matrix,
    hungarian,
    many_to_one,
    mean_scores,
    miou,
    pixel_accuracy,
    score_image,
)

__all__ = [
    "Dataset",
    "ImageScores",
    "Pair",
    "boundary_f",
    "confusion_matrix",
    "hungarian",
    "load_dataset",
    "many_to_one",
    "mean_scores",
    "miou",
    "pixel_accuracy",
    "read_mask",
    "score_image",
]
