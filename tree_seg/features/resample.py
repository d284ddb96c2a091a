"""Separable antialiased resampling defined by global pixel coordinates.

Each output pixel is a weighted mean of input pixels. Its weights depend only
on its global index, the input raster's size and the scale, never on which
chunk is being resampled, so resampling a chunk read with the halo that
:func:`input_span` names gives the same values as cropping the resampled
whole raster.

On one axis with ``n_in`` input and ``n_out`` output pixels
(:func:`resampled_shape`), the input-per-output ratio is
``f = n_in / n_out`` and output pixel ``i`` is centred at input coordinate
``c = (i + 0.5) * f - 0.5`` (pixel centres at integers). Its weights follow a
triangle (linear) filter of half-width ``max(1, f)`` input pixels around
``c``: plain linear interpolation when upsampling, widened by the
downsampling factor when downsampling so that every input pixel contributes
(antialiasing). Taps outside the raster are dropped and the remaining
weights renormalised to sum to 1. Using ``n_in / n_out`` rather than the
nominal scale makes the output pixels tile the input extent exactly, so the
resampled raster's pixel size is the input's times ``n_in / n_out`` per axis.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from tree_seg.exceptions import InvalidInputError

__all__ = ["input_span", "resample_image", "resample_mask", "resampled_shape"]


def resampled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """Return the (height, width) in pixels of a raster of ``shape`` resampled by ``scale``.

    Each side is ``shape * scale`` rounded half up, and at least 1.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InvalidInputError(f"invalid scale={scale!r}: expected a positive finite number")
    return tuple(max(1, math.floor(side * scale + 0.5)) for side in shape)  # type: ignore[return-value]


def _taps(out_start: int, out_stop: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and normalised weights of outputs ``out_start:out_stop``.

    Returns two (outputs, taps) arrays; weights are 0 where a tap is unused,
    and such taps carry index -1.
    """
    ratio = n_in / n_out
    half_width = max(1.0, ratio)
    centres = (np.arange(out_start, out_stop, dtype=np.float64) + 0.5) * ratio - 0.5
    reach = math.ceil(half_width)
    index = np.floor(centres)[:, None].astype(np.int64) + np.arange(-reach, reach + 1)[None, :]
    weights = 1.0 - np.abs(index - centres[:, None]) / half_width
    weights[(index < 0) | (index >= n_in) | (weights <= 0.0)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    index[weights == 0.0] = -1
    return index, weights


def _check_out_slice(name: str, region: slice | None, n_out: int) -> slice:
    if region is None:
        return slice(0, n_out)
    start, stop, step = region.indices(n_out)
    if step != 1 or stop <= start:
        raise InvalidInputError(
            f"invalid {name}={region}: expected a non-empty slice with step 1 inside 0..{n_out}"
        )
    return slice(start, stop)


def input_span(out_slice: slice, n_in: int, scale: float) -> slice:
    """Return the input pixels that a range of output pixels reads, on one axis.

    Parameters
    ----------
    out_slice : slice
        Output pixel range, in global output indices (step 1).
    n_in : int
        Size of the whole input raster along this axis, in pixels.
    scale : float
        Resampling factor, as given to :func:`resample_image`.

    Returns
    -------
    slice
        ``start:stop`` in global input pixels, clipped to ``0..n_in``. Read at
        least these pixels to resample ``out_slice`` exactly.
    """
    n_out = resampled_shape((n_in, 1), scale)[0]
    region = _check_out_slice("out_slice", out_slice, n_out)
    if n_out == n_in:
        return region
    index, _ = _taps(region.start, region.stop, n_in, n_out)
    used = index[index >= 0]
    return slice(int(used.min()), int(used.max()) + 1)


def _axis_matrix(region: slice, n_in: int, n_out: int, first: int, length: int) -> sp.csr_matrix:
    """Sparse (outputs, length) matrix that resamples input pixels ``first:first + length``."""
    index, weights = _taps(region.start, region.stop, n_in, n_out)
    rows = np.broadcast_to(np.arange(index.shape[0])[:, None], index.shape)
    used = index >= 0
    return sp.csr_matrix(
        (weights[used], (rows[used], index[used] - first)), shape=(index.shape[0], length)
    )


def _resample_planes(
    planes: np.ndarray,
    scale: float,
    *,
    out_rows: slice | None,
    out_cols: slice | None,
    in_row0: int,
    in_col0: int,
    in_shape: tuple[int, int] | None,
) -> np.ndarray:
    """Resample a (C, h, w) float array; shared by images and masks."""
    if in_shape is None:
        if in_row0 or in_col0:
            raise InvalidInputError(
                f"invalid in_row0={in_row0}, in_col0={in_col0} without in_shape: pass the whole raster's "
                f"(height, width) as in_shape when resampling a chunk"
            )
        in_shape = planes.shape[1:]
    n_in_y, n_in_x = int(in_shape[0]), int(in_shape[1])
    n_out_y, n_out_x = resampled_shape((n_in_y, n_in_x), scale)
    rows = _check_out_slice("out_rows", out_rows, n_out_y)
    cols = _check_out_slice("out_cols", out_cols, n_out_x)

    span_y = input_span(rows, n_in_y, scale)
    span_x = input_span(cols, n_in_x, scale)
    height, width = planes.shape[1:]
    rows_covered = in_row0 <= span_y.start and in_row0 + height >= span_y.stop
    cols_covered = in_col0 <= span_x.start and in_col0 + width >= span_x.stop
    if not (rows_covered and cols_covered):
        raise InvalidInputError(
            f"chunk at rows {in_row0}:{in_row0 + height}, cols {in_col0}:{in_col0 + width} does not cover "
            f"input rows {span_y.start}:{span_y.stop}, cols {span_x.start}:{span_x.stop} needed for output "
            f"rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}; read the chunk with input_span()"
        )

    local_y = slice(span_y.start - in_row0, span_y.stop - in_row0)
    local_x = slice(span_x.start - in_col0, span_x.stop - in_col0)
    if n_out_y == n_in_y and n_out_x == n_in_x:
        return planes[:, local_y, local_x]

    matrix_y = _axis_matrix(rows, n_in_y, n_out_y, span_y.start, span_y.stop - span_y.start)
    matrix_x = _axis_matrix(cols, n_in_x, n_out_x, span_x.start, span_x.stop - span_x.start)
    out = np.empty((planes.shape[0], rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
    for band, plane in enumerate(planes):
        # Rows first, then columns. The sparse products are float64 until stored.
        by_rows = matrix_y @ plane[local_y, local_x]
        out[band] = (matrix_x @ by_rows.T).T
    return out


def resample_image(
    image: np.ndarray,
    scale: float,
    *,
    out_rows: slice | None = None,
    out_cols: slice | None = None,
    in_row0: int = 0,
    in_col0: int = 0,
    in_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resample an image, or the part of it that a chunk covers.

    Parameters
    ----------
    image : ndarray of shape (band, y, x)
        The whole raster, or a chunk of it whose top-left pixel is
        (``in_row0``, ``in_col0``) in the raster. Values are usually float32
        in [0, 1]; any real dtype is accepted.
    scale : float
        Resampling factor (0.5 halves each side). When the output size equals
        the input size (always for 1.0) the input pixels are returned
        unchanged, as a view of ``image`` when it is float32.
    out_rows, out_cols : slice or None, default=None
        Output region in global output pixels; ``None`` is the whole axis.
    in_row0, in_col0 : int, default=0
        Global position of ``image[:, 0, 0]`` in the input raster, in pixels.
    in_shape : tuple of int or None, default=None
        (height, width) of the whole input raster in pixels. ``None`` means
        that ``image`` is the whole raster.

    Returns
    -------
    ndarray of shape (band, rows, cols), float32
        Resampled values of the requested output region.

    Raises
    ------
    InvalidInputError
        If the chunk does not contain every input pixel the region needs
        (see :func:`input_span`), or a region is empty or out of range.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise InvalidInputError(f"invalid image of shape {image.shape}: expected (band, y, x)")
    planes = image if image.dtype == np.float32 else image.astype(np.float32)
    return _resample_planes(planes, scale, out_rows=out_rows, out_cols=out_cols,
                            in_row0=in_row0, in_col0=in_col0, in_shape=in_shape)


def resample_mask(
    valid: np.ndarray,
    scale: float,
    *,
    out_rows: slice | None = None,
    out_cols: slice | None = None,
    in_row0: int = 0,
    in_col0: int = 0,
    in_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resample a valid-pixel mask with the same filter as :func:`resample_image`.

    Parameters
    ----------
    valid : ndarray of shape (y, x), bool
        True where the input pixel contains data.
    scale, out_rows, out_cols, in_row0, in_col0, in_shape
        As in :func:`resample_image`.

    Returns
    -------
    ndarray of shape (rows, cols), bool
        True where the filter-weighted fraction of valid input pixels is at
        least 0.5.
    """
    valid = np.asarray(valid)
    if valid.ndim != 2:
        raise InvalidInputError(f"invalid mask of shape {valid.shape}: expected (y, x)")
    fraction = _resample_planes(valid[None].astype(np.float32), scale, out_rows=out_rows, out_cols=out_cols,
                                in_row0=in_row0, in_col0=in_col0, in_shape=in_shape)[0]
    return fraction >= 0.5
