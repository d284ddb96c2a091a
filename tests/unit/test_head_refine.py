"""Tests of the V2 head refinement (soft EM with a spatial blend)."""

import math

import numpy as np
import pytest
import torch

from tree_seg.clustering.blend import blend_halo, prepare_guide
from tree_seg.clustering.head_refine import (
    PRIOR_FLOOR,
    EMStats,
    aggregate,
    em_chunk,
    labels_from_responsibilities,
    log_priors_from_mass,
    nearest_margins,
    refine,
    tau_from_margins,
)
from tree_seg.clustering.kmeans import assign_patches, fit_kmeans, l2_normalize
from tree_seg.config import HeadRefineConfig
from tree_seg.exceptions import ConfigurationError, InvalidInputError, RefinementFallbackWarning


def _block_map(height, width, block):
    rows = np.arange(height)[:, None] // block
    cols = np.arange(width)[None, :] // block
    return ((rows + 2 * cols) % 4).astype(np.int64)


def _features(rng, truth, *, dim=16, noise=0.1, n_clusters=4):
    centres = np.eye(dim, dtype=np.float32)[:n_clusters]
    return l2_normalize(centres[truth] + noise * rng.normal(size=(*truth.shape, dim)))


def _kmeans(features, valid, k, seed=0):
    fit = fit_kmeans(features[valid], k, seed=seed, n_init=2)
    labels, _ = assign_patches(features, valid, fit.centroids)
    return fit.centroids, labels


def _guide_from_labels(labels, patch_size):
    grey = (labels.astype(np.float32) + 0.5) / 4.0
    return np.repeat(np.repeat(grey, patch_size, axis=0), patch_size, axis=1)[None]


def _isolated(labels):
    # A valid patch none of whose 4-neighbours inside the grid shares its label.
    padded = np.pad(labels, 1, constant_values=-2)
    centre = padded[1:-1, 1:-1]
    same = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] == centre
    return int(((labels >= 0) & ~same).sum())


@pytest.mark.parametrize("blend", ["neighbour", "guided"])
def test_refine_alpha_zero_small_tau_is_kmeans(rng, blend):
    truth = _block_map(24, 24, 6)
    features = _features(rng, truth, noise=0.05)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend=blend, alpha=0.0, tau=1e-4, guide_stride=4)

    result = refine(features, valid, centroids, config, patch_size=16,
                    guide=_guide_from_labels(truth, 16), kmeans_labels=km_labels)

    factor = 16 // result.cell_size
    expected = np.repeat(np.repeat(km_labels, factor, axis=0), factor, axis=1)
    assert not result.fell_back
    np.testing.assert_array_equal(result.labels, expected)


def test_refine_neighbour_removes_isolated_patches(rng):
    truth = _block_map(32, 32, 8)
    flips = rng.random(truth.shape) < 0.10
    noisy = np.where(flips, (truth + rng.integers(1, 4, size=truth.shape)) % 4, truth)
    features = _features(rng, noisy, noise=0.05)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend="neighbour", alpha=0.75)

    result = refine(features, valid, centroids, config, patch_size=16, kmeans_labels=km_labels)

    isolated_kmeans = _isolated(km_labels)
    isolated_refined = _isolated(result.labels)
    assert isolated_kmeans > 50
    assert isolated_refined < isolated_kmeans / 4


def test_refine_guided_follows_guide(rng):
    truth = _block_map(24, 24, 6)
    flips = rng.random(truth.shape) < 0.10
    noisy = np.where(flips, (truth + 1) % 4, truth)
    features = _features(rng, noisy, noise=0.05)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend="guided", alpha=0.9, guide_stride=4, guided_radius=4)

    result = refine(features, valid, centroids, config, patch_size=16,
                    guide=_guide_from_labels(truth, 16), kmeans_labels=km_labels)

    # Map clusters to classes by majority, then score against the truth on cells.
    truth_cells = np.repeat(np.repeat(truth, 4, axis=0), 4, axis=1)
    km_cells = np.repeat(np.repeat(km_labels, 4, axis=0), 4, axis=1)

    def accuracy(labels):
        mapping = {c: np.bincount(truth_cells[labels == c]).argmax() for c in np.unique(labels)}
        return float(np.mean(np.vectorize(mapping.get)(labels) == truth_cells))

    assert accuracy(km_cells) < 0.93
    assert accuracy(result.labels) > accuracy(km_cells) + 0.04


def _pad_chunk(array, top, bottom, left, right, halo, fill):
    # Slice [top - halo, bottom + halo) x [left - halo, right + halo), with
    # `fill` where the window leaves the array.
    height, width = array.shape[-2:]
    out = np.full((*array.shape[:-2], bottom - top + 2 * halo, right - left + 2 * halo), fill,
                  dtype=array.dtype)
    y0, y1 = max(top - halo, 0), min(bottom + halo, height)
    x0, x1 = max(left - halo, 0), min(right + halo, width)
    out[..., y0 - (top - halo):y1 - (top - halo), x0 - (left - halo):x1 - (left - halo)] = array[..., y0:y1, x0:x1]
    return out


@pytest.mark.parametrize("blend", ["neighbour", "guided"])
def test_em_chunk_chunked_equals_whole(rng, blend):
    patch_size = 8
    truth = _block_map(23, 29, 5)
    features = _features(rng, truth, dim=8, noise=0.4)
    valid = np.ones(truth.shape, dtype=bool)
    valid[3:7, 20:25] = False
    features[~valid] = np.nan
    guide = rng.random((3, 23 * patch_size, 29 * patch_size)).astype(np.float32)
    guide_valid = np.ones(guide.shape[1:], dtype=bool)
    guide_valid[50:61, 10:90] = False
    config = HeadRefineConfig(blend=blend, alpha=0.6, guide_stride=2, guided_radius=4)
    centroids = l2_normalize(rng.normal(size=(3, 8)))
    log_priors = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    kwargs = {"patch_size": patch_size}
    if blend == "guided":
        kwargs |= {"guide": guide, "guide_valid": guide_valid}

    whole, whole_stats = em_chunk(features, valid, centroids, log_priors, 0.1, config, halo=0, **kwargs)

    halo = blend_halo(config, patch_size)
    factor = whole.shape[1] // truth.shape[0]
    combined = EMStats.zeros(3, 8)
    for top, bottom in ((0, 10), (10, 23)):
        for left, right in ((0, 13), (13, 29)):
            chunk_kwargs = {"patch_size": patch_size}
            if blend == "guided":
                pixel_box = (top * patch_size, bottom * patch_size, left * patch_size, right * patch_size)
                chunk_kwargs |= {
                    "guide": _pad_chunk(guide, *pixel_box, halo * patch_size, 0.0),
                    "guide_valid": _pad_chunk(guide_valid, *pixel_box, halo * patch_size, False),
                }
            resp, stats = em_chunk(
                np.moveaxis(_pad_chunk(np.moveaxis(features, 2, 0), top, bottom, left, right, halo, np.nan), 0, 2),
                _pad_chunk(valid, top, bottom, left, right, halo, False),
                centroids, log_priors, 0.1, config, halo=halo, **chunk_kwargs,
            )
            expected = whole[:, top * factor:bottom * factor, left * factor:right * factor]
            np.testing.assert_allclose(resp, expected, atol=1e-6, rtol=0)
            combined = combined.combine(stats)

    assert combined.n_valid == whole_stats.n_valid
    np.testing.assert_allclose(combined.sum_r, whole_stats.sum_r, rtol=1e-6)
    np.testing.assert_allclose(combined.sum_rx, whole_stats.sum_rx, rtol=1e-5, atol=1e-5)
    chunked_centroids, chunked_priors = aggregate(combined, centroids)
    whole_centroids, whole_priors = aggregate(whole_stats, centroids)
    np.testing.assert_allclose(chunked_centroids, whole_centroids, atol=1e-6)
    np.testing.assert_allclose(chunked_priors, whole_priors, atol=1e-6)


def test_em_chunk_statistics_only_returns_no_responsibilities(rng):
    features = l2_normalize(rng.normal(size=(6, 7, 5)))
    valid = np.ones((6, 7), dtype=bool)
    centroids = l2_normalize(rng.normal(size=(3, 5)))
    config = HeadRefineConfig(blend="neighbour", alpha=0.5)

    resp, stats = em_chunk(features, valid, centroids, np.zeros(3), 0.2, config, halo=1, patch_size=16,
                           responsibilities=False)
    full, full_stats = em_chunk(features, valid, centroids, np.zeros(3), 0.2, config, halo=1, patch_size=16)

    assert resp is None
    assert full.shape == (3, 4, 5)
    assert stats.n_valid == full_stats.n_valid == 20
    np.testing.assert_array_equal(stats.sum_rx, full_stats.sum_rx)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (70, 90)])
def test_e_step_products_match_the_matrix_product(rng, shape):
    from tree_seg.clustering.em import _scaled_products

    features = torch.as_tensor(l2_normalize(rng.normal(size=(*shape, 24))))
    centroids = torch.as_tensor(l2_normalize(rng.normal(size=(6, 24))))
    bias = torch.as_tensor(rng.normal(size=6), dtype=torch.float32)

    out = _scaled_products(features, centroids, 3.5, bias)

    expected = bias.double() + 3.5 * features.reshape(-1, 24).double() @ centroids.double().T
    assert out.shape == (*shape, 6)
    torch.testing.assert_close(out.double(), expected.reshape(*shape, 6), atol=1e-5, rtol=1e-6)


def test_softmax_huge_logits_stays_exact(rng):
    from tree_seg.clustering.head_refine import _softmax_last

    logits = torch.as_tensor(rng.normal(size=(5, 7, 8)) * 3.0, dtype=torch.float32)
    # Spreads of 1e4 make exp() overflow unless each patch's largest logit
    # is subtracted first.
    logits[0, 0] = torch.tensor([1e4, -1e4, 0.0, 5e3, 1e4 - 1.0, -3.0, 2.0, 1.0])

    expected = torch.softmax(logits.double(), dim=-1)
    out = _softmax_last(logits.clone())

    assert out.dtype == torch.float32
    assert out.shape == (5, 7, 8)
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-5)
    assert out[0, 0, 0] == pytest.approx(1.0 / (1.0 + math.exp(-1.0)), rel=1e-6)


def test_em_chunk_statistics_match_float64_sums(rng):
    # 65 x 127 patches: two full blocks of the batched M-step product and a rest.
    features = l2_normalize(rng.normal(size=(65, 127, 12)))
    valid = rng.random((65, 127)) > 0.1
    features[~valid] = np.nan
    centroids = l2_normalize(rng.normal(size=(4, 12)))
    config = HeadRefineConfig(blend="neighbour", alpha=0.3)

    resp, stats = em_chunk(features, valid, centroids, np.zeros(4), 0.3, config, halo=0, patch_size=16)

    weights = resp.reshape(4, -1).astype(np.float64)
    x = np.where(valid[..., None], features, 0.0).reshape(-1, 12).astype(np.float64)
    assert stats.n_valid == int(valid.sum())
    np.testing.assert_allclose(stats.sum_r, weights.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats.sum_rx, weights @ x, rtol=1e-6, atol=1e-6)


def test_em_chunk_output_shapes(rng):
    features = l2_normalize(rng.normal(size=(10, 12, 4)))
    valid = np.ones((10, 12), dtype=bool)
    centroids = l2_normalize(rng.normal(size=(3, 4)))
    config = HeadRefineConfig(blend="guided", guide_stride=4, guided_radius=2)

    resp, stats = em_chunk(features, valid, centroids, np.zeros(3), 0.1, config, halo=2, patch_size=16,
                           guide=np.zeros((3, 160, 192), dtype=np.float32))

    assert resp.shape == (3, 6 * 4, 8 * 4)
    assert resp.dtype == np.float32
    assert stats.n_valid == 6 * 8
    assert stats.sum_r.dtype == np.float64
    assert stats.sum_rx.shape == (3, 4)
    np.testing.assert_allclose(stats.sum_r.sum(), 48.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("features_shape", "valid_shape", "centroids_shape", "message"),
    [
        ((5, 7, 4), (5, 6), (3, 4), r"valid \(5, 6\) must equal .* features \(5, 7, 4\)"),
        ((5, 7, 4), (5, 7), (3, 5), r"centroids \(3, 5\) must be \(K, D\) with D = 4"),
        ((5, 7, 4), (5, 7), (1, 4), r"centroids of shape \(1, 4\): refinement needs K >= 2"),
        ((35, 4), (5, 7), (3, 4), r"features of shape \(35, 4\)"),
    ],
)
def test_refine_rejects_shapes(features_shape, valid_shape, centroids_shape, message):
    with pytest.raises(InvalidInputError, match=message):
        refine(np.ones(features_shape, dtype=np.float32), np.ones(valid_shape, dtype=bool),
               np.ones(centroids_shape, dtype=np.float32), HeadRefineConfig(blend="neighbour"), patch_size=16)


def test_refine_rejects_nan_on_valid_patch(rng):
    features = l2_normalize(rng.normal(size=(4, 4, 3)))
    features[1, 2, 0] = np.nan
    valid = np.ones((4, 4), dtype=bool)

    with pytest.raises(InvalidInputError, match="NaN or infinite values on valid patches"):
        refine(features, valid, np.eye(3, dtype=np.float32)[:2], HeadRefineConfig(blend="neighbour", tau=0.1),
               patch_size=16)

    # The same NaN on an invalid patch is ignored.
    valid[1, 2] = False
    result = refine(features, valid, np.eye(3, dtype=np.float32)[:2],
                    HeadRefineConfig(blend="neighbour", tau=0.1, alpha=0.0), patch_size=16)
    assert result.labels[1, 2] == -1
    assert np.isfinite(result.responsibilities).all()


def test_refine_guided_needs_guide(rng):
    features = l2_normalize(rng.normal(size=(4, 4, 3)))

    with pytest.raises(InvalidInputError, match="needs the image as guide"):
        refine(features, np.ones((4, 4), dtype=bool), np.eye(3, dtype=np.float32)[:2],
               HeadRefineConfig(blend="guided"), patch_size=16)


def test_aggregate_empty_cluster_keeps_centroid():
    previous = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    stats = EMStats(sum_r=np.array([10.0, 0.0, 5.0]),
                    sum_rx=np.array([[6.0, 8.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -5.0]]), n_valid=15)

    centroids, log_priors = aggregate(stats, previous)
    again = aggregate(stats, previous)

    np.testing.assert_allclose(centroids, [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]], atol=1e-7)
    priors = np.array([10 / 15, PRIOR_FLOOR, 5 / 15])
    np.testing.assert_allclose(np.exp(log_priors), priors / priors.sum(), rtol=1e-6)
    np.testing.assert_array_equal(again[0], centroids)
    np.testing.assert_array_equal(again[1], log_priors)


def test_aggregate_equal_priors_when_disabled():
    stats = EMStats(sum_r=np.array([9.0, 1.0]), sum_rx=np.array([[9.0, 0.0], [0.0, 1.0]]), n_valid=10)

    _, log_priors = aggregate(stats, np.eye(2, dtype=np.float32), priors=False)

    np.testing.assert_allclose(log_priors, [math.log(0.5)] * 2, rtol=1e-6)


def test_refine_empty_cluster_deterministic(rng):
    truth = _block_map(16, 16, 4) % 2
    features = _features(rng, truth, dim=6, noise=0.05, n_clusters=2)
    valid = np.ones(truth.shape, dtype=bool)
    # The third centroid is opposite to every patch, so no patch ever picks it.
    centroids = np.array([np.eye(6)[0], np.eye(6)[1], -np.ones(6) / math.sqrt(6)], dtype=np.float32)
    config = HeadRefineConfig(blend="neighbour", tau=0.01, iterations=3, tol=0.0, priors=True)

    first = refine(features, valid, centroids, config, patch_size=16)
    second = refine(features, valid, centroids, config, patch_size=16)

    assert not first.fell_back
    np.testing.assert_array_equal(first.centroids[2], centroids[2])
    assert first.priors[2] == pytest.approx(PRIOR_FLOOR, rel=1e-3)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    np.testing.assert_array_equal(first.responsibilities, second.responsibilities)


def test_refine_falls_back_on_collapse(rng):
    truth = (np.arange(12)[:, None] < 8).repeat(12, axis=1).astype(np.int64)
    features = _features(rng, truth, dim=4, noise=0.05, n_clusters=2)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 2)
    # With tau = 100 every patch's responsibilities equal the priors, so the
    # larger cluster wins everywhere.
    config = HeadRefineConfig(blend="neighbour", tau=100.0, alpha=0.0, priors=True, iterations=5)

    with pytest.warns(RefinementFallbackWarning, match="only 1 of 2 clusters"):
        result = refine(features, valid, centroids, config, patch_size=16, kmeans_labels=km_labels)

    assert result.fell_back
    assert "only 1 of 2 clusters" in result.fallback_reason
    np.testing.assert_array_equal(result.labels, km_labels)
    assert result.cell_size == 16
    np.testing.assert_array_equal(labels_from_responsibilities(result.responsibilities), km_labels)


def test_refine_falls_back_without_valid_patches(rng):
    features = l2_normalize(rng.normal(size=(3, 3, 4)))

    with pytest.warns(RefinementFallbackWarning, match="no valid patches"):
        result = refine(features, np.zeros((3, 3), dtype=bool), np.eye(4, dtype=np.float32)[:2],
                        HeadRefineConfig(blend="neighbour"), patch_size=16)

    assert result.fell_back
    np.testing.assert_array_equal(result.labels, -1)


def test_refine_priors_shift_boundary(rng):
    # Two overlapping clusters on the unit circle, 90 % and 10 % of patches.
    minority = rng.random((40, 40)) < 0.1
    angles = np.where(minority, 1.0, 0.0) + 0.3 * rng.normal(size=minority.shape)
    features = np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)
    valid = np.ones(minority.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 2)
    majority_cluster = int(np.bincount(km_labels.ravel()).argmax())

    counts = {}
    for priors in (False, True):
        config = HeadRefineConfig(blend="neighbour", alpha=0.0, tau=0.05, priors=priors, iterations=5)
        result = refine(features, valid, centroids, config, patch_size=16, kmeans_labels=km_labels)
        counts[priors] = int((result.labels == majority_cluster).sum())
        if not priors:
            np.testing.assert_allclose(result.priors, [0.5, 0.5])

    assert counts[True] > counts[False] + 20


def test_em_chunk_prepared_guide_same(rng):
    features = l2_normalize(rng.normal(size=(6, 7, 4)))
    valid = np.ones((6, 7), dtype=bool)
    centroids = l2_normalize(rng.normal(size=(3, 4)))
    guide = rng.random((3, 6 * 8, 7 * 8)).astype(np.float32)
    config = HeadRefineConfig(blend="guided", guide_stride=2, guided_radius=2)

    raw, _ = em_chunk(features, valid, centroids, np.zeros(3), 0.1, config, halo=0, patch_size=8, guide=guide)
    cells = prepare_guide(guide, None, grid_shape=(6, 7), patch_size=8, config=config)
    prepared, _ = em_chunk(features, valid, centroids, np.zeros(3), 0.1, config, halo=0, patch_size=8, guide=cells)

    np.testing.assert_array_equal(prepared, raw)


def test_refine_rejects_stride_not_dividing(rng):
    features = l2_normalize(rng.normal(size=(4, 4, 3)))
    config = HeadRefineConfig(blend="guided", guide_stride=4)

    with pytest.raises(ConfigurationError, match="guide_stride=4"):
        refine(features, np.ones((4, 4), dtype=bool), np.eye(3, dtype=np.float32)[:2], config, patch_size=14,
               guide=np.zeros((3, 56, 56), dtype=np.float32))


def test_log_priors_from_mass_floor():
    log_priors = log_priors_from_mass(np.array([3.0, 1.0, 0.0]))

    expected = np.array([0.75, 0.25, PRIOR_FLOOR])
    np.testing.assert_allclose(np.exp(log_priors), expected / expected.sum(), rtol=1e-6)
    np.testing.assert_allclose(log_priors_from_mass(np.array([3.0, 1.0]), priors=False), [math.log(0.5)] * 2)
    np.testing.assert_allclose(log_priors_from_mass(np.zeros(4)), [math.log(0.25)] * 4)


def test_tau_from_margins_median_rule():
    assert tau_from_margins(np.array([0.1, 0.2, 0.3])) == pytest.approx(0.2 / math.log(19))
    assert tau_from_margins(np.zeros(4)) == pytest.approx(1e-6)


def test_tau_from_margins_rejects_empty():
    with pytest.raises(InvalidInputError, match="from 0 margins"):
        tau_from_margins(np.array([]))


def test_nearest_margins_hand_computed():
    features = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=np.float32)
    centroids = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)

    margins = nearest_margins(features, np.ones((1, 2), dtype=bool), centroids)

    # Patch 0: distances 0, 2, 0.8. Patch 1: 2, 0, 0.4.
    np.testing.assert_allclose(margins, [0.8, 0.4], atol=1e-6)


def test_refine_accepts_tensors(rng):
    truth = _block_map(12, 12, 4)
    features = _features(rng, truth, noise=0.2)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, _ = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend="neighbour")

    from_numpy = refine(features, valid, centroids, config, patch_size=16)
    from_torch = refine(torch.from_numpy(features), torch.from_numpy(valid), torch.from_numpy(centroids), config,
                        patch_size=16)

    np.testing.assert_array_equal(from_numpy.labels, from_torch.labels)
    np.testing.assert_allclose(from_numpy.responsibilities, from_torch.responsibilities, atol=1e-6)


def test_refine_one_iteration_keeps_centroids(rng):
    truth = _block_map(12, 12, 4)
    features = _features(rng, truth, noise=0.2)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, km_labels = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend="neighbour", iterations=1, priors=True)

    result = refine(features, valid, centroids, config, patch_size=16, kmeans_labels=km_labels)

    assert result.iterations_run == 1
    assert not result.converged
    np.testing.assert_allclose(result.centroids, l2_normalize(centroids), atol=1e-6)
    counts = np.bincount(km_labels.ravel(), minlength=4)
    np.testing.assert_allclose(result.priors, counts / counts.sum(), rtol=1e-5)


def test_refine_converges_early(rng):
    truth = _block_map(16, 16, 4)
    features = _features(rng, truth, noise=0.02)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, _ = _kmeans(features, valid, 4)
    config = HeadRefineConfig(blend="neighbour", alpha=0.0, iterations=20, tol=1e-3)

    result = refine(features, valid, centroids, config, patch_size=16)

    assert result.converged
    assert result.iterations_run < 20
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(result.priors.sum(), 1.0, rtol=1e-6)
    assert result.tau > 0


def test_refine_auto_tau_uses_sample_margins(rng):
    truth = _block_map(16, 16, 4)
    features = _features(rng, truth, noise=0.2)
    valid = np.ones(truth.shape, dtype=bool)
    centroids, _ = _kmeans(features, valid, 4)
    sample = np.zeros(truth.shape, dtype=bool)
    sample[:8] = True
    config = HeadRefineConfig(blend="neighbour", tau="auto")
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    whole = refine(features, valid, centroids, config, patch_size=16)
    sampled = refine(features, valid, centroids, config, patch_size=16, tau_sample=sample)
    fixed = refine(features, valid, centroids, HeadRefineConfig(blend="neighbour"), patch_size=16)

    assert whole.tau == pytest.approx(tau_from_margins(nearest_margins(features, valid, unit)), rel=1e-6)
    assert sampled.tau == pytest.approx(tau_from_margins(nearest_margins(features, sample, unit)), rel=1e-6)
    assert sampled.tau != pytest.approx(whole.tau, rel=1e-3)
    assert fixed.tau == 0.05


def test_describe_convergence_names_each_case():
    from tree_seg.clustering.head_refine import describe_convergence

    assert describe_convergence(0, False) == "no M-step"
    assert describe_convergence(2, True) == "converged"
    assert describe_convergence(4, False) == "not converged after 4 M-steps"
