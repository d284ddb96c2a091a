"""Chunk layouts and halos of the Dask engine, as pure arithmetic.

The engine splits work two ways:

- The feature pass and the EM iterations work on the *patch grid* of the
  resampled image. Their chunks are squares of ``side`` patches, where
  ``side`` is a multiple of the window stride in patches (see
  :func:`patch_chunk_side`), so that chunk edges fall on window origins.
- Each window of the feature pass belongs to the chunk that contains its
  origin (:class:`WindowOwnership`), so that it runs through the backbone
  once. A window whose patches reach into another chunk is a *seam window*:
  its owner stores its features for the neighbours to blend.
- The label pass works on *input pixels*, in squares of ``chunk_size`` pixels,
  so the label store and the label GeoTIFF get chunk-aligned writes.

A halo (Dask's ``depth``) is a margin read around a chunk. Near the raster
edge it reaches past the grid. :func:`halo_slices` returns how much of it
lies outside, so callers can pad that part as invalid rather than shrink it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from tree_seg.exceptions import ConfigurationError
from tree_seg.features.grid import WindowGrid

__all__ = [
    "Block",
    "HaloSlice",
    "SeamWork",
    "WindowOwnership",
    "block_grid",
    "halo_slices",
    "iter_blocks",
    "patch_chunk_side",
    "slic_depth",
]


@dataclass(frozen=True)
class Block:
    """One chunk of a 2-D grid.

    Attributes
    ----------
    index : tuple of int
        (row, col) position of the chunk in the chunk grid.
    rows, cols : slice
        Global extent of the chunk, ``start:stop`` in grid units: patches
        for feature chunks, pixels for label chunks.
    """

    index: tuple[int, int]
    rows: slice
    cols: slice

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) size of the chunk in grid units."""
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


@dataclass(frozen=True)
class HaloSlice:
    """A chunk's extent grown by a halo on one axis, clipped to the grid.

    Attributes
    ----------
    read : slice
        The part of the grown extent inside the grid, in global grid units.
    pad_before, pad_after : int
        How far the grown extent reaches past the grid's first and last
        index; that margin must be filled (as invalid) by the caller.
    """

    read: slice
    pad_before: int
    pad_after: int


def patch_chunk_side(chunk_size: int, *, scale: float, patch_size: int, window: int, overlap: int) -> int:
    """Return the side, in patches, of the feature-pass chunks.

    The rule: the window stride in patches, ``s = (window - overlap) //
    patch_size``, times the smallest whole number of strides whose resampled
    pixels cover ``chunk_size * scale``::

        side = s * max(1, ceil(chunk_size * scale / (s * patch_size)))

    With the defaults (``chunk_size`` 2048, window 448, overlap 112, patch
    16, scale 1) the stride is 21 patches and a chunk is 147 patches, 2352
    pixels. A chunk side therefore spans at least ``chunk_size * scale``
    resampled pixels and less than one stride more, so a raster of
    ``chunk_size`` pixels is one chunk. Rounding down instead split such a
    raster into four chunks, three of them slivers of two patches that
    recomputed whole windows.

    Parameters
    ----------
    chunk_size : int
        Chunk side in input pixels.
    scale : float
        Resampling factor before feature extraction.
    patch_size : int
        Backbone patch side in pixels of the resampled image.
    window, overlap : int
        Window side and overlap in pixels of the resampled image; multiples
        of ``patch_size``.

    Returns
    -------
    int
        Chunk side in patches, a positive multiple of the stride in patches.

    Raises
    ------
    ConfigurationError
        If ``window - overlap`` is not a positive multiple of ``patch_size``.
    """
    stride = window - overlap
    if stride <= 0 or stride % patch_size:
        raise ConfigurationError(
            f"invalid window={window}, overlap={overlap}: the stride {stride} must be a positive multiple of "
            f"the patch size {patch_size}"
        )
    stride_patches = stride // patch_size
    strides = math.ceil(chunk_size * scale / stride)
    return stride_patches * max(1, strides)


def block_grid(shape: tuple[int, int], side: int | tuple[int, int]) -> tuple[int, int]:
    """Return the number of chunks (rows, cols) that cover ``shape`` with chunks of ``side``."""
    sides = (side, side) if isinstance(side, int) else side
    return math.ceil(shape[0] / sides[0]), math.ceil(shape[1] / sides[1])


def iter_blocks(shape: tuple[int, int], side: int | tuple[int, int]) -> Iterator[Block]:
    """Yield the chunks of a grid row by row; the last row and column may be smaller.

    Parameters
    ----------
    shape : tuple of int
        (rows, cols) of the grid, in patches or pixels.
    side : int or tuple of int
        Chunk side in the same units, or (rows, cols) per chunk.

    Yields
    ------
    Block
    """
    sides = (side, side) if isinstance(side, int) else side
    if min(sides) < 1 or min(shape) < 1:
        raise ConfigurationError(f"invalid chunk side {sides} for grid {shape}: both must be positive")
    n_rows, n_cols = block_grid(shape, sides)
    for i in range(n_rows):
        rows = slice(i * sides[0], min((i + 1) * sides[0], shape[0]))
        for j in range(n_cols):
            cols = slice(j * sides[1], min((j + 1) * sides[1], shape[1]))
            yield Block((i, j), rows, cols)


@dataclass(frozen=True)
class SeamWork:
    """Seam windows of one chunk that one task of the feature pass computes.

    Attributes
    ----------
    index : tuple of int
        (row, col, part): the owner chunk's position in the chunk grid and
        the number of this part among its seam windows.
    block : Block
        The owner chunk.
    origins : tuple of (int, int)
        Window origins (y, x) in pixels of the resampled image, row by row.
    """

    index: tuple[int, int, int]
    block: Block
    origins: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class WindowOwnership:
    """Assignment of the feature pass's windows to the chunks that compute them.

    Chunk sides are whole window strides (:func:`patch_chunk_side`), so each
    window origin lies in exactly one chunk, its owner, and a chunk owns a
    block of ``per_chunk`` x ``per_chunk`` windows of the window index grid.

    Parameters
    ----------
    grid : WindowGrid
        Window grid of the resampled image.
    side : int
        Feature-chunk side in patches, a multiple of the stride in patches.

    Raises
    ------
    ConfigurationError
        If ``side`` is not a positive multiple of the stride in patches.
    """

    grid: WindowGrid
    side: int

    def __post_init__(self) -> None:
        stride = self.grid.stride // self.grid.patch_size
        if self.side < 1 or self.side % stride:
            raise ConfigurationError(f"invalid chunk side {self.side} patches: expected a positive multiple of the "
                                     f"window stride, {stride} patches")

    @property
    def per_chunk(self) -> int:
        """Windows per chunk side."""
        return self.side * self.grid.patch_size // self.grid.stride

    @property
    def window_counts(self) -> tuple[int, int]:
        """Windows (rows, cols) of the whole grid."""
        return len(self.grid.origins_y), len(self.grid.origins_x)

    def index(self, origin: tuple[int, int]) -> tuple[int, int]:
        """Return the (row, col) of a window, given its origin in pixels, in the window index grid."""
        return origin[0] // self.grid.stride, origin[1] // self.grid.stride

    def owner(self, origin: tuple[int, int]) -> tuple[int, int]:
        """Return the (row, col) index of the chunk that computes the window at ``origin``."""
        row, col = self.index(origin)
        return row // self.per_chunk, col // self.per_chunk

    def owned(self, block: Block) -> list[tuple[int, int]]:
        """Return the origins, row by row, of the windows that a chunk computes."""
        p = self.grid.patch_size
        ys = [int(y) for y in self.grid.origins_y if block.rows.start <= y // p < block.rows.stop]
        xs = [int(x) for x in self.grid.origins_x if block.cols.start <= x // p < block.cols.stop]
        return [(y, x) for y in ys for x in xs]

    def is_seam(self, origin: tuple[int, int]) -> bool:
        """Tell whether the window at ``origin`` covers patches of a chunk other than its owner."""
        p = self.grid.patch_size
        rows, cols = self.grid.patch_shape
        window_rows, window_cols = self.grid.window_patches
        owner_row, owner_col = self.owner(origin)
        top, left = origin[0] // p, origin[1] // p
        return (min(top + window_rows, rows) > min((owner_row + 1) * self.side, rows)
                or min(left + window_cols, cols) > min((owner_col + 1) * self.side, cols))

    def seams(self, block: Block) -> list[tuple[int, int]]:
        """Return the origins, row by row, of the seam windows that a chunk owns."""
        return [origin for origin in self.owned(block) if self.is_seam(origin)]


def halo_slices(extent: slice, depth: int, size: int) -> HaloSlice:
    """Grow a chunk's extent by ``depth`` on both sides and clip it to ``0..size``.

    Parameters
    ----------
    extent : slice
        The chunk's ``start:stop`` on one axis, in grid units.
    depth : int
        Halo on each side, in the same units.
    size : int
        Grid size on that axis.

    Returns
    -------
    HaloSlice
        The clipped read range and how far the halo reaches past each edge.
        A chunk smaller than the halo, such as the last one of an axis, is
        handled the same way.
    """
    start, stop = extent.start - depth, extent.stop + depth
    return HaloSlice(
        read=slice(max(start, 0), min(stop, size)),
        pad_before=max(-start, 0),
        pad_after=max(stop - size, 0),
    )


def slic_depth(slic_size: int) -> int:
    """Return the pixel halo read around a label chunk for SLIC snapping.

    Two superpixel sides: SLIC's local search looks up to about one
    superpixel side beyond a centre, and a superpixel that straddles the
    chunk edge needs its far side to vote. SLIC is still not chunk-exact,
    because the superpixel seeds depend on the region it runs on.
    """
    return 2 * slic_size
