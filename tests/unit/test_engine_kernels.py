"""Per-chunk kernels of the Dask engine: a chunk computes the crop of the whole-grid result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tree_seg.clustering.blend import blend_halo, cells_per_patch, prepare_guide
from tree_seg.clustering.head_refine import em_chunk, labels_from_responsibilities
from tree_seg.clustering.kmeans import assign
from tree_seg.clustering.sampling import sample_patches
from tree_seg.config import BackboneConfig, HeadRefineConfig
from tree_seg.core.labels import cell_span, fill_empty_cells
from tree_seg.engine import kernels
from tree_seg.engine.layout import halo_slices, iter_blocks
from tree_seg.exceptions import InvalidInputError
from tree_seg.features.extract import extract_patch_features
from tree_seg.features.grid import WindowGrid
from tree_seg.models import load_backbone


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit_features(rng: np.random.Generator, shape: tuple[int, int], dim: int = 8) -> np.ndarray:
    features = rng.normal(size=(*shape, dim)).astype(np.float32)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


def test_window_read_bounds_contains_every_read(rng):
    image = rng.random((3, 150, 230), dtype=np.float32)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    reads = []

    def recording_reader(y0, y1, x0, x1):
        reads.append((y0, y1, x0, x1))
        return image[:, y0:y1, x0:x1]

    backbone = load_backbone(BackboneConfig(name="texture"))
    for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(6, 10), slice(9, 15))):
        reads.clear()
        extract_patch_features(recording_reader, grid, backbone, patch_rows=rows, patch_cols=cols)
        bounds = kernels.window_read_bounds(grid, grid.windows_touching(rows, cols))
        assert bounds[0].start == min(r[0] for r in reads)
        assert bounds[0].stop == max(r[1] for r in reads)
        assert bounds[1].start == min(r[2] for r in reads)
        assert bounds[1].stop == max(r[3] for r in reads)


def test_block_reader_serves_same_features(rng):
    image = rng.random((3, 150, 230), dtype=np.float32)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    backbone = load_backbone(BackboneConfig(name="texture"))
    rows, cols = slice(6, 10), slice(9, 15)
    read_rows, read_cols = kernels.window_read_bounds(grid, grid.windows_touching(rows, cols))
    reader = kernels.BlockReader(image[:, read_rows, read_cols], read_rows, read_cols)

    chunk = extract_patch_features(reader, grid, backbone, patch_rows=rows, patch_cols=cols)
    whole = extract_patch_features(image, grid, backbone)
    np.testing.assert_array_equal(chunk, whole[rows, cols])


def test_window_read_bounds_contains_region():
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)

    rows, cols = kernels.window_read_bounds(grid, [(48, 96)], (slice(40, 50), slice(200, 230)))

    assert (rows.start, rows.stop) == (40, 112)
    assert (cols.start, cols.stop) == (96, 230)
    with pytest.raises(InvalidInputError, match="no windows and no region"):
        kernels.window_read_bounds(grid, [])


def test_block_reader_rejects_read_outside():
    reader = kernels.BlockReader(np.zeros((3, 10, 10), np.float32), slice(5, 15), slice(0, 10))
    with pytest.raises(InvalidInputError, match="outside the block"):
        reader(0, 8, 0, 4)


def test_normalise_features_unit_length_float16(rng):
    features = rng.normal(size=(4, 5, 18)).astype(np.float32) * 7
    features[0, 0] = 0.0
    out = kernels.normalise_features(features, "float16")
    assert out.dtype == np.float16
    norms = np.linalg.norm(out[1:].astype(np.float32), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert not out[0, 0].any()


def test_pad_halo_fills_outside_only():
    array = np.ones((3, 4), dtype=bool)
    out = kernels.pad_halo(array, halo_slices(slice(0, 3), 2, 3), halo_slices(slice(0, 2), 2, 4), fill=False)
    assert out.shape == (7, 6)
    assert out[2:5, 2:6].all()
    assert out.sum() == 12


def test_pad_halo_channel_first():
    cells = np.ones((2, 3, 4), dtype=np.float32)
    out = kernels.pad_halo(cells, halo_slices(slice(0, 3), 1, 3), halo_slices(slice(2, 4), 1, 4), fill=0.0,
                           axes=(1, 2))
    assert out.shape == (2, 5, 5)
    assert out.sum() == 24


def test_sample_block_matches_whole_grid(rng):
    valid = rng.random((33, 49)) > 0.2
    whole = sample_patches(valid, seed=7, fraction=0.3)
    expected = np.flatnonzero(whole.ravel())

    parts = []
    for block in iter_blocks(valid.shape, 12):
        flat, rows, cols = kernels.sample_block(valid[block.rows, block.cols], row0=block.rows.start,
                                                col0=block.cols.start, grid_width=49, seed=7, fraction=0.3)
        assert (valid[block.rows, block.cols][rows, cols]).all()
        parts.append(flat)
    chunked = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(chunked, expected)


def test_kmeans_cells_labels_and_scores(rng):
    features = _unit_features(rng, (6, 7))
    centroids = _unit_features(rng, (1, 3))[0]
    labels, scores = kernels.kmeans_cells(features, centroids)
    expected, _ = assign(features.reshape(-1, 8), centroids)
    np.testing.assert_array_equal(labels.ravel(), expected)
    assert scores.shape == (3, 6, 7)
    np.testing.assert_array_equal(np.argmax(scores, axis=0), labels)


def test_kmeans_counts_every_patch(rng):
    features = _unit_features(rng, (6, 7))
    centroids = _unit_features(rng, (1, 3))[0]
    counts = kernels.kmeans_counts(features, centroids)
    assert counts.sum() == 42
    labels, _ = kernels.kmeans_cells(features, centroids)
    np.testing.assert_array_equal(counts, np.bincount(labels.ravel(), minlength=3))


def test_one_hot_cells_scores():
    labels = np.array([[0, 2], [1, 1]])
    cells = kernels.one_hot_cells(labels, 3, patch_origin=(4, 6), patch_size=16)
    assert cells.scores.shape == (3, 2, 2)
    np.testing.assert_array_equal(cells.scores.argmax(axis=0), labels)
    assert cells.scores.sum() == 4
    assert cells.origin == (4, 6)


@pytest.mark.parametrize("blend", ["neighbour", "guided"])
def test_v2_cells_chunk_matches_whole_grid(rng, blend):
    config = HeadRefineConfig(blend=blend, guided_radius=2)
    patch_size = 16
    shape = (20, 23)
    features = _unit_features(rng, shape)
    valid = rng.random(shape) > 0.1
    image = rng.random((3, shape[0] * patch_size - 5, shape[1] * patch_size - 9)).astype(np.float32)
    centroids = _unit_features(rng, (1, 3))[0]
    log_priors = np.log(np.full(3, 1 / 3, dtype=np.float32))
    kmeans_labels, _ = kernels.kmeans_cells(features, centroids)

    whole, _ = em_chunk(features, valid, centroids, log_priors, 0.2, config, halo=0, patch_size=patch_size,
                        guide=image if blend == "guided" else None)
    # V2 leaves the cells of invalid patches empty, and the engine fills them
    # with the K-means label and its one-hot score, as the in-memory run does.
    whole_labels, whole = fill_empty_cells(labels_from_responsibilities(whole), whole, kmeans_labels,
                                           cells_per_patch(config, patch_size))

    depth = blend_halo(config, patch_size)
    factor = cells_per_patch(config, patch_size)
    guide_all = prepare_guide(image, None, grid_shape=shape, patch_size=patch_size, config=config)
    for block in iter_blocks(shape, 7):
        rows, cols = halo_slices(block.rows, depth, shape[0]), halo_slices(block.cols, depth, shape[1])
        chunk_features = kernels.pad_halo(features[rows.read, cols.read], rows, cols, fill=0.0)
        chunk_valid = kernels.pad_halo(valid[rows.read, cols.read], rows, cols, fill=False)
        guide = None
        if blend == "guided":
            cell_rows = halo_slices(slice(block.rows.start * factor, block.rows.stop * factor), depth * factor,
                                    shape[0] * factor)
            cell_cols = halo_slices(slice(block.cols.start * factor, block.cols.stop * factor), depth * factor,
                                    shape[1] * factor)
            cells = guide_all.cells.numpy()[:, cell_rows.read, cell_cols.read]
            cell_valid = guide_all.valid.numpy()[cell_rows.read, cell_cols.read]
            guide = kernels.guide_cells_block(
                kernels.pad_halo(cells, cell_rows, cell_cols, fill=0.0, axes=(1, 2)),
                kernels.pad_halo(cell_valid, cell_rows, cell_cols, fill=False),
            )
        cells = kernels.v2_cells(chunk_features, chunk_valid, kmeans_labels[block.rows, block.cols], guide=guide,
                                 centroids=centroids, log_priors=log_priors, tau=0.2, config=config, depth=depth,
                                 patch_size=patch_size, patch_origin=(block.rows.start, block.cols.start))
        cell_rows = slice(block.rows.start * factor, block.rows.stop * factor)
        cell_cols = slice(block.cols.start * factor, block.cols.stop * factor)
        np.testing.assert_array_equal(cells.scores, whole[:, cell_rows, cell_cols])
        np.testing.assert_array_equal(cells.labels, whole_labels[cell_rows, cell_cols])
        assert cells.origin == (block.rows.start * factor, block.cols.start * factor)
        assert cells.cell_size == patch_size // factor


def test_v2_cells_fill_empty_cells_with_kmeans(rng):
    config = HeadRefineConfig(blend="neighbour")
    features = _unit_features(rng, (5, 6))
    valid = np.ones((5, 6), dtype=bool)
    valid[2, 3] = False
    centroids = _unit_features(rng, (1, 2))[0]
    kmeans_labels = np.full((3, 4), 1, dtype=np.int64)
    # With a halo of one patch the interior is 3 x 4 and the invalid patch is interior cell (1, 2).
    cells = kernels.v2_cells(features, valid, kmeans_labels, guide=None, centroids=centroids,
                             log_priors=np.log(np.full(2, 0.5, np.float32)), tau=0.2, config=config, depth=1,
                             patch_size=16, patch_origin=(0, 0))
    assert cells.labels[1, 2] == 1
    np.testing.assert_array_equal(cells.scores[:, 1, 2], [0.0, 1.0])
    assert cells.finite


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_pixel_labels_chunk_matches_whole(rng, upsampling):
    input_shape, resampled_shape, patch_size = (150, 230), (75, 115), 16
    grid_shape = (5, 8)
    features = _unit_features(rng, grid_shape)
    centroids = _unit_features(rng, (1, 4))[0]
    labels, scores = kernels.kmeans_cells(features, centroids)
    valid = rng.random(input_shape) > 0.05

    def cells_for(rows, cols):
        spans = [cell_span(region, n_pixels=input_shape[axis], n_resampled=resampled_shape[axis],
                           cell_size=patch_size, n_cells=grid_shape[axis]) for axis, region in enumerate((rows, cols))]
        return kernels.CellBlock(labels=labels[spans[0], spans[1]], scores=scores[:, spans[0], spans[1]],
                                 origin=(spans[0].start, spans[1].start), cell_size=patch_size,
                                 used=np.zeros(4, bool), finite=True)

    place = {"upsampling": upsampling, "input_shape": input_shape, "resampled_shape": resampled_shape,
             "grid_shape": grid_shape}
    whole_rows, whole_cols = slice(0, 150), slice(0, 230)
    whole = kernels.pixel_labels(cells_for(whole_rows, whole_cols), valid, rows=whole_rows, cols=whole_cols, **place)
    assert (whole[~valid] == 255).all()
    for block in iter_blocks(input_shape, 64):
        chunk = kernels.pixel_labels(cells_for(block.rows, block.cols), valid[block.rows, block.cols],
                                     rows=block.rows, cols=block.cols, **place)
        np.testing.assert_array_equal(chunk, whole[block.rows, block.cols])
