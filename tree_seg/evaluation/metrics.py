"""Scores of an unsupervised segmentation against a labelled mask.

A prediction has K clusters with no class meaning, so every score first maps
clusters to the C ground-truth classes, in one of two ways:

- many-to-one: each cluster takes the class it overlaps most, so several
  clusters can share a class;
- Hungarian: a one-to-one matching that maximises the total overlap. Clusters
  left without a class count as errors, never as some class.

Pixel labels are integers with 255 (or any negative value) as nodata. Ground
truth uses ``ignore`` (255 by default) for unlabelled pixels. Pixels that are
nodata, ignored or outside ``valid`` are left out of every score.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.optimize import linear_sum_assignment

from tree_seg.exceptions import InvalidInputError

__all__ = [
    "ImageScores",
    "boundary_f",
    "confusion_matrix",
    "hungarian",
    "many_to_one",
    "mean_scores",
    "miou",
    "pixel_accuracy",
    "score_image",
]

logger = logging.getLogger(__name__)

LABEL_NODATA = 255
"""Pixel-label value of nodata pixels, as written in label GeoTIFFs."""


def _check_label_arrays(
    pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None, *, pred_name: str
) -> None:
    if pred.ndim != 2:
        raise InvalidInputError(f"{pred_name} has shape {pred.shape}; expected a 2-D (y, x) array")
    if truth.shape != pred.shape:
        raise InvalidInputError(
            f"truth has shape {truth.shape} but {pred_name} has {pred.shape}; "
            "resample the mask onto the image grid first"
        )
    if valid is not None and valid.shape != pred.shape:
        raise InvalidInputError(f"valid has shape {valid.shape} but {pred_name} has {pred.shape}")
    for name, array in ((pred_name, pred), ("truth", truth)):
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidInputError(f"{name} has dtype {array.dtype}; expected an integer dtype")


def _scored_pixels(
    pred: np.ndarray, truth: np.ndarray, *, ignore: int, valid: np.ndarray | None
) -> np.ndarray:
    scored = (truth != ignore) & (pred != LABEL_NODATA) & (pred >= 0)
    if valid is not None:
        scored &= valid
    return scored


def confusion_matrix(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    n_clusters: int,
    n_classes: int,
    ignore: int = 255,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Count the scored pixels of each (cluster, class) pair.

    Parameters
    ----------
    pred : ndarray of shape (H, W), integer dtype
        Cluster labels in 0..n_clusters-1. The value 255 and negative values
        are nodata.
    truth : ndarray of shape (H, W), integer dtype
        Class labels in 0..n_classes-1, ``ignore`` where unlabelled.
    n_clusters : int
        Number of rows of the result.
    n_classes : int
        Number of columns of the result.
    ignore : int, default=255
        Ground-truth value of unlabelled pixels.
    valid : ndarray of shape (H, W), bool, optional
        False where a pixel must not be scored. None scores every pixel.

    Returns
    -------
    ndarray of shape (n_clusters, n_classes), int64
        Entry (k, c) is the number of scored pixels with cluster k and class c.

    Raises
    ------
    InvalidInputError
        If shapes differ, a dtype is not integer, or a scored pixel has a label
        outside the given ranges.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    valid = None if valid is None else np.asarray(valid, dtype=bool)
    _check_label_arrays(pred, truth, valid, pred_name="pred")
    if n_clusters < 0 or n_classes < 0:
        raise InvalidInputError(
            f"n_clusters={n_clusters} and n_classes={n_classes} must both be >= 0"
        )

    scored = _scored_pixels(pred, truth, ignore=ignore, valid=valid)
    clusters = pred[scored].astype(np.int64)
    classes = truth[scored].astype(np.int64)

    if clusters.size and clusters.max() >= n_clusters:
        raise InvalidInputError(
            f"pred contains cluster {clusters.max()} but n_clusters={n_clusters}; "
            "pass a larger n_clusters"
        )
    if classes.size and (classes.min() < 0 or classes.max() >= n_classes):
        bad = classes.max() if classes.max() >= n_classes else classes.min()
        raise InvalidInputError(
            f"truth contains class {bad} outside 0..{n_classes - 1}; "
            f"pass a larger n_classes or set ignore (now {ignore}) to that value"
        )

    counts = np.bincount(clusters * n_classes + classes, minlength=n_clusters * n_classes)
    return counts.astype(np.int64).reshape(n_clusters, n_classes)


def _check_confusion(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2:
        raise InvalidInputError(
            f"confusion matrix has shape {conf.shape}; expected (n_clusters, n_classes)"
        )
    return conf


def many_to_one(conf: np.ndarray) -> np.ndarray:
    """Map each cluster to the class it overlaps most.

    Parameters
    ----------
    conf : ndarray of shape (n_clusters, n_classes), integer
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    ndarray of shape (n_clusters,), int64
        Class of each cluster. A tie goes to the lowest class index. A cluster
        with no scored pixel maps to -1, and then it counts in no class.
    """
    conf = _check_confusion(conf)
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    if conf.shape[1] == 0:
        return mapping

    non_empty = conf.sum(axis=1) > 0
    mapping[non_empty] = np.argmax(conf[non_empty], axis=1)
    return mapping


def hungarian(conf: np.ndarray) -> np.ndarray:
    """Match clusters to classes one-to-one, maximising the total overlap.

    Uses :func:`scipy.optimize.linear_sum_assignment`. A pair that the
    assignment makes with zero overlap is dropped. So the result does not
    depend on how the solver breaks ties between such pairs, and a class
    absent from the ground truth never receives a cluster.

    Parameters
    ----------
    conf : ndarray of shape (n_clusters, n_classes), integer
        Confusion matrix from :func:`confusion_matrix`.

    Returns
    -------
    ndarray of shape (n_clusters,), int64
        Class of each cluster, or -1 for a cluster left unmatched. When
        n_clusters > n_classes at least n_clusters - n_classes clusters are
        unmatched. Their pixels count as errors in :func:`miou` and
        :func:`pixel_accuracy`.
    """
    conf = _check_confusion(conf)
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    if conf.size == 0:
        return mapping

    rows, cols = linear_sum_assignment(conf, maximize=True)
    overlapping = conf[rows, cols] > 0
    mapping[rows[overlapping]] = cols[overlapping]
    return mapping


def _check_mapping(conf: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = _check_confusion(conf)
    mapping = np.asarray(mapping, dtype=np.int64)
    n_clusters, n_classes = conf.shape
    if mapping.shape != (n_clusters,):
        raise InvalidInputError(
            f"mapping has shape {mapping.shape}; expected ({n_clusters},), one class per cluster"
        )
    if mapping.size and (mapping.min() < -1 or mapping.max() >= n_classes):
        raise InvalidInputError(
            f"mapping contains values outside -1..{n_classes - 1}: {mapping.tolist()}"
        )
    return conf, mapping


def _nanmean(values: np.ndarray | Sequence[float]) -> float:
    """Average the non-NaN values, returning NaN without a RuntimeWarning when there are none."""
    values = np.asarray(values, dtype=np.float64)
    finite = ~np.isnan(values)
    if not finite.any():
        return math.nan
    return float(values[finite].mean())


def miou(conf: np.ndarray, mapping: np.ndarray) -> tuple[float, np.ndarray]:
    """Compute the mean intersection over union after mapping clusters to classes.

    For class c, the intersection is the number of pixels of class c in
    clusters mapped to c. The union adds the pixels of clusters mapped to c and
    all pixels of class c, including those in unmatched (-1) clusters. So an
    unmatched cluster's pixels are false negatives of their true class and
    false positives of no class.

    Parameters
    ----------
    conf : ndarray of shape (n_clusters, n_classes), integer
        Confusion matrix from :func:`confusion_matrix`.
    mapping : ndarray of shape (n_clusters,), integer
        Class of each cluster, -1 for none, as returned by :func:`many_to_one`
        or :func:`hungarian`.

    Returns
    -------
    miou : float
        Mean of the per-class IoU over classes that are not NaN, or NaN when
        every class is NaN (an image with no scored pixel).
    per_class_iou : ndarray of shape (n_classes,), float64
        IoU in [0, 1] per class. NaN for a class absent from both the mapped
        prediction and the ground truth, so that it does not count as 0.
    """
    conf, mapping = _check_mapping(conf, mapping)
    n_classes = conf.shape[1]

    matched = mapping >= 0
    class_conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(class_conf, mapping[matched], conf[matched])

    intersection = np.diag(class_conf)
    predicted = class_conf.sum(axis=1)
    actual = conf.sum(axis=0)
    union = predicted + actual - intersection

    per_class_iou = np.full(n_classes, np.nan)
    present = union > 0
    per_class_iou[present] = intersection[present] / union[present]
    return _nanmean(per_class_iou), per_class_iou


def pixel_accuracy(conf: np.ndarray, mapping: np.ndarray) -> float:
    """Compute the fraction of scored pixels whose cluster maps to their class.

    Parameters
    ----------
    conf : ndarray of shape (n_clusters, n_classes), integer
        Confusion matrix from :func:`confusion_matrix`.
    mapping : ndarray of shape (n_clusters,), integer
        Class of each cluster, -1 for none. Pixels of unmatched clusters are
        wrong.

    Returns
    -------
    float
        Accuracy in [0, 1], or NaN when no pixel is scored.
    """
    conf, mapping = _check_mapping(conf, mapping)
    total = int(conf.sum())
    if total == 0:
        return math.nan

    matched = np.flatnonzero(mapping >= 0)
    correct = int(conf[matched, mapping[matched]].sum())
    return correct / total


def _boundary_pixels(classes: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Mark both pixels of each pair of scored 4-neighbours whose classes differ."""
    boundary = np.zeros(classes.shape, dtype=bool)
    across_columns = (classes[:, :-1] != classes[:, 1:]) & scored[:, :-1] & scored[:, 1:]
    across_rows = (classes[:-1, :] != classes[1:, :]) & scored[:-1, :] & scored[1:, :]
    boundary[:, :-1] |= across_columns
    boundary[:, 1:] |= across_columns
    boundary[:-1, :] |= across_rows
    boundary[1:, :] |= across_rows
    return boundary


def _matched_fraction(source: np.ndarray, target: np.ndarray, tolerance: float) -> float:
    """Return the fraction of ``source`` pixels within ``tolerance`` pixels of a ``target`` pixel."""
    distance_to_target = distance_transform_edt(~target)
    n_matched = np.count_nonzero(distance_to_target[source] <= tolerance)
    return float(n_matched / np.count_nonzero(source))


def boundary_f(
    pred_classes: np.ndarray,
    truth: np.ndarray,
    *,
    tolerance: float = 2,
    ignore: int = 255,
    valid: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Compute the boundary F-score of a class map against the ground truth.

    Boundary pixels are those with a 4-neighbour of another class, so both
    sides of an edge count and a boundary is two pixels thick: an edge shifted
    by ``tolerance + 1`` pixels still matches half of its pixels. Pairs with
    an ignored, nodata or invalid pixel are not boundaries in either map.

    A predicted boundary pixel is matched when a ground-truth boundary pixel
    lies within ``tolerance`` pixels (inclusive, Euclidean distance from
    :func:`scipy.ndimage.distance_transform_edt`), and the other way round.

    Parameters
    ----------
    pred_classes : ndarray of shape (H, W), integer dtype
        Predicted classes after the many-to-one mapping, so that two clusters
        of the same class have no boundary between them. 255 and negative
        values are nodata.
    truth : ndarray of shape (H, W), integer dtype
        Ground-truth classes, ``ignore`` where unlabelled.
    tolerance : float, default=2
        Matching distance in pixels, >= 0.
    ignore : int, default=255
        Ground-truth value of unlabelled pixels.
    valid : ndarray of shape (H, W), bool, optional
        False where a pixel must not be scored.

    Returns
    -------
    f : float
        2PR / (P + R) in [0, 1]. NaN when neither map has a boundary pixel,
        so the image drops out of dataset means. 0 when exactly one map has
        boundary pixels, or when no boundary pixel is matched.
    precision : float
        Fraction of predicted boundary pixels that are matched, NaN when the
        prediction has no boundary pixel.
    recall : float
        Fraction of ground-truth boundary pixels that are matched, NaN when
        the ground truth has no boundary pixel.
    """
    pred_classes = np.asarray(pred_classes)
    truth = np.asarray(truth)
    valid = None if valid is None else np.asarray(valid, dtype=bool)
    _check_label_arrays(pred_classes, truth, valid, pred_name="pred_classes")
    if not tolerance >= 0:
        raise InvalidInputError(f"tolerance={tolerance} is invalid; expected a distance >= 0 pixels")

    scored = _scored_pixels(pred_classes, truth, ignore=ignore, valid=valid)
    pred_boundary = _boundary_pixels(pred_classes, scored)
    truth_boundary = _boundary_pixels(truth, scored)
    has_pred = bool(pred_boundary.any())
    has_truth = bool(truth_boundary.any())

    if not has_pred and not has_truth:
        return math.nan, math.nan, math.nan
    if not has_pred:
        return 0.0, math.nan, 0.0
    if not has_truth:
        return 0.0, 0.0, math.nan

    precision = _matched_fraction(pred_boundary, truth_boundary, tolerance)
    recall = _matched_fraction(truth_boundary, pred_boundary, tolerance)
    if precision + recall == 0:
        return 0.0, precision, recall
    return float(2 * precision * recall / (precision + recall)), precision, recall


@dataclass(frozen=True, kw_only=True)
class ImageScores:
    """Scores of one image, with NaN for a score that is undefined for it.

    Per-class tuples have one entry per class (``n_classes``), and mapping
    tuples have one class per cluster label 0..max label (-1 for none).
    """

    miou_many_to_one: float
    miou_hungarian: float
    per_class_iou_many_to_one: tuple[float, ...]
    per_class_iou_hungarian: tuple[float, ...]
    pixel_accuracy: float
    pixel_accuracy_hungarian: float
    boundary_f: float
    boundary_precision: float
    boundary_recall: float
    n_clusters: int
    n_classes: int
    mapping_many_to_one: tuple[int, ...]
    mapping_hungarian: tuple[int, ...]
    n_pixels: int

    def to_dict(self) -> dict[str, Any]:
        """Convert to plain Python types, with tuples as lists and NaN kept as ``float('nan')``."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }


def _infer_n_classes(truth: np.ndarray, ignore: int) -> int:
    labelled = truth[truth != ignore]
    return int(labelled.max()) + 1 if labelled.size else 0


def score_image(
    labels: np.ndarray,
    truth: np.ndarray,
    *,
    n_classes: int | None = None,
    ignore: int = 255,
    tolerance: float = 2,
) -> ImageScores:
    """Score the pixel labels of one image against its ground-truth mask.

    Parameters
    ----------
    labels : ndarray of shape (H, W), uint8
        Cluster labels 0..K-1, 255 for nodata.
    truth : ndarray of shape (H, W), integer dtype
        Class labels, ``ignore`` where unlabelled, on the grid of ``labels``.
    n_classes : int, optional
        Number of classes. None takes the largest labelled value + 1 in this
        image, so pass it whenever per-class results of several images are
        compared or averaged.
    ignore : int, default=255
        Ground-truth value of unlabelled pixels.
    tolerance : float, default=2
        Boundary matching distance in pixels, see :func:`boundary_f`.

    Returns
    -------
    ImageScores
        ``n_clusters`` counts the distinct labels of non-nodata pixels, scored
        or not. Pixel accuracy and boundary F use the many-to-one mapping,
        except ``pixel_accuracy_hungarian``. An image with no scored pixel
        gets NaN scores and ``n_pixels=0``.
    """
    labels = np.asarray(labels)
    truth = np.asarray(truth)
    _check_label_arrays(labels, truth, None, pred_name="labels")

    if n_classes is None:
        n_classes = _infer_n_classes(truth, ignore)
    has_label = (labels != LABEL_NODATA) & (labels >= 0)
    present_labels = np.unique(labels[has_label])
    n_label_values = int(present_labels.max()) + 1 if present_labels.size else 0

    conf = confusion_matrix(labels, truth, n_clusters=n_label_values, n_classes=n_classes, ignore=ignore)
    mapping_m2o = many_to_one(conf)
    mapping_hungarian = hungarian(conf)
    miou_m2o, iou_m2o = miou(conf, mapping_m2o)
    miou_hungarian, iou_hungarian = miou(conf, mapping_hungarian)

    # Clusters with no scored pixel map to -1 and become nodata here as well.
    class_map = np.full(labels.shape, -1, dtype=np.int64)
    class_map[has_label] = mapping_m2o[labels[has_label].astype(np.int64)]
    f, precision, recall = boundary_f(class_map, truth, tolerance=tolerance, ignore=ignore)

    scores = ImageScores(
        miou_many_to_one=miou_m2o,
        miou_hungarian=miou_hungarian,
        per_class_iou_many_to_one=tuple(float(v) for v in iou_m2o),
        per_class_iou_hungarian=tuple(float(v) for v in iou_hungarian),
        pixel_accuracy=pixel_accuracy(conf, mapping_m2o),
        pixel_accuracy_hungarian=pixel_accuracy(conf, mapping_hungarian),
        boundary_f=f,
        boundary_precision=precision,
        boundary_recall=recall,
        n_clusters=int(present_labels.size),
        n_classes=n_classes,
        mapping_many_to_one=tuple(int(v) for v in mapping_m2o),
        mapping_hungarian=tuple(int(v) for v in mapping_hungarian),
        n_pixels=int(conf.sum()),
    )
    logger.debug(
        "scored %d pixels: mIoU many-to-one %.4f, Hungarian %.4f, boundary F %.4f",
        scores.n_pixels,
        miou_m2o,
        miou_hungarian,
        f,
    )
    return scores


_MEAN_FIELDS = (
    "miou_many_to_one",
    "miou_hungarian",
    "pixel_accuracy",
    "pixel_accuracy_hungarian",
    "boundary_f",
    "boundary_precision",
    "boundary_recall",
    "n_clusters",
)


def _mean_per_class(rows: Sequence[tuple[float, ...]]) -> list[float]:
    """Average each class over the rows, skipping NaN, after padding shorter rows with NaN."""
    n_classes = max((len(row) for row in rows), default=0)
    table = np.full((len(rows), n_classes), np.nan)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return [_nanmean(table[:, c]) for c in range(n_classes)]


def mean_scores(scores: Sequence[ImageScores]) -> dict[str, Any]:
    """Average image scores into dataset scores.

    Each score is the mean over the images where it is not NaN, so an image
    with no scored pixel, or with no boundary in either map, drops out of that
    score instead of counting as 0.

    Parameters
    ----------
    scores : sequence of ImageScores
        One entry per image.

    Returns
    -------
    dict
        The score fields of :class:`ImageScores` as float means, NaN where no
        image defines them, and ``n_clusters`` averaged over all images.
        ``per_class_iou_many_to_one`` and ``per_class_iou_hungarian`` are lists
        of per-class means. ``n_images`` counts all images, ``n_images_scored``
        the images with at least one scored pixel, and ``n_pixels`` is the
        total number of scored pixels.
    """
    result: dict[str, Any] = {
        name: _nanmean([getattr(image, name) for image in scores]) for name in _MEAN_FIELDS
    }
    result["per_class_iou_many_to_one"] = _mean_per_class(
        [image.per_class_iou_many_to_one for image in scores]
    )
    result["per_class_iou_hungarian"] = _mean_per_class(
        [image.per_class_iou_hungarian for image in scores]
    )
    result["n_images"] = len(scores)
    result["n_images_scored"] = sum(1 for image in scores if image.n_pixels > 0)
    result["n_pixels"] = sum(image.n_pixels for image in scores)
    return result
