"""Chunk layouts and halos of the Dask engine."""

from __future__ import annotations

import pytest

from tree_seg.engine.layout import (
    WindowOwnership,
    block_grid,
    halo_slices,
    iter_blocks,
    patch_chunk_side,
    slic_depth,
)
from tree_seg.exceptions import ConfigurationError
from tree_seg.features.grid import WindowGrid


def test_patch_chunk_side_defaults():
    # window 448, overlap 112: a stride of 336 px = 21 patches of 16 px; 7 strides cover 2048 px.
    assert patch_chunk_side(2048, scale=1.0, patch_size=16, window=448, overlap=112) == 147


def test_patch_chunk_side_dinov2_patches():
    # stride 224 - 56 = 168 px = 12 patches of 14 px; 13 strides cover 2048 px.
    assert patch_chunk_side(2048, scale=1.0, patch_size=14, window=224, overlap=56) == 156


@pytest.mark.parametrize(("scale", "patch_size", "grid_side"), [(1.0, 16, 128), (0.5, 14, 74), (0.5, 16, 64)])
def test_raster_of_chunk_size_is_one_chunk(scale, patch_size, grid_side):
    # grid_side: patches along a 2048 px side, ceil(2048 * scale / patch_size).
    side = patch_chunk_side(2048, scale=scale, patch_size=patch_size, window=28 * patch_size,
                            overlap=7 * patch_size)

    assert side >= grid_side
    assert side * patch_size < 2048 * scale + 21 * patch_size


def test_patch_chunk_side_multiple_of_stride():
    for chunk_size in (64, 300, 1000, 2048, 5000):
        side = patch_chunk_side(chunk_size, scale=1.0, patch_size=16, window=128, overlap=32)
        assert side % 6 == 0
        assert side >= 6


def test_patch_chunk_side_follows_scale():
    full = patch_chunk_side(2048, scale=1.0, patch_size=16, window=128, overlap=32)
    half = patch_chunk_side(2048, scale=0.5, patch_size=16, window=128, overlap=32)
    assert full == 132
    assert half == 66


def test_patch_chunk_side_at_least_one_stride():
    assert patch_chunk_side(64, scale=1.0, patch_size=16, window=448, overlap=112) == 21


def test_patch_chunk_side_rejects_bad_stride():
    with pytest.raises(ConfigurationError, match="stride"):
        patch_chunk_side(2048, scale=1.0, patch_size=16, window=120, overlap=32)


def test_iter_blocks_covers_grid_once():
    shape = (33, 49)
    blocks = list(iter_blocks(shape, 12))
    covered = [[0] * shape[1] for _ in range(shape[0])]
    for block in blocks:
        for row in range(block.rows.start, block.rows.stop):
            for col in range(block.cols.start, block.cols.stop):
                covered[row][col] += 1
    assert all(count == 1 for row in covered for count in row)
    assert len(blocks) == 3 * 5
    assert block_grid(shape, 12) == (3, 5)


def test_iter_blocks_last_chunk_smaller():
    blocks = list(iter_blocks((33, 49), 12))
    last = blocks[-1]
    assert last.index == (2, 4)
    assert last.shape == (9, 1)


def test_iter_blocks_pixel_chunks_one_past_multiple():
    blocks = list(iter_blocks((513, 770), 256))
    assert block_grid((513, 770), 256) == (3, 4)
    assert blocks[-1].rows == slice(512, 513)
    assert blocks[-1].cols == slice(768, 770)


def test_halo_slices_interior():
    halo = halo_slices(slice(12, 24), 5, 49)
    assert halo.read == slice(7, 29)
    assert (halo.pad_before, halo.pad_after) == (0, 0)


def test_halo_slices_at_edges():
    first = halo_slices(slice(0, 12), 5, 49)
    assert first.read == slice(0, 17)
    assert (first.pad_before, first.pad_after) == (5, 0)


def test_halo_slices_chunk_smaller_than_halo():
    # The last chunk of 49 patches in chunks of 12 is one patch wide.
    last = halo_slices(slice(48, 49), 5, 49)
    assert last.read == slice(43, 49)
    assert (last.pad_before, last.pad_after) == (0, 5)


def test_halo_slices_halo_wider_than_grid():
    halo = halo_slices(slice(0, 3), 5, 3)
    assert halo.read == slice(0, 3)
    assert (halo.pad_before, halo.pad_after) == (5, 5)


def test_slic_depth_two_superpixels():
    assert slic_depth(16) == 32


@pytest.mark.parametrize(("height", "width", "overlap", "side"),
                         [(1000, 1400, 16, 6), (1000, 1400, 16, 3), (700, 300, 48, 2), (200, 200, 16, 3)])
def test_window_ownership_each_window_once(height, width, overlap, side):
    # window 64 px = 4 patches of 16 px; overlap 48 px makes windows reach two chunks ahead.
    grid = WindowGrid(height, width, patch_size=16, window=64, overlap=overlap)
    ownership = WindowOwnership(grid, side)
    blocks = list(iter_blocks(grid.patch_shape, side))

    owned = [origin for block in blocks for origin in ownership.owned(block)]

    assert sorted(owned) == sorted(grid.origins())
    assert len(owned) == len(set(owned))
    for block in blocks:
        for origin in ownership.owned(block):
            assert ownership.owner(origin) == block.index


@pytest.mark.parametrize(("overlap", "side"), [(16, 6), (16, 3), (48, 2), (48, 1)])
def test_window_ownership_seams_touch_other_chunks(overlap, side):
    grid = WindowGrid(300, 410, patch_size=16, window=64, overlap=overlap)
    ownership = WindowOwnership(grid, side)
    blocks = list(iter_blocks(grid.patch_shape, side))
    touching = {block.index: set(grid.windows_touching(block.rows, block.cols)) for block in blocks}

    for block in blocks:
        # Brute force: a seam window touches a chunk other than its owner.
        expected = [origin for origin in ownership.owned(block)
                    if {index for index, origins in touching.items() if origin in origins} != {block.index}]
        assert ownership.seams(block) == expected


def test_window_ownership_counts():
    grid = WindowGrid(1000, 1400, patch_size=16, window=64, overlap=16)
    ownership = WindowOwnership(grid, 6)

    assert ownership.per_chunk == 2
    assert ownership.window_counts == (21, 29)
    assert ownership.index((144, 48)) == (3, 1)
    assert ownership.owner((144, 48)) == (1, 0)


def test_window_ownership_rejects_side_off_stride():
    grid = WindowGrid(1000, 1400, patch_size=16, window=64, overlap=16)

    with pytest.raises(ConfigurationError, match="chunk side 4 patches"):
        WindowOwnership(grid, 4)


@pytest.mark.parametrize(("workers", "most", "size"), [(1, 8, 7), (2, 8, 4), (4, 8, 2), (100, 8, 1), (2, 2, 2)])
def test_seam_work_splits_owners_into_parts(workers, most, size):
    from tree_seg.engine.passes import seam_work

    grid = WindowGrid(300, 410, patch_size=16, window=64, overlap=16)
    ownership = WindowOwnership(grid, 12)
    blocks = list(iter_blocks(grid.patch_shape, 12))
    seams = [origin for block in blocks for origin in ownership.seams(block)]
    # Every seam window but the first of each chunk is still to compute.
    pending_seams = set(seams) - {ownership.seams(block)[0] for block in blocks if ownership.seams(block)}

    work = seam_work(ownership, blocks, pending_seams, most=most, workers=workers)

    assert len(pending_seams) == 14
    assert sorted(origin for part in work for origin in part.origins) == sorted(pending_seams)
    assert len({part.index for part in work}) == len(work)
    for block in blocks:
        parts = [part for part in work if part.block == block]
        owned = [origin for origin in ownership.seams(block) if origin in pending_seams]
        # Full parts of `size` windows, row by row, then the rest.
        assert [list(part.origins) for part in parts] == [owned[i:i + size] for i in range(0, len(owned), size)]
        assert [part.index for part in parts] == [(*block.index, i) for i in range(len(parts))]
