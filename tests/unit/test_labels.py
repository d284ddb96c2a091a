import numpy as np
import pytest

from tree_seg.core.labels import cell_span, upsample_labels, upsample_scores


@pytest.mark.parametrize(("height", "width"), [(1000, 700), (56, 67), (17, 16)])
def test_upsample_labels_shape_matches_input(height, width):
    cells = np.arange(((height + 15) // 16) * ((width + 15) // 16)).reshape((height + 15) // 16, -1)
    labels = upsample_labels(cells, cell_size=16, input_shape=(height, width), resampled_shape=(height, width))
    assert labels.shape == (height, width)
    assert labels[0, 0] == cells[0, 0]
    assert labels[-1, -1] == cells[-1, -1]


def test_upsample_labels_repeats_each_cell():
    cells = np.array([[0, 1], [2, 3]])
    labels = upsample_labels(cells, cell_size=4, input_shape=(8, 8), resampled_shape=(8, 8))
    expected = np.kron(cells, np.ones((4, 4), dtype=int))
    np.testing.assert_array_equal(labels, expected)


def test_upsample_labels_with_scale_maps_to_input_grid():
    cells = np.array([[0, 1], [2, 3]])
    # Resampled at 0.5x: 8 x 8 input pixels -> 4 x 4 resampled -> 2 x 2 cells of 2 px.
    labels = upsample_labels(cells, cell_size=2, input_shape=(8, 8), resampled_shape=(4, 4))
    np.testing.assert_array_equal(labels, np.kron(cells, np.ones((4, 4), dtype=int)))


def test_upsample_labels_chunk_equals_whole():
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 5, size=(13, 11))
    shapes = {"cell_size": 16, "input_shape": (200, 170), "resampled_shape": (200, 170)}
    whole = upsample_labels(cells, **shapes)
    rows, cols = slice(37, 151), slice(64, 170)
    row_cells = cell_span(rows, n_pixels=200, n_resampled=200, cell_size=16, n_cells=13)
    col_cells = cell_span(cols, n_pixels=170, n_resampled=170, cell_size=16, n_cells=11)
    part = upsample_labels(
        cells[row_cells, col_cells], **shapes, rows=rows, cols=cols,
        cell_origin=(row_cells.start, col_cells.start), grid_shape=cells.shape,
    )
    np.testing.assert_array_equal(part, whole[rows, cols])


def test_upsample_scores_chunk_equals_whole():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 13, 11)).astype(np.float32)
    shapes = {"cell_size": 16, "input_shape": (200, 170), "resampled_shape": (100, 85)}
    whole = upsample_scores(scores, **shapes)
    rows, cols = slice(21, 199), slice(3, 90)
    row_cells = cell_span(rows, n_pixels=200, n_resampled=100, cell_size=16, n_cells=13)
    col_cells = cell_span(cols, n_pixels=170, n_resampled=85, cell_size=16, n_cells=11)
    part = upsample_scores(
        scores[:, row_cells, col_cells], **shapes, rows=rows, cols=cols,
        cell_origin=(row_cells.start, col_cells.start), grid_shape=scores.shape[1:],
    )
    np.testing.assert_array_equal(part, whole[rows, cols])


def test_upsample_scores_argmax_at_cell_centres():
    scores = np.zeros((2, 2, 2), dtype=np.float32)
    scores[0, 0, 0] = scores[1, 1, 1] = 1.0
    scores[1, 0, 1] = scores[1, 1, 0] = 1.0
    labels = upsample_scores(scores, cell_size=8, input_shape=(16, 16), resampled_shape=(16, 16))
    assert labels.shape == (16, 16)
    assert labels[3, 3] == 0
    assert labels[12, 12] == 1
    assert labels[3, 12] == 1


def test_upsample_scores_bilinear_boundary_between_centres():
    # Two cells of 8 px; the score crosses at the midpoint between cell centres (x = 8).
    scores = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=np.float32)
    labels = upsample_scores(scores, cell_size=8, input_shape=(8, 16), resampled_shape=(8, 16))
    assert labels[0].tolist() == [0] * 8 + [1] * 8


def test_fill_empty_cells_from_patches():
    from tree_seg.core.labels import fill_empty_cells

    labels = np.array([[0, -1, 1, 1], [0, 0, -1, -1]])
    scores = np.zeros((2, 2, 4), dtype=np.float32)
    scores[0, labels == 0] = 0.8
    scores[1, labels == 0] = 0.2
    scores[1, labels == 1] = 1.0
    patch_labels = np.array([[1, -1]])

    filled, filled_scores = fill_empty_cells(labels, scores, patch_labels, 2)

    np.testing.assert_array_equal(filled, [[0, 1, 1, 1], [0, 0, -1, -1]])
    np.testing.assert_array_equal(filled_scores[:, 0, 1], [0.0, 1.0])
    np.testing.assert_array_equal(filled_scores[:, 1, 2], [0.0, 0.0])
    np.testing.assert_array_equal(filled_scores[:, 0, 0], np.float32([0.8, 0.2]))
    assert scores[1, 0, 1] == 0.0
