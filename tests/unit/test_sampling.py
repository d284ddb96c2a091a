"""Tests of the deterministic patch sampler."""

import numpy as np
import pytest

from tree_seg.clustering.sampling import sample_fraction, sample_patches
from tree_seg.exceptions import InvalidInputError


def _chunked_sample(valid, chunk_rows, chunk_cols, *, seed, fraction):
    out = np.zeros_like(valid)
    for row0 in range(0, valid.shape[0], chunk_rows):
        for col0 in range(0, valid.shape[1], chunk_cols):
            window = np.s_[row0:row0 + chunk_rows, col0:col0 + chunk_cols]
            out[window] = sample_patches(valid[window], row0=row0, col0=col0, seed=seed, fraction=fraction)
    return out


@pytest.mark.parametrize("chunk", [(1, 1), (7, 5), (16, 64), (37, 53)])
def test_sample_patches_independent_of_chunking(rng, chunk):
    valid = rng.random((37, 53)) > 0.2
    whole = sample_patches(valid, seed=11, fraction=0.3)

    chunked = _chunked_sample(valid, *chunk, seed=11, fraction=0.3)

    np.testing.assert_array_equal(chunked, whole)


def test_sample_patches_fraction_of_valid():
    valid = np.ones((200, 200), dtype=bool)

    count = int(sample_patches(valid, seed=3, fraction=0.25).sum())

    # Binomial(40000, 0.25): standard deviation about 87 patches.
    assert abs(count - 10_000) < 4 * 87


def test_sample_patches_never_selects_invalid(rng):
    valid = rng.random((50, 50)) > 0.5

    sample = sample_patches(valid, seed=0, fraction=1.0)

    np.testing.assert_array_equal(sample, valid)


def test_sample_patches_seed_changes_sample():
    valid = np.ones((64, 64), dtype=bool)

    first = sample_patches(valid, seed=1, fraction=0.5)
    second = sample_patches(valid, seed=2, fraction=0.5)

    assert np.array_equal(first, sample_patches(valid, seed=1, fraction=0.5))
    # Independent samples agree on about half of the patches.
    assert 0.4 < float(np.mean(first == second)) < 0.6


def test_sample_patches_rows_and_columns_uncorrelated():
    valid = np.ones((256, 256), dtype=bool)

    sample = sample_patches(valid, seed=5, fraction=0.5)

    row_rates = sample.mean(axis=1)
    col_rates = sample.mean(axis=0)
    # Each rate is a mean of 256 fair coins: standard deviation 1/32.
    assert np.all(np.abs(row_rates - 0.5) < 5 / 32)
    assert np.all(np.abs(col_rates - 0.5) < 5 / 32)


def test_sample_patches_offset_is_global_position():
    valid = np.ones((40, 40), dtype=bool)
    whole = sample_patches(valid, seed=9, fraction=0.4)

    part = sample_patches(valid[13:29, 7:31], row0=13, col0=7, seed=9, fraction=0.4)

    np.testing.assert_array_equal(part, whole[13:29, 7:31])


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_sample_patches_rejects_fraction(fraction):
    with pytest.raises(InvalidInputError, match="invalid fraction"):
        sample_patches(np.ones((3, 3), dtype=bool), seed=0, fraction=fraction)


def test_sample_patches_rejects_non_grid():
    with pytest.raises(InvalidInputError, match=r"shape \(3,\)"):
        sample_patches(np.ones(3, dtype=bool), seed=0, fraction=0.5)


@pytest.mark.parametrize(
    ("n_valid", "max_samples", "expected"),
    [(100, 50, 0.5), (10, 50, 1.0), (50, 50, 1.0), (0, 50, 1.0), (1_000_000, 50_000, 0.05)],
)
def test_sample_fraction_values(n_valid, max_samples, expected):
    assert sample_fraction(n_valid, max_samples) == pytest.approx(expected)


def test_sample_fraction_rejects_negative_count():
    with pytest.raises(InvalidInputError, match="n_valid=-1"):
        sample_fraction(-1, 10)
