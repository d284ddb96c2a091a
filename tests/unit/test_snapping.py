import numpy as np

from tree_seg.core.snapping import majority_vote, slic_snap


def test_majority_vote_assigns_segment_majority():
    segments = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    labels = np.array([[2, 2, 0, 1], [2, 1, 1, 1]], dtype=np.uint8)
    out = majority_vote(segments, labels, n_labels=3)
    np.testing.assert_array_equal(out, [[2, 2, 1, 1], [2, 2, 1, 1]])


def test_majority_vote_keeps_nodata_and_unsegmented_pixels():
    segments = np.array([[0, 0, -1], [0, 0, -1]])
    labels = np.array([[1, 255, 0], [1, 0, 255]], dtype=np.uint8)
    out = majority_vote(segments, labels, n_labels=2)
    np.testing.assert_array_equal(out, [[1, 255, 0], [1, 1, 255]])


def test_slic_snap_moves_boundary_to_image_edge():
    image = np.zeros((3, 64, 64), dtype=np.float32)
    image[:, :, 29:] = 1.0  # colour edge at column 29
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[:, 32:] = 1  # label edge on the patch grid at column 32
    valid = np.ones((64, 64), dtype=bool)
    out = slic_snap(image, labels, valid, n_labels=2, segment_size=8, compactness=1.0)
    errors_before = int((labels != (image[0] > 0.5)).sum())
    errors_after = int((out != (image[0] > 0.5)).sum())
    assert errors_before == 3 * 64
    assert errors_after < errors_before // 4
