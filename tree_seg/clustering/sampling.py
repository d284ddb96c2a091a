"""Deterministic patch sampling keyed by global patch coordinates.

K-means and the elbow curve are fit on a sample of valid patches. Whether a
patch is in the sample depends only on its global coordinates and the seed,
through the splitmix64 hash, so a raster split into chunks yields exactly the
sample of the whole raster.
"""

from __future__ import annotations

import numpy as np

from tree_seg.exceptions import InvalidInputError

__all__ = ["sample_fraction", "sample_patches"]

# splitmix64 constants (Steele, Lea and Flood, "Fast splittable pseudorandom
# number generators", OOPSLA 2014).
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64 without warnings, as the
    # hash requires.
    z = z + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def sample_patches(
    valid: np.ndarray,
    *,
    row0: int = 0,
    col0: int = 0,
    seed: int,
    fraction: float,
) -> np.ndarray:
    """Select a deterministic random subset of the valid patches.

    Each patch gets a uniform number in [0, 1) from a hash of its global
    coordinates ``(row0 + i, col0 + j)`` and ``seed``, and is selected when
    that number is below ``fraction``. The selection of a chunk is therefore
    the selection of the same patches in the whole grid.

    Parameters
    ----------
    valid : ndarray of bool, shape (patch_y, patch_x)
        True on patches that hold data. Invalid patches are never selected.
    row0, col0 : int, default=0
        Global patch coordinates of ``valid[0, 0]``, in patches.
    seed : int
        Seed in [0, 2**64); different seeds give independent samples.
    fraction : float
        Probability that a valid patch is selected, in [0, 1].

    Returns
    -------
    ndarray of bool, shape (patch_y, patch_x)
        True on selected patches.

    Raises
    ------
    InvalidInputError
        If ``valid`` is not 2-D, ``fraction`` is outside [0, 1] or ``seed``
        is negative.
    """
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 2:
        raise InvalidInputError(f"invalid valid mask of shape {valid.shape}: expected (patch_y, patch_x)")
    if not 0.0 <= fraction <= 1.0:
        raise InvalidInputError(f"invalid fraction={fraction!r}: expected a value in [0, 1]")
    if seed < 0:
        raise InvalidInputError(f"invalid seed={seed!r}: expected a non-negative integer")

    rows = (np.arange(valid.shape[0], dtype=np.int64) + row0).astype(np.uint64)
    cols = (np.arange(valid.shape[1], dtype=np.int64) + col0).astype(np.uint64)
    seed_key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))[0]

    # Two rounds: the row hash is folded into the column hash, so
    # neighbouring rows and columns do not share bits.
    row_key = _splitmix64(rows ^ seed_key)
    keys = _splitmix64(row_key[:, None] ^ cols[None, :])

    # The top 53 bits give a uniform float64 in [0, 1).
    uniform = (keys >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return valid & (uniform < fraction)


def sample_fraction(n_valid: int, max_samples: int) -> float:
    """Return the sampling fraction that keeps about ``max_samples`` patches.

    Parameters
    ----------
    n_valid : int
        Number of valid patches in the whole raster.
    max_samples : int
        Largest expected sample size, in patches.

    Returns
    -------
    float
        ``min(1, max_samples / n_valid)``, and 1.0 when ``n_valid`` is 0. The
        sample size is binomial with this probability, so it can exceed
        ``max_samples`` by a few standard deviations (about
        ``sqrt(max_samples)``).

    Raises
    ------
    InvalidInputError
        If ``n_valid`` is negative or ``max_samples`` is below 1.
    """
    if n_valid < 0:
        raise InvalidInputError(f"invalid n_valid={n_valid!r}: expected a non-negative count of patches")
    if max_samples < 1:
        raise InvalidInputError(f"invalid max_samples={max_samples!r}: expected at least 1")
    if n_valid <= max_samples:
        return 1.0
    return max_samples / n_valid
