"""Tests of tree_seg.evaluation.metrics on small hand-computed label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
from tree_seg.exceptions import InvalidInputError

# Clusters 0 and 1 cover class 0 (cluster 1 with a single pixel), and cluster 2 covers class 1.
K_GREATER_TRUTH = np.array([[0, 0, 0, 1], [0, 0, 1, 1]], dtype=np.uint8)
K_GREATER_PRED = np.array([[0, 0, 1, 2], [0, 0, 2, 2]], dtype=np.uint8)


def _two_region_map(height: int, width: int, first_column_of_class_1: int) -> np.ndarray:
    classes = np.zeros((height, width), dtype=np.uint8)
    classes[:, first_column_of_class_1:] = 1
    return classes


def test_confusion_matrix_counts_pairs() -> None:
    conf = confusion_matrix(K_GREATER_PRED, K_GREATER_TRUTH, n_clusters=3, n_classes=2)

    np.testing.assert_array_equal(conf, [[4, 0], [1, 0], [0, 3]])
    assert conf.dtype == np.int64


def test_confusion_matrix_excludes_ignore_nodata_invalid() -> None:
    pred = np.array([[0, 1, 255, 1]], dtype=np.uint8)
    truth = np.array([[255, 1, 0, 0]], dtype=np.uint8)
    valid = np.array([[True, True, True, False]])

    conf = confusion_matrix(pred, truth, n_clusters=2, n_classes=2, valid=valid)

    np.testing.assert_array_equal(conf, [[0, 0], [0, 1]])


def test_confusion_matrix_rejects_class_out_of_range() -> None:
    pred = np.zeros((1, 2), dtype=np.uint8)
    truth = np.array([[0, 2]], dtype=np.uint8)

    with pytest.raises(InvalidInputError, match="truth contains class 2 outside 0..1"):
        confusion_matrix(pred, truth, n_clusters=1, n_classes=2)


def test_confusion_matrix_rejects_cluster_out_of_range() -> None:
    pred = np.array([[0, 3]], dtype=np.uint8)
    truth = np.zeros((1, 2), dtype=np.uint8)

    with pytest.raises(InvalidInputError, match="pred contains cluster 3 but n_clusters=2"):
        confusion_matrix(pred, truth, n_clusters=2, n_classes=1)


def test_confusion_matrix_rejects_shape_mismatch() -> None:
    with pytest.raises(InvalidInputError, match=r"truth has shape \(1, 3\) but pred has \(1, 2\)"):
        confusion_matrix(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8), n_clusters=1, n_classes=1)


def test_many_to_one_empty_cluster_unmapped() -> None:
    conf = np.array([[5, 1], [0, 0], [2, 7]])

    np.testing.assert_array_equal(many_to_one(conf), [0, -1, 1])


def test_many_to_one_tie_takes_lowest_class() -> None:
    np.testing.assert_array_equal(many_to_one(np.array([[3, 3]])), [0])


def test_scores_k_greater_than_c() -> None:
    conf = confusion_matrix(K_GREATER_PRED, K_GREATER_TRUTH, n_clusters=3, n_classes=2)

    mapping_m2o = many_to_one(conf)
    mapping_hungarian = hungarian(conf)
    miou_m2o, iou_m2o = miou(conf, mapping_m2o)
    miou_hungarian, iou_hungarian = miou(conf, mapping_hungarian)

    np.testing.assert_array_equal(mapping_m2o, [0, 0, 1])
    assert miou_m2o == 1.0
    np.testing.assert_array_equal(iou_m2o, [1.0, 1.0])
    assert pixel_accuracy(conf, mapping_m2o) == 1.0
    # Cluster 1 is unmatched: its pixel is a false negative of class 0, so IoU_0 = 4 / 5.
    np.testing.assert_array_equal(mapping_hungarian, [0, -1, 1])
    np.testing.assert_allclose(iou_hungarian, [0.8, 1.0])
    assert miou_hungarian == pytest.approx(0.9)
    assert pixel_accuracy(conf, mapping_hungarian) == 7 / 8


def test_scores_k_less_than_c() -> None:
    truth = np.array([[0, 0, 1, 1, 1, 2]], dtype=np.uint8)
    pred = np.array([[0, 0, 1, 1, 1, 1]], dtype=np.uint8)
    conf = confusion_matrix(pred, truth, n_clusters=2, n_classes=3)

    for mapping in (many_to_one(conf), hungarian(conf)):
        value, per_class = miou(conf, mapping)

        np.testing.assert_array_equal(mapping, [0, 1])
        # Class 2 is in the truth but no cluster predicts it, so its IoU is 0, not NaN.
        np.testing.assert_allclose(per_class, [1.0, 0.75, 0.0])
        assert value == pytest.approx(7 / 12)
        assert pixel_accuracy(conf, mapping) == 5 / 6


def test_scores_k_equal_c_permutation() -> None:
    truth = np.array([[0, 1, 2], [0, 1, 2]], dtype=np.uint8)
    pred = np.array([[2, 0, 1], [2, 0, 1]], dtype=np.uint8)
    conf = confusion_matrix(pred, truth, n_clusters=3, n_classes=3)

    mapping_m2o = many_to_one(conf)
    mapping_hungarian = hungarian(conf)

    np.testing.assert_array_equal(mapping_m2o, [1, 2, 0])
    np.testing.assert_array_equal(mapping_hungarian, [1, 2, 0])
    assert miou(conf, mapping_m2o)[0] == 1.0
    assert miou(conf, mapping_hungarian)[0] == 1.0
    assert pixel_accuracy(conf, mapping_hungarian) == 1.0


def test_miou_empty_class_excluded() -> None:
    truth = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    conf = confusion_matrix(pred, truth, n_clusters=2, n_classes=3)

    value, per_class = miou(conf, many_to_one(conf))

    assert value == 1.0
    assert per_class[:2].tolist() == [1.0, 1.0]
    assert math.isnan(per_class[2])


def test_miou_predicted_absent_class_zero() -> None:
    conf = np.array([[2, 0, 0], [1, 0, 0]])

    value, per_class = miou(conf, np.array([0, 2]))

    # Class 2 is absent from the truth but predicted, so it scores 0. Class 1 is absent from both, so it is NaN.
    assert per_class[0] == pytest.approx(2 / 3)
    assert math.isnan(per_class[1])
    assert per_class[2] == 0.0
    assert value == pytest.approx(1 / 3)


def test_hungarian_drops_zero_overlap_match() -> None:
    truth = np.zeros((1, 4), dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1]], dtype=np.uint8)
    conf = confusion_matrix(pred, truth, n_clusters=2, n_classes=2)

    mapping = hungarian(conf)
    value, per_class = miou(conf, mapping)

    np.testing.assert_array_equal(mapping, [0, -1])
    assert per_class[0] == 0.75
    assert math.isnan(per_class[1])
    assert value == 0.75
    assert pixel_accuracy(conf, mapping) == 0.75


def test_miou_rejects_mapping_out_of_range() -> None:
    with pytest.raises(InvalidInputError, match="mapping contains values outside -1..1"):
        miou(np.ones((2, 2)), np.array([0, 2]))


@pytest.mark.parametrize(("shift", "expected_f"), [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.5), (4, 0.0)])
def test_boundary_f_shifted_edge(shift: int, expected_f: float) -> None:
    truth = _two_region_map(4, 10, 4)
    pred = _two_region_map(4, 10, 4 + shift)

    f, precision, recall = boundary_f(pred, truth, tolerance=2)

    assert f == expected_f
    assert precision == expected_f
    assert recall == expected_f


def test_boundary_f_zero_tolerance() -> None:
    truth = _two_region_map(4, 10, 4)

    # Both sides of an edge are boundary pixels: a 1 px shift keeps one column in common.
    assert boundary_f(_two_region_map(4, 10, 5), truth, tolerance=0) == (0.5, 0.5, 0.5)
    assert boundary_f(_two_region_map(4, 10, 6), truth, tolerance=0) == (0.0, 0.0, 0.0)
    assert boundary_f(truth, truth, tolerance=0) == (1.0, 1.0, 1.0)


def test_boundary_f_partial_match() -> None:
    truth = _two_region_map(4, 10, 4)
    pred = truth.copy()
    pred[:2, 4:7] = 0

    f, precision, recall = boundary_f(pred, truth, tolerance=1)

    # Predicted boundary, 12 pixels: row 0 columns 6-7, row 1 columns 4-7, row 2 columns 3-6,
    # row 3 columns 3-4. Within 1 px of the true boundary (columns 3-4): (1, 4), (1, 5),
    # (2, 3), (2, 4), (2, 5), (3, 3), (3, 4).
    assert precision == 7 / 12
    # True boundary: columns 3-4 of rows 0-3, 8 pixels. Only (0, 3) is farther than
    # 1 px (sqrt(2) px from (1, 4)).
    assert recall == 7 / 8
    assert f == pytest.approx(0.7)


def test_boundary_f_both_empty_is_nan() -> None:
    uniform = np.zeros((3, 3), dtype=np.uint8)

    f, precision, recall = boundary_f(uniform, uniform)

    assert math.isnan(f)
    assert math.isnan(precision)
    assert math.isnan(recall)


def test_boundary_f_one_empty_is_zero() -> None:
    uniform = np.zeros((3, 6), dtype=np.uint8)
    edged = _two_region_map(3, 6, 3)

    f_no_pred, precision_no_pred, recall_no_pred = boundary_f(uniform, edged)
    f_no_truth, precision_no_truth, recall_no_truth = boundary_f(edged, uniform)

    assert f_no_pred == 0.0
    assert math.isnan(precision_no_pred)
    assert recall_no_pred == 0.0
    assert f_no_truth == 0.0
    assert precision_no_truth == 0.0
    assert math.isnan(recall_no_truth)


def test_boundary_f_edges_touching_ignore_skipped() -> None:
    truth = _two_region_map(4, 6, 3)
    truth[0, :] = 255
    pred = _two_region_map(4, 6, 3)

    # Counting the ignore row as a class would add 6 true boundary pixels in row 0, all unmatched at tolerance 0.
    assert boundary_f(pred, truth, tolerance=0) == (1.0, 1.0, 1.0)


def test_boundary_f_only_ignore_edge_nan() -> None:
    truth = np.array([[0, 0, 255, 1, 1]] * 3, dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1, 1]] * 3, dtype=np.uint8)

    f, _, _ = boundary_f(pred, truth)

    assert math.isnan(f)


def test_boundary_f_edges_touching_nodata_skipped() -> None:
    truth = _two_region_map(4, 6, 3)
    pred = _two_region_map(4, 6, 3)
    pred[:, 0] = 255

    assert boundary_f(pred, truth, tolerance=0) == (1.0, 1.0, 1.0)


def test_boundary_f_rejects_negative_tolerance() -> None:
    uniform = np.zeros((2, 2), dtype=np.uint8)

    with pytest.raises(InvalidInputError, match="tolerance=-1 is invalid"):
        boundary_f(uniform, uniform, tolerance=-1)


def test_score_image_same_class_border() -> None:
    truth = _two_region_map(4, 8, 4)
    labels = truth.copy()
    labels[:, 2:4] = 2

    scores = score_image(labels, truth)

    # Clusters 0 and 2 both map to class 0, so the border between them at column 1 is not a boundary.
    assert scores.mapping_many_to_one == (0, 1, 0)
    assert scores.boundary_f == 1.0
    assert scores.boundary_precision == 1.0
    assert scores.boundary_recall == 1.0
    assert scores.miou_many_to_one == 1.0


def test_score_image_fields() -> None:
    scores = score_image(K_GREATER_PRED, K_GREATER_TRUTH)

    assert scores.mapping_many_to_one == (0, 0, 1)
    assert scores.mapping_hungarian == (0, -1, 1)
    assert scores.miou_many_to_one == 1.0
    assert scores.miou_hungarian == pytest.approx(0.9)
    assert scores.per_class_iou_hungarian == pytest.approx((0.8, 1.0))
    assert scores.pixel_accuracy == 1.0
    assert scores.pixel_accuracy_hungarian == 7 / 8
    assert scores.boundary_f == 1.0
    assert scores.n_clusters == 3
    assert scores.n_classes == 2
    assert scores.n_pixels == 8


def test_score_image_counts_used_clusters() -> None:
    labels = np.array([[0, 0, 5, 255]], dtype=np.uint8)
    truth = np.array([[0, 0, 1, 1]], dtype=np.uint8)

    scores = score_image(labels, truth, n_classes=2)

    assert scores.n_clusters == 2
    assert scores.mapping_many_to_one == (0, -1, -1, -1, -1, 1)
    assert scores.n_pixels == 3


def test_score_image_all_ignore_is_nan() -> None:
    labels = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    truth = np.full((2, 2), 255, dtype=np.uint8)

    scores = score_image(labels, truth, n_classes=2)

    assert scores.n_pixels == 0
    assert math.isnan(scores.miou_many_to_one)
    assert math.isnan(scores.miou_hungarian)
    assert math.isnan(scores.pixel_accuracy)
    assert math.isnan(scores.boundary_f)
    assert all(math.isnan(v) for v in scores.per_class_iou_many_to_one)
    assert scores.mapping_hungarian == (-1, -1)


def test_image_scores_to_dict_lists() -> None:
    scores = score_image(K_GREATER_PRED, K_GREATER_TRUTH)

    as_dict = scores.to_dict()

    assert as_dict["mapping_many_to_one"] == [0, 0, 1]
    assert as_dict["per_class_iou_many_to_one"] == [1.0, 1.0]
    assert as_dict["n_pixels"] == 8
    assert type(as_dict["boundary_f"]) is float
    assert type(as_dict["miou_hungarian"]) is float
    assert set(as_dict) == {f.name for f in ImageScores.__dataclass_fields__.values()}


def test_mean_scores_excludes_nan_images() -> None:
    scored = score_image(K_GREATER_PRED, K_GREATER_TRUTH, n_classes=2)
    unscored = score_image(K_GREATER_PRED, np.full((2, 4), 255, dtype=np.uint8), n_classes=2)
    permuted = score_image(1 - K_GREATER_TRUTH, K_GREATER_TRUTH, n_classes=2)

    means = mean_scores([scored, unscored, permuted])

    assert means["miou_many_to_one"] == 1.0
    assert means["miou_hungarian"] == pytest.approx((0.9 + 1.0) / 2)
    assert means["pixel_accuracy_hungarian"] == pytest.approx((7 / 8 + 1.0) / 2)
    assert means["boundary_f"] == 1.0
    assert means["per_class_iou_hungarian"] == pytest.approx([0.9, 1.0])
    assert means["n_clusters"] == pytest.approx((3 + 3 + 2) / 3)
    assert means["n_images"] == 3
    assert means["n_images_scored"] == 2
    assert means["n_pixels"] == 16


def test_mean_scores_empty_list_is_nan() -> None:
    means = mean_scores([])

    assert math.isnan(means["miou_many_to_one"])
    assert means["per_class_iou_many_to_one"] == []
    assert means["n_images"] == 0
