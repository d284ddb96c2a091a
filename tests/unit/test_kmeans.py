"""Tests of K-means fitting and nearest-centroid assignment."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from tree_seg.clustering import kmeans
from tree_seg.clustering.kmeans import assign, assign_patches, fit_kmeans, l2_normalize
from tree_seg.exceptions import InvalidInputError


def _blobs(rng, n_clusters=4, per_cluster=60, dim=8, spread=0.05):
    centres = l2_normalize(rng.normal(size=(n_clusters, dim)))
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    x = l2_normalize(centres[truth] + spread * rng.normal(size=(truth.size, dim)))
    return x, truth


def test_l2_normalize_unit_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])

    out = l2_normalize(x)

    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-7)


def test_l2_normalize_grid_last_axis(rng):
    out = l2_normalize(rng.normal(size=(5, 6, 7)))

    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


def test_fit_kmeans_deterministic_with_seed(rng):
    x, _ = _blobs(rng, spread=0.4)

    first = fit_kmeans(x, 4, seed=3, n_init=2)
    second = fit_kmeans(x, 4, seed=3, n_init=2)

    np.testing.assert_array_equal(first.centroids, second.centroids)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.inertia == second.inertia


def test_fit_kmeans_recovers_blobs(rng):
    x, truth = _blobs(rng)

    fit = fit_kmeans(x, 4, seed=0)

    assert fit.centroids.shape == (4, 8)
    assert fit.centroids.dtype == np.float32
    assert fit.k == 4
    assert adjusted_rand_score(truth, fit.labels) == 1.0
    # Inertia equals the sum of squared distances to the assigned centroid.
    expected = float(((x - fit.centroids[fit.labels]) ** 2).sum())
    assert fit.inertia == pytest.approx(expected, rel=1e-4)


def test_fit_kmeans_rejects_k_above_n(rng):
    x = l2_normalize(rng.normal(size=(3, 4)))

    with pytest.raises(InvalidInputError, match="k=5"):
        fit_kmeans(x, 5, seed=0)


def test_fit_kmeans_rejects_nan(rng):
    x = l2_normalize(rng.normal(size=(10, 4)))
    x[2, 1] = np.nan

    with pytest.raises(InvalidInputError, match="NaN"):
        fit_kmeans(x, 2, seed=0)


def test_assign_matches_brute_force(rng, monkeypatch):
    monkeypatch.setattr(kmeans, "_ASSIGN_BLOCK_ROWS", 7)
    x = l2_normalize(rng.normal(size=(50, 6)))
    centroids = l2_normalize(rng.normal(size=(5, 6)))

    labels, sq_distances = assign(x, centroids)

    brute = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, brute.argmin(axis=1))
    np.testing.assert_allclose(sq_distances, brute.min(axis=1), atol=1e-5)
    assert sq_distances.dtype == np.float32
    assert np.all(sq_distances >= 0.0)


def test_assign_identical_point_distance_zero():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)

    labels, sq_distances = assign(centroids.copy(), centroids)

    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_array_equal(sq_distances, [0.0, 0.0])


def test_assign_rejects_dimension_mismatch():
    with pytest.raises(InvalidInputError, match=r"features \(4, 3\) and centroids \(2, 5\)"):
        assign(np.zeros((4, 3)), np.zeros((2, 5)))


def test_assign_patches_marks_invalid(rng):
    features = l2_normalize(rng.normal(size=(4, 5, 3)))
    features[0, 0] = np.nan
    valid = np.ones((4, 5), dtype=bool)
    valid[0, 0] = False
    centroids = l2_normalize(rng.normal(size=(3, 3)))

    labels, sq_distances = assign_patches(features, valid, centroids)

    assert labels[0, 0] == -1
    assert np.isnan(sq_distances[0, 0])
    expected, _ = assign(features[valid], centroids)
    np.testing.assert_array_equal(labels[valid], expected)


def test_cluster_model_one_patch_says_input_too_small():
    from tree_seg.clustering.model import fit_cluster_model
    from tree_seg.config import ClusterConfig

    with pytest.raises(InvalidInputError, match=r"only 1 valid patch\(es\): clustering needs at least 2"):
        fit_cluster_model(np.ones((1, 4), dtype=np.float32), 1, ClusterConfig())


def test_cluster_model_fewer_patches_than_k_names_k():
    from tree_seg.clustering.model import fit_cluster_model
    from tree_seg.config import ClusterConfig

    sample = np.eye(4, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="only 4 valid patches for K=6: use a smaller --k"):
        fit_cluster_model(sample, 4, ClusterConfig(k=6))


def test_fit_kmeans_duplicates_fewer_than_k_raise():
    # Two distinct vectors, each repeated: a third cluster would stay empty.
    x = l2_normalize(np.repeat(np.eye(2, 8, dtype=np.float32), 20, axis=0))

    with pytest.raises(kmeans.TooFewDistinctError, match="only 2 distinct feature vector") as error:
        fit_kmeans(x, 3, seed=0)

    assert error.value.distinct == 2
    assert fit_kmeans(x, 2, seed=0).inertia == pytest.approx(0.0, abs=1e-6)


def test_fit_cluster_model_uniform_sample_raises():
    from tree_seg.clustering.model import fit_cluster_model
    from tree_seg.config import ClusterConfig

    sample = l2_normalize(np.ones((50, 16), dtype=np.float32) + np.float32(1e-9) * np.arange(16, dtype=np.float32))

    with pytest.raises(InvalidInputError, match="the raster looks uniform"):
        fit_cluster_model(sample, 50, ClusterConfig(k=3))


def test_fit_cluster_model_two_surfaces_fit():
    from tree_seg.clustering.model import fit_cluster_model
    from tree_seg.config import ClusterConfig

    sample = l2_normalize(np.repeat(np.eye(2, 16, dtype=np.float32), 25, axis=0))

    model = fit_cluster_model(sample, 50, ClusterConfig(k=2))

    assert model.k == 2
    assert model.inertia == pytest.approx(0.0, abs=1e-6)
