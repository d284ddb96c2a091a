"""Tests of the elbow rule that chooses K."""

import numpy as np
import pytest

from tree_seg.clustering.elbow import choose_elbow, relative_drops, select_k
from tree_seg.clustering.kmeans import l2_normalize
from tree_seg.exceptions import ElbowRangeWarning, InvalidInputError


def _separated_blobs(seed, n_clusters=5, per_cluster=80, dim=16, spread=0.03):
    rng = np.random.default_rng(seed)
    # Orthogonal centres: every pair is sqrt(2) apart, far above the spread.
    centres = np.eye(dim)[:n_clusters]
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    return l2_normalize(centres[truth] + spread * rng.normal(size=(truth.size, dim)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_select_k_five_blobs(seed):
    x = _separated_blobs(seed)

    result = select_k(x, k_min=2, k_max=10, threshold=0.10, seed=seed, n_init=2)

    assert result.k == 5
    assert result.fit.k == 5
    assert not result.hit_top_of_range
    assert result.ks == tuple(range(2, 11))
    assert len(result.inertias) == 9


def test_select_k_drop_after_elbow_is_small():
    x = _separated_blobs(0)

    result = select_k(x, k_min=2, k_max=8, threshold=0.10, seed=0, n_init=2)

    drops = dict(zip(result.ks, result.drops, strict=True))
    assert np.isnan(drops[2])
    assert drops[5] > 0.10
    assert drops[6] < 0.10


def test_select_k_warns_at_top_of_range():
    x = _separated_blobs(1, n_clusters=8)

    with pytest.warns(ElbowRangeWarning, match=r"raise k_max \(the top of --k-range\)"):
        result = select_k(x, k_min=2, k_max=4, threshold=0.10, seed=0, n_init=2)

    assert result.k == 4
    assert result.hit_top_of_range


def test_select_k_single_k_no_search():
    x = _separated_blobs(2)

    result = select_k(x, k_min=3, k_max=3, threshold=0.10, seed=0, n_init=1)

    assert result.k == 3
    assert result.ks == (3,)
    assert not result.hit_top_of_range


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_select_k_exact_fit_stops():
    # Three distinct points repeated: W[3] = 0, so K = 4 gains nothing.
    points = np.eye(4, dtype=np.float32)[:3]
    x = np.repeat(points, 10, axis=0)

    result = select_k(x, k_min=2, k_max=5, threshold=0.10, seed=0, n_init=1)

    assert result.k == 3
    assert result.inertias[1] == pytest.approx(0.0, abs=1e-9)


def test_select_k_rejects_range_above_samples():
    x = _separated_blobs(0, per_cluster=1)

    with pytest.raises(InvalidInputError, match="k_max=10"):
        select_k(x, k_min=2, k_max=10, threshold=0.10, seed=0)


def test_relative_drops_values():
    drops = relative_drops([100.0, 50.0, 45.0, 0.0, 0.0])

    assert np.isnan(drops[0])
    np.testing.assert_allclose(drops[1:], [0.5, 0.1, 1.0, 0.0])


@pytest.mark.parametrize(
    ("inertias", "expected"),
    [
        # Drops 0.5, 0.5, 0.05: K=5 is the first small drop, the elbow is 4.
        ([100.0, 50.0, 25.0, 23.75], (4, False)),
        # First drop already small: the elbow is k_min.
        ([100.0, 99.0, 50.0, 49.0], (2, False)),
        # No small drop: top of the range.
        ([100.0, 50.0, 25.0, 12.5], (5, True)),
    ],
)
def test_choose_elbow_rule(inertias, expected):
    assert choose_elbow((2, 3, 4, 5), np.array(inertias), 0.10) == expected


def test_select_k_warning_keeps_small_threshold_in_percent():
    x = _separated_blobs(1, n_clusters=8)

    with pytest.warns(ElbowRangeWarning, match=r"fell below 0\.0005 \(0\.05%\)"):
        select_k(x, k_min=2, k_max=4, threshold=0.0005, seed=0, n_init=2)


def test_select_k_stops_at_distinct_vectors(recwarn):
    x = l2_normalize(np.repeat(np.eye(3, 8, dtype=np.float32), 20, axis=0))

    result = select_k(x, k_min=2, k_max=6, threshold=0.05, seed=0)

    assert result.ks == (2, 3)
    assert result.k == 3
    assert not result.hit_top_of_range
    assert not [w for w in recwarn if issubclass(w.category, ElbowRangeWarning)]


def test_select_k_uniform_sample_raises():
    x = l2_normalize(np.ones((30, 8), dtype=np.float32))

    with pytest.raises(InvalidInputError, match="only 1 distinct feature vector"):
        select_k(x, k_min=2, k_max=6, threshold=0.05, seed=0)
