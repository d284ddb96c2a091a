"""Tests for tree_seg.models.texture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tree_seg.models.texture import FEATURE_CENTRE, FEATURE_NAMES, FEATURE_SCALE, TextureBackbone


def _uniform(rgb: tuple[float, float, float], size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.float32)[None, :, None, None], (1, 3, size, size)).copy()


def test_texture_output_shape(rng: np.random.Generator) -> None:
    windows = rng.random((3, 3, 48, 80), dtype=np.float32)

    features = TextureBackbone().extract(windows)

    assert features.shape == (3, 3, 5, 18)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert len(FEATURE_NAMES) == 18


def test_texture_uniform_patch_values() -> None:
    features = TextureBackbone().extract(_uniform((0.2, 0.5, 0.1)))[0, 0, 0]
    raw = features * FEATURE_SCALE + FEATURE_CENTRE
    names = dict(zip(FEATURE_NAMES, raw, strict=True))

    np.testing.assert_allclose([names["mean_r"], names["mean_g"], names["mean_b"]], [0.2, 0.5, 0.1], atol=1e-6)
    for name in ("std_r", "std_g", "std_b", "std_l", "std_exg", "mean_gradient", "local_std_3", "local_std_9"):
        assert abs(names[name]) < 1e-3, name
    # Chromaticities are 0.25, 0.625, 0.125, so 2g - r - b = 0.875.
    assert names["mean_exg"] == pytest.approx(0.875, abs=1e-5)
    assert names["mean_a"] < -20  # green has a negative a*


def test_texture_white_lab() -> None:
    raw = TextureBackbone().extract(_uniform((1.0, 1.0, 1.0)))[0, 0, 0] * FEATURE_SCALE + FEATURE_CENTRE
    names = dict(zip(FEATURE_NAMES, raw, strict=True))

    assert names["mean_l"] == pytest.approx(100.0, abs=0.05)
    assert names["mean_a"] == pytest.approx(0.0, abs=0.05)
    assert names["mean_b_star"] == pytest.approx(0.0, abs=0.05)


def test_texture_edges_raise_gradient() -> None:
    flat = _uniform((0.5, 0.5, 0.5))
    stripes = flat.copy()
    stripes[:, :, :, (np.arange(32) // 2) % 2 == 0] = 0.1
    grad = FEATURE_NAMES.index("mean_gradient")

    flat_grad = TextureBackbone().extract(flat)[0, 0, 0, grad]
    stripe_grad = TextureBackbone().extract(stripes)[0, 0, 0, grad]

    assert stripe_grad > flat_grad + 1.0


def test_texture_independent_of_window_position(rng: np.random.Generator) -> None:
    image = rng.random((1, 3, 64, 96), dtype=np.float32)
    backbone = TextureBackbone()

    left = backbone.extract(image[:, :, :, 0:80])
    right = backbone.extract(image[:, :, :, 16:96])

    # Global patch columns 2 and 3 are columns 2-3 of ``left`` and 1-2 of
    # ``right``. The widest filter reaches 4 px, so neither window's edge
    # affects them and both windows must agree.
    np.testing.assert_allclose(left[0, :, 2:4], right[0, :, 1:3], atol=1e-5)


def test_texture_batch_independent(rng: np.random.Generator) -> None:
    windows = rng.random((4, 3, 32, 32), dtype=np.float32)
    backbone = TextureBackbone()

    together = backbone.extract(windows)
    alone = np.concatenate([backbone.extract(windows[i:i + 1]) for i in range(4)])

    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_texture_info() -> None:
    info = TextureBackbone().info()

    assert info["name"] == "texture"
    assert info["family"] == "texture"
    assert info["weights_path"] is None
    assert info["weights_sha256"] is None
    assert info["dtype"] == "float32"


def _many_to_one_miou(clusters: np.ndarray, truth: np.ndarray) -> float:
    predicted = np.zeros_like(truth)
    for cluster in np.unique(clusters):
        members = clusters == cluster
        predicted[members] = np.bincount(truth[members], minlength=2).argmax()
    ious = []
    for cls in (0, 1):
        union = np.sum((predicted == cls) | (truth == cls))
        if union:
            ious.append(np.sum((predicted == cls) & (truth == cls)) / union)
    return float(np.mean(ious))


@pytest.mark.slow
@pytest.mark.shared_data
def test_texture_separates_trees(shared_data: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    from sklearn.cluster import KMeans

    from tree_seg.features import WindowGrid, extract_patch_features, patch_validity

    with rasterio.open(shared_data / "oam_tcd" / "tcd_00004_image.tif") as source:
        pixels = source.read()[:3]
    with rasterio.open(shared_data / "oam_tcd" / "tcd_00004_mask.tif") as source:
        mask = source.read(1)
    image = pixels.astype(np.float32) / 255.0
    valid = ~np.all(pixels == 255, axis=0)
    grid = WindowGrid(*valid.shape, patch_size=16, window=448, overlap=112)

    features = extract_patch_features(image, grid, TextureBackbone(), batch_size=4)
    valid_patches = patch_validity(valid, 16)
    vectors = features[valid_patches]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.full(valid_patches.shape, -1)
    labels[valid_patches] = KMeans(8, n_init=4, random_state=0).fit_predict(vectors)
    pixel_labels = np.repeat(np.repeat(labels, 16, axis=0), 16, axis=1)[: mask.shape[0], : mask.shape[1]]
    scored = (mask != 255) & (pixel_labels >= 0)

    miou = _many_to_one_miou(pixel_labels[scored], mask[scored].astype(np.int64))

    assert miou > 0.72
