"""Tests for tree_seg.features.extract."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from tree_seg.exceptions import ConfigurationError, InvalidInputError
from tree_seg.features.extract import extract_patch_features, patch_validity, read_window, reflect_index
from tree_seg.features.grid import WindowGrid
from tree_seg.models.base import Backbone
from tree_seg.models.hf import HFBackbone
from tree_seg.models.registry import SPECS
from tree_seg.models.texture import TextureBackbone


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory: pytest.TempPathFactory) -> HFBackbone:
    """A 2-layer DINOv3 with random weights, loaded through HFBackbone."""
    folder = tmp_path_factory.mktemp("tiny_dinov3")
    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, patch_size=16, num_register_tokens=4)
    DINOv3ViTModel(config).save_pretrained(folder)
    return HFBackbone(replace(SPECS["dinov3_vits16"], feature_dim=64), weights=folder, device="cpu")


def _image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth random RGB in [0, 1] with some structure, so features vary."""
    coarse = rng.random((3, height // 8 + 2, width // 8 + 2), dtype=np.float32)
    smooth = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]
    return np.clip(0.7 * smooth + 0.3 * rng.random((3, height, width), dtype=np.float32), 0, 1)


def _regions(rows: int, cols: int) -> list[tuple[slice, slice]]:
    return [
        (slice(0, 3), slice(0, 4)),
        (slice(2, 7), slice(5, cols)),
        (slice(rows - 2, rows), slice(cols - 3, cols)),
        (slice(4, 5), slice(0, cols)),
        (slice(0, rows), slice(7, 8)),
    ]


def test_reflect_index_matches_numpy_pad() -> None:
    for size in (1, 2, 3, 5, 17):
        data = np.arange(size)
        expected = np.pad(data, (0, 40), mode="reflect") if size > 1 else np.zeros(size + 40, dtype=int)

        np.testing.assert_array_equal(reflect_index(np.arange(size + 40), size), expected)


def test_read_window_reflects_past_edge(rng: np.random.Generator) -> None:
    image = rng.random((3, 20, 70), dtype=np.float32)
    grid = WindowGrid(20, 70, patch_size=16, window=32, overlap=0)
    calls = []

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        calls.append((y0, y1, x0, x1))
        return image[:, y0:y1, x0:x1]

    window = read_window(read, grid, 0, 64)

    assert window.shape == (3, 32, 32)
    np.testing.assert_array_equal(window, np.pad(image, ((0, 0), (0, 12), (0, 26)), mode="reflect")[:, :, 64:96])
    assert all(0 <= y0 < y1 <= 20 and 0 <= x0 < x1 <= 70 for y0, y1, x0, x1 in calls)


def test_read_window_tiny_raster() -> None:
    image = np.arange(3 * 3 * 2, dtype=np.float32).reshape(3, 3, 2)
    grid = WindowGrid(3, 2, patch_size=16, window=64, overlap=0)

    window = read_window(lambda y0, y1, x0, x1: image[:, y0:y1, x0:x1], grid, 0, 0)

    assert window.shape == (3, 16, 16)
    np.testing.assert_array_equal(window, np.pad(image, ((0, 0), (0, 13), (0, 14)), mode="reflect"))


def test_read_window_rejects_bad_reader() -> None:
    grid = WindowGrid(64, 64, patch_size=16, window=32, overlap=0)

    with pytest.raises(InvalidInputError, match="reader returned shape"):
        read_window(lambda y0, y1, x0, x1: np.zeros((3, 5, 5), dtype=np.float32), grid, 0, 0)


@pytest.mark.parametrize(("height", "width", "expected"), [(1000, 700, (63, 44)), (56, 67, (4, 5))])
def test_extract_output_shape(height: int, width: int, expected: tuple[int, int],
                              rng: np.random.Generator) -> None:
    image = _image(rng, height, width)
    grid = WindowGrid(height, width, patch_size=16, window=448, overlap=112)

    features = extract_patch_features(image, grid, TextureBackbone())

    assert features.shape == (*expected, 18)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_extract_single_window_equals_backbone(rng: np.random.Generator) -> None:
    image = _image(rng, 64, 96)
    grid = WindowGrid(64, 96, patch_size=16, window=448, overlap=112)
    backbone = TextureBackbone()

    features = extract_patch_features(image, grid, backbone)

    np.testing.assert_allclose(features, backbone.extract(image[None])[0], atol=1e-6)


def test_extract_blends_overlap(rng: np.random.Generator) -> None:
    image = _image(rng, 64, 112)
    grid = WindowGrid(64, 112, patch_size=16, window=64, overlap=32)
    backbone = TextureBackbone()
    first = backbone.extract(image[None, :, :, 0:64])[0]
    second = backbone.extract(image[None, :, :, 32:96])[0]
    weights = grid.blend_weights()

    features = extract_patch_features(image, grid, backbone)

    # Patch column 2 is column 2 of the first window and column 0 of the second.
    expected = (weights[:, 2, None] * first[:, 2] + weights[:, 0, None] * second[:, 0]) / (
        weights[:, 2, None] + weights[:, 0, None]
    )
    np.testing.assert_allclose(features[:, 2], expected, atol=1e-5)
    np.testing.assert_allclose(features[:, 0], first[:, 0], atol=1e-6)


def _check_chunks_match(image: np.ndarray, grid: WindowGrid, backbone: Backbone) -> None:
    whole = extract_patch_features(image, grid, backbone, batch_size=3)
    rows, cols = grid.patch_shape

    for patch_rows, patch_cols in _regions(rows, cols):
        part = extract_patch_features(image, grid, backbone, patch_rows=patch_rows, patch_cols=patch_cols,
                                      batch_size=2)

        np.testing.assert_allclose(part, whole[patch_rows, patch_cols], atol=1e-5)


def test_extract_chunks_match_texture(rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)

    _check_chunks_match(image, grid, TextureBackbone())


def test_extract_chunks_match_dinov3(tiny_dinov3: HFBackbone, rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)

    _check_chunks_match(image, grid, tiny_dinov3)


def test_extract_chunk_reads_inside_raster(rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    calls = []

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        calls.append((y0, y1, x0, x1))
        return image[:, y0:y1, x0:x1]

    part = extract_patch_features(read, grid, TextureBackbone(), patch_rows=slice(8, 10), patch_cols=slice(12, 15))

    assert part.shape == (2, 3, 18)
    assert len(calls) == len(grid.windows_touching(slice(8, 10), slice(12, 15)))
    assert all(0 <= y0 < y1 <= 150 and 0 <= x0 < x1 <= 230 for y0, y1, x0, x1 in calls)


def test_extract_on_batch_counts(rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    batches: list[tuple[int, float]] = []

    extract_patch_features(image, grid, TextureBackbone(), batch_size=4,
                           on_batch=lambda n, seconds: batches.append((n, seconds)))

    # 3 x 5 windows: stride 48 over patch grids of 160 and 240 px.
    assert grid.n_windows == 15
    assert [n for n, _ in batches] == [4, 4, 4, 3]
    assert all(seconds >= 0 for _, seconds in batches)


def test_extract_skips_windows_without_valid_pixels(rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    valid = np.zeros((150, 230), dtype=bool)
    valid[:, 120:] = True  # a collar over the left half
    batches: list[int] = []

    masked = extract_patch_features(image, grid, TextureBackbone(), valid=valid,
                                    on_batch=lambda n, seconds: batches.append(n))
    full = extract_patch_features(image, grid, TextureBackbone())

    # Window columns start at 0, 48, 96, 144 and 192 px; those at 0 and 48
    # end before column 120.
    assert sum(batches) == 3 * 3
    patches = patch_validity(valid, 16)
    np.testing.assert_allclose(masked[patches], full[patches], atol=1e-6)
    assert not masked[:, :6].any()


def test_extract_skipped_windows_same_in_chunks(rng: np.random.Generator) -> None:
    image = _image(rng, 150, 230)
    grid = WindowGrid(150, 230, patch_size=16, window=64, overlap=16)
    valid = rng.random((150, 230)) < 0.0005
    whole = extract_patch_features(image, grid, TextureBackbone(), valid=valid)

    for patch_rows, patch_cols in _regions(*grid.patch_shape):
        part = extract_patch_features(image, grid, TextureBackbone(), patch_rows=patch_rows, patch_cols=patch_cols,
                                      valid=valid)

        np.testing.assert_allclose(part, whole[patch_rows, patch_cols], atol=1e-5)


def test_extract_rejects_patch_size_mismatch(rng: np.random.Generator) -> None:
    grid = WindowGrid(64, 64, patch_size=14, window=56, overlap=0)

    with pytest.raises(ConfigurationError, match="grid patch size 14 differs from texture's patch size 16"):
        extract_patch_features(_image(rng, 64, 64), grid, TextureBackbone())


def test_extract_rejects_image_shape(rng: np.random.Generator) -> None:
    grid = WindowGrid(64, 64, patch_size=16, window=64, overlap=0)

    with pytest.raises(InvalidInputError, match=r"expected \(band, 64, 64\)"):
        extract_patch_features(_image(rng, 64, 80), grid, TextureBackbone())


def test_extract_rejects_empty_region(rng: np.random.Generator) -> None:
    grid = WindowGrid(64, 64, patch_size=16, window=64, overlap=0)

    with pytest.raises(InvalidInputError, match="invalid patch_rows"):
        extract_patch_features(_image(rng, 64, 64), grid, TextureBackbone(), patch_rows=slice(2, 2))


def test_patch_validity_half_rule() -> None:
    valid = np.zeros((32, 32), dtype=bool)
    valid[:8, :16] = True      # patch (0, 0): exactly half valid
    valid[16:23, 16:32] = True  # patch (1, 1): 7 of 16 rows valid

    result = patch_validity(valid, 16)

    assert result.tolist() == [[True, False], [False, False]]


def test_patch_validity_edge_patches() -> None:
    valid = np.ones((20, 35), dtype=bool)
    valid[16:, 32:] = False  # the corner patch's 4 x 3 in-raster pixels
    valid[16:18, :16] = False  # 2 of the 4 in-raster rows of patch (1, 0)

    result = patch_validity(valid, 16)

    assert result.shape == (2, 3)
    assert result.tolist() == [[True, True, True], [True, True, False]]


def test_patch_validity_shape_1000x700() -> None:
    assert patch_validity(np.ones((1000, 700), dtype=bool), 16).shape == (63, 44)
    assert patch_validity(np.ones((56, 67), dtype=bool), 14).shape == (4, 5)
