"""Nodata rules and the pure functions that build masks from raw raster values.

Every function here takes and returns NumPy arrays and does no I/O, so the
reader can run them on a whole raster or on one window of it. Masks are bool
arrays of dims ``(y, x)``. Those of :func:`value_mask`, :func:`nan_mask` and
:func:`clean_collar` are True where a pixel is **nodata**, and
:func:`valid_mask` combines them into the valid mask, True where a pixel has
data.

Collar clean-up is local: :func:`clean_collar` at a pixel depends only on the
input within :func:`collar_halo` pixels of it, and pixels outside the raster
count as "not nodata". Cleaning a window read with that halo (clipped at the
raster edge) and cropping the halo off therefore gives exactly the crop of the
cleaned whole raster.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tree_seg.config import ReadConfig
from tree_seg.exceptions import InvalidInputError

__all__ = [
    "NodataRule",
    "border_pixels",
    "choose_nodata_rule",
    "clean_collar",
    "collar_halo",
    "detect_collar_value",
    "nan_mask",
    "valid_mask",
    "value_mask",
    "widen_collar_tolerance",
]

COLLAR_MIN_FRACTION = 0.5
"""Fraction of the outermost pixels that must share one value to call it a collar."""

COLLAR_FRINGE_TOLERANCE = 10 / 255
"""Tolerance of a detected collar's fringe, as a fraction of the band scale (10 digital numbers in uint8).

JPEG compression leaves blocks of almost-collar values up to about 10 pixels
into the image (measured on the OAM-TCD tiles ``tcd_00000`` and
``tcd_00004``), which the exact collar value misses and a dilation by a few
pixels only partly covers. More than 40 pixels away from the collar, 0.11% of
the pixels of ``tcd_00000`` and 0.02% of ``tcd_00004`` lie within 10 digital
numbers of the collar value in every band, mostly deep shadows, so this
tolerance applies only within :data:`COLLAR_FRINGE_WIDTH` pixels of the
collar.
"""

COLLAR_FRINGE_WIDTH = 12
"""Distance in pixels from the collar within which its fringe tolerance applies.

It covers the JPEG fringe of about 10 pixels. On ``tcd_00000`` it keeps five
shadows of 73 to 422 pixels inside the image valid, which the fringe
tolerance applied everywhere turned into nodata.
"""

OPENING_RADIUS = 2
"""Radius, in pixels, of the disk that removes nodata specks before the collar buffer."""

FRINGE_SEED_RADIUS = 1
"""Radius, in pixels, of the disk that a nodata region must hold for a fringe to grow around it.

Radius 1 (a 3 x 3 cross) keeps thin lines of exact collar value, which
belong to the collar, and drops the isolated exact-value pixels found in
deep shadows.
"""

_CLEAN_BLOCK = 256
"""Side in pixels of the blocks that :func:`clean_collar` cleans one at a time."""

NodataKind = Literal["tag", "alpha", "nan", "value", "collar", "none"]


def _check_raw(raw: np.ndarray) -> None:
    if raw.ndim != 3:
        raise InvalidInputError(
            f"invalid raw array of shape {raw.shape}: expected dims (band, y, x); "
            "add a band axis with raw[None] for a single band"
        )


def value_mask(raw: np.ndarray, value: float, *, tolerance: float = 0.0) -> np.ndarray:
    """Mark pixels whose every band lies within a tolerance of one value.

    Parameters
    ----------
    raw : numpy.ndarray of shape (band, y, x)
        Raw pixel values in the input's units (digital numbers for integer
        data), any real dtype.
    value : float
        Nodata value in the same units.
    tolerance : float, default=0
        Largest absolute difference from ``value`` that still counts, in the
        same units; 0 requires an exact match.

    Returns
    -------
    numpy.ndarray of shape (y, x), bool
        True where ``|raw - value| <= tolerance`` in every band. NaN never
        matches, so NaN pixels need :func:`nan_mask`.
    """
    _check_tolerance(tolerance)
    return _largest_difference(raw, value) <= tolerance


def _check_tolerance(tolerance: float) -> None:
    if tolerance < 0:
        raise InvalidInputError(f"invalid tolerance={tolerance}: expected a value >= 0")


def _largest_difference(raw: np.ndarray, value: float) -> np.ndarray:
    # Largest |raw - value| over bands, shape (y, x). A NaN band gives NaN,
    # which matches no tolerance. Both paths are exact. 8- and 16-bit
    # integers with an integer value use int32, which moves half the memory
    # of float64 on every window read.
    _check_raw(raw)
    value = float(value)
    if np.issubdtype(raw.dtype, np.integer) and raw.dtype.itemsize <= 2 and value.is_integer() \
            and abs(value) <= 2**30:
        return np.max(np.abs(raw.astype(np.int32) - np.int32(value)), axis=0)
    return np.max(np.abs(raw.astype(np.float64, copy=False) - value), axis=0)


def nan_mask(raw: np.ndarray) -> np.ndarray:
    """Mark pixels that are NaN in any band.

    Parameters
    ----------
    raw : numpy.ndarray of shape (band, y, x)
        Raw pixel values, any real dtype.

    Returns
    -------
    numpy.ndarray of shape (y, x), bool
        True where at least one band is NaN; all False for integer input.
    """
    _check_raw(raw)
    if not np.issubdtype(raw.dtype, np.floating):
        return np.zeros(raw.shape[1:], dtype=bool)
    return np.any(np.isnan(raw), axis=0)


def collar_halo(buffer: int, opening_radius: int = 2, fringe_width: int = 0) -> int:
    """Return the halo, in pixels, that makes :func:`clean_collar` exact on a window.

    An opening with a disk of radius ``r`` looks ``2 r`` pixels away (an
    erosion, then a dilation, each reaching ``r``), and the dilation by
    ``buffer`` looks ``buffer`` pixels further. A fringe adds the opening
    that finds its seeds and a dilation by ``fringe_width``.

    Parameters
    ----------
    buffer : int
        Growth of the mask in pixels, >= 0.
    opening_radius : int, default=2
        Radius in pixels of the disk used to remove specks, >= 0.
    fringe_width : int, default=0
        Reach of the fringe in pixels, >= 0; 0 when there is no fringe.

    Returns
    -------
    int
        ``2 * opening_radius + buffer``, plus ``2 * FRINGE_SEED_RADIUS +
        fringe_width`` when ``fringe_width > 0``.
    """
    _check_radius("buffer", buffer)
    _check_radius("opening_radius", opening_radius)
    _check_radius("fringe_width", fringe_width)
    fringe = 2 * FRINGE_SEED_RADIUS + fringe_width if fringe_width > 0 else 0
    return 2 * opening_radius + buffer + fringe


def _check_radius(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(f"invalid {name}={value!r}: expected an integer >= 0")


def clean_collar(nodata: np.ndarray, *, buffer: int, opening_radius: int = 2, fringe: np.ndarray | None = None,
                 fringe_width: int = 0) -> np.ndarray:
    """Remove nodata specks, add the collar's fringe, then grow the mask along its edges.

    Fringe pixels (near-collar values that lossy, JPEG, compression leaves
    along the edge of a collar) join the mask where they lie within
    ``fringe_width`` pixels of a nodata region that holds a disk of radius
    :data:`FRINGE_SEED_RADIUS`. A binary opening with a disk of radius
    ``opening_radius`` then removes every nodata region that contains no
    such disk, so isolated pure-black or pure-white pixels inside the image,
    such as deep shadows or saturated roofs, stay valid. A binary dilation
    with a disk of radius ``buffer`` grows what is left over the remaining
    fringe. The opening also rounds off sharp corners (3 pixels per
    right-angled corner for radius 2), which a buffer of 2 or more covers
    again.

    Parameters
    ----------
    nodata : numpy.ndarray of shape (y, x), bool
        True where a pixel is nodata before clean-up.
    buffer : int
        Growth in pixels, >= 0; 0 skips the dilation.
    opening_radius : int, default=2
        Disk radius in pixels for speck removal, >= 0; 0 skips the opening.
    fringe : numpy.ndarray of shape (y, x), bool, optional
        True where a pixel may belong to the collar's fringe, usually the
        pixels within a wider tolerance of the collar value. Fringe pixels
        farther than ``fringe_width`` from the collar stay valid.
    fringe_width : int, default=0
        Reach of the fringe in pixels, >= 0; 0 ignores ``fringe``.

    Returns
    -------
    numpy.ndarray of shape (y, x), bool
        The cleaned nodata mask. Pixels outside the array count as not
        nodata, so a collar thinner than the disk along the raster edge is
        removed like a speck. The result at a pixel depends only on the input
        within ``collar_halo(buffer, opening_radius, fringe_width)`` pixels of
        it.
    """
    if nodata.ndim != 2:
        raise InvalidInputError(f"invalid nodata mask of shape {nodata.shape}: expected dims (y, x)")
    if fringe is not None and fringe.shape != nodata.shape:
        raise InvalidInputError(f"shape mismatch: fringe {fringe.shape} must equal the nodata mask {nodata.shape}")
    _check_radius("buffer", buffer)
    _check_radius("opening_radius", opening_radius)
    _check_radius("fringe_width", fringe_width)

    nodata = nodata.astype(bool, copy=False)
    if fringe is None or fringe_width == 0:
        fringe, fringe_width = None, 0
    halo = collar_halo(buffer, opening_radius, fringe_width)
    height, width = nodata.shape

    # Each block is cleaned from its window (the block plus the halo), which
    # gives the same pixels as cleaning the whole mask, by the locality above.
    # A window without nodata gives no nodata. A window of nodata only gives
    # nodata unless it meets the raster edge on two sides, because along one
    # edge the opening restores every pixel and only corners are rounded. So
    # blocks inside the image or inside a wide collar skip the morphology.
    cleaned = np.zeros_like(nodata)
    for y0 in range(0, height, _CLEAN_BLOCK):
        for x0 in range(0, width, _CLEAN_BLOCK):
            y1, x1 = min(y0 + _CLEAN_BLOCK, height), min(x0 + _CLEAN_BLOCK, width)
            ya, yb, xa, xb = max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo)
            window = nodata[ya:yb, xa:xb]
            if not window.any():
                continue
            edges = (ya == 0) + (yb == height) + (xa == 0) + (xb == width)
            if edges <= 1 and window.all():
                cleaned[y0:y1, x0:x1] = True
                continue
            result = _clean_window(window, None if fringe is None else fringe[ya:yb, xa:xb], buffer=buffer,
                                   opening_radius=opening_radius, fringe_width=fringe_width)
            cleaned[y0:y1, x0:x1] = result[y0 - ya:y1 - ya, x0 - xa:x1 - xa]
    return cleaned


def _clean_window(nodata: np.ndarray, fringe: np.ndarray | None, *, buffer: int, opening_radius: int,
                  fringe_width: int) -> np.ndarray:
    # clean_collar() on one array, with the morphology over all of it.
    cleaned = nodata
    if fringe is not None:
        candidates = fringe & ~cleaned
        if candidates.any():
            near = _dilate(_open(cleaned, FRINGE_SEED_RADIUS), fringe_width)
            cleaned = cleaned | (candidates & near)

    cleaned = _open(cleaned, opening_radius)
    return _dilate(cleaned, buffer)


def _open(mask: np.ndarray, radius: int) -> np.ndarray:
    # A disk fits ragged diagonal collar edges that a square would miss; on
    # tcd_00000 it leaves a third as many near-black fringe pixels.
    return _dilate(_erode(mask, radius), radius)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    # Binary dilation of a (y, x) mask by the disk of offsets with
    # dy**2 + dx**2 <= radius**2, with nothing outside the array. The disk is
    # a stack of horizontal runs, so the result is the union of the mask's
    # run-wise dilations, each shifted by its row offset. On 2048 x 2048
    # collar masks these few dozen ORs took 1/10 to 1/50 of the time of
    # scipy.ndimage.
    if radius == 0:
        return mask
    height, width = mask.shape
    runs = [mask]
    for half in range(1, radius + 1):
        run = runs[-1].copy()
        if half < width:
            run[:, half:] |= mask[:, :-half]
            run[:, :-half] |= mask[:, half:]
        runs.append(run)

    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        if abs(dy) >= height:
            continue
        run = runs[math.isqrt(radius * radius - dy * dy)]
        if dy >= 0:
            out[dy:] |= run[:height - dy]
        else:
            out[:dy] |= run[-dy:]
    return out


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    # Binary erosion by the same disk, with everything outside the array
    # counting as False. It is the complement of the dilated complement, with
    # a padding of True so that the outside reaches in.
    if radius == 0:
        return mask
    outside = np.pad(~mask, radius, constant_values=True)
    return ~_dilate(outside, radius)[radius:-radius, radius:-radius]


def border_pixels(raw: np.ndarray) -> np.ndarray:
    """Collect the outermost pixels of a raster: its first and last row and column.

    Parameters
    ----------
    raw : numpy.ndarray of shape (band, y, x)
        Raw pixel values.

    Returns
    -------
    numpy.ndarray of shape (band, n)
        The pixels of the four edges, corners included once per edge, so
        ``n = 2 * x + 2 * y`` (fewer for a raster one pixel high or wide).
    """
    _check_raw(raw)
    rows = [raw[:, 0, :]]
    if raw.shape[1] > 1:
        rows.append(raw[:, -1, :])
    columns = [raw[:, :, 0]]
    if raw.shape[2] > 1:
        columns.append(raw[:, :, -1])
    return np.concatenate(rows + columns, axis=1)


def detect_collar_value(border: np.ndarray, dtype_max: float | None) -> float | None:
    """Find the value of a collar from the raster's outermost pixels.

    ``ReadConfig(nodata="auto")`` uses this rule when the input has no
    nodata tag, alpha band or NaN. An orthomosaic clipped to its flight
    footprint is usually padded to a rectangle with one fill colour, black
    (0) or white (the dtype's maximum), and that fill covers most of the
    raster's border. So when more than half of the outermost pixels are exactly
    0 in every band, the collar value is 0. Otherwise, when more than half
    are exactly ``dtype_max`` in every band, the collar value is
    ``dtype_max``. Otherwise there is no collar. Real image content rarely
    fills half of the border with one exact value in every band.

    Parameters
    ----------
    border : numpy.ndarray of shape (band, n)
        Raw values of the outermost pixels (see :func:`border_pixels`).
    dtype_max : float or None
        The white fill value: 255 for uint8, 65535 for uint16, 1.0 for float
        data in [0, 1]. ``None`` checks only for a black collar.

    Returns
    -------
    float or None
        0.0, ``dtype_max`` or ``None`` when no collar is found.
    """
    if border.ndim != 2:
        raise InvalidInputError(f"invalid border array of shape {border.shape}: expected dims (band, n)")
    if border.shape[1] == 0:
        return None

    candidates = [0.0] if dtype_max is None else [0.0, float(dtype_max)]
    for candidate in candidates:
        fraction = float(np.mean(np.all(border == candidate, axis=0)))
        if fraction > COLLAR_MIN_FRACTION:
            return candidate
    return None


@dataclass(frozen=True)
class NodataRule:
    """Rule that computes the valid mask of a raster, recorded in the run metadata.

    Pixels that are NaN in any selected band are invalid under every rule,
    ``"none"`` included, because no backbone accepts NaN. An alpha band, when
    the file has one, marks pixels with alpha 0 as nodata under every kind
    except ``"none"``.

    Parameters
    ----------
    kind : {"tag", "alpha", "nan", "value", "collar", "none"}
        ``"tag"``: the file's nodata tag. A pixel whose every band is within
        ``tolerance`` of ``value`` is always nodata, and the mask also grows
        by ``buffer`` pixels after specks are removed. So a lossy-compressed
        collar written with a tag loses its fringe, while isolated tagged
        pixels (saturated roofs under a tag of 255) stay nodata but do not
        grow. ``"alpha"``: alpha 0 only. ``"nan"``: NaN only. ``"value"``: an
        explicit nodata value. ``"collar"``: a value found on the raster
        border. For ``"value"`` and ``"collar"`` the pixels within
        ``tolerance`` of ``value`` in every band lose specks that hold no
        disk of radius 2 and then grow by ``buffer`` pixels (see
        :func:`clean_collar`). A ``"collar"`` also takes the pixels within
        ``fringe_tolerance`` that lie within :data:`COLLAR_FRINGE_WIDTH`
        pixels of it. ``"none"``: every pixel that is not NaN is valid.
    value : float or None, default=None
        Nodata value in raw input units, for ``"tag"``, ``"value"`` and
        ``"collar"``.
    tolerance : float, default=0
        Largest difference from ``value`` that still counts, in raw units.
    fringe_tolerance : float or None, default=None
        ``"collar"`` only: largest difference from ``value``, in raw units,
        of the compression fringe next to the collar; None for no fringe.
    buffer : int, default=0
        Growth of the cleaned mask in pixels.
    alpha_band : int or None, default=None
        1-based index of the alpha band in the file.
    """

    kind: NodataKind
    value: float | None = None
    tolerance: float = 0.0
    fringe_tolerance: float | None = None
    buffer: int = 0
    alpha_band: int | None = None

    @property
    def halo(self) -> int:
        """Pixels a window must be read beyond its edges to get an exact mask."""
        if self.kind in ("tag", "value", "collar"):
            return collar_halo(self.buffer, OPENING_RADIUS, self.fringe_width)
        return 0

    @property
    def fringe_width(self) -> int:
        """Pixels from the collar within which ``fringe_tolerance`` applies; 0 without a fringe."""
        return COLLAR_FRINGE_WIDTH if self.kind == "collar" and self.fringe_tolerance is not None else 0


def valid_mask(
    raw: np.ndarray,
    rule: NodataRule,
    *,
    alpha: np.ndarray | None = None,
    clean: bool = True,
) -> np.ndarray:
    """Build the valid mask of raw pixels under a nodata rule.

    Parameters
    ----------
    raw : numpy.ndarray of shape (band, y, x)
        Raw values of the selected bands, in input units.
    rule : NodataRule
        The rule; see :class:`NodataRule`.
    alpha : numpy.ndarray of shape (y, x) or None, default=None
        The alpha band; 0 is nodata.
    clean : bool, default=True
        Apply :func:`clean_collar` to value-based rules. Pass False for a
        decimated sample, where distances in pixels no longer hold. A
        collar's fringe tolerance then applies everywhere, so the sample
        leaves out every pixel that may be fringe.

    Returns
    -------
    numpy.ndarray of shape (y, x), bool
        True where the pixel has data.
    """
    nodata = nan_mask(raw)

    if rule.kind in ("tag", "value", "collar"):
        if rule.value is None:
            raise InvalidInputError(f"NodataRule of kind {rule.kind!r} is missing its value: set value to the "
                                    "nodata value in raw input units")
        # One difference serves both tolerances.
        _check_tolerance(rule.tolerance)
        difference = _largest_difference(raw, rule.value)
        matches = difference <= rule.tolerance
        fringe = None
        if rule.fringe_width:
            fringe = difference <= max(rule.tolerance, rule.fringe_tolerance or 0.0)
        if not clean:
            matches = matches if fringe is None else fringe
        else:
            cleaned = clean_collar(matches, buffer=rule.buffer, opening_radius=OPENING_RADIUS, fringe=fringe,
                                   fringe_width=rule.fringe_width)
            matches = cleaned | matches if rule.kind == "tag" else cleaned
        nodata |= matches

    if alpha is not None and rule.kind != "none":
        nodata |= alpha == 0

    return ~nodata


_WHITE_LEVELS = (1.0, 255.0, 4095.0, 65535.0)
"""White values of float data in [0, 1], of 8-bit, 12-bit and 16-bit data."""


def _white_value(dtype: np.dtype, sample: np.ndarray) -> float | None:
    # The smallest usual white level at or above the largest value: a
    # 12-bit sensor's collar is 4095 in uint16, and rioxarray's masked=True
    # turns 8-bit data into floats up to 255. Other integer dtypes use their
    # maximum.
    if np.issubdtype(dtype, np.integer) and dtype != np.uint16:
        return float(np.iinfo(dtype).max)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0 or finite.min() < 0:
        return None
    top = float(finite.max())
    return next((level for level in _WHITE_LEVELS if top <= level), None)


def _check_value_in_range(value: float, tolerance: float, dtype: np.dtype) -> None:
    # A value that no pixel of an integer dtype can take within the
    # tolerance would mask nothing, and it replaces the file's own tag.
    if not np.issubdtype(dtype, np.integer):
        return
    info = np.iinfo(dtype)
    if value + tolerance < info.min or value - tolerance > info.max:
        raise InvalidInputError(
            f"invalid nodata={value:g}: {dtype} pixels lie in {info.min}..{info.max}, so it would mask nothing; "
            "pass a value in that range, or auto"
        )


def choose_nodata_rule(
    config: ReadConfig,
    *,
    tag: float | None,
    alpha_band: int | None,
    sample: np.ndarray,
    border: np.ndarray,
) -> NodataRule:
    """Choose the nodata rule of a raster from its settings, metadata and pixels.

    Parameters
    ----------
    config : ReadConfig
        ``nodata``, ``nodata_tolerance`` and ``collar_buffer`` are used.
    tag : float or None
        The nodata tag of the selected bands (NaN for a NaN tag).
    alpha_band : int or None
        1-based index of the alpha band, if any.
    sample : numpy.ndarray of shape (band, h, w)
        Raw values of a decimated sample of the selected bands.
    border : numpy.ndarray of shape (band, n)
        Raw values of the raster's outermost pixels.

    Returns
    -------
    NodataRule
        A ``"collar"`` rule here carries ``config.nodata_tolerance``; the
        reader widens it to the JPEG fringe tolerance once the band scale is
        known.

    Notes
    -----
    The order under ``nodata="auto"`` is: tag, alpha band, NaN in a float
    sample, a collar found by :func:`detect_collar_value`, then ``"none"``.
    The white value is the smallest of 1, 255, 4095 and 65535 at or above
    the largest value of the sample and the border for float and uint16 data (so 4095 for 12-bit data
    in uint16), and the dtype's maximum for other integer data.
    """
    if config.nodata == "none":
        return NodataRule("none")

    if not isinstance(config.nodata, str):
        _check_value_in_range(float(config.nodata), config.nodata_tolerance, sample.dtype)
        return NodataRule("value", value=float(config.nodata), tolerance=config.nodata_tolerance,
                          buffer=config.collar_buffer, alpha_band=alpha_band)

    if tag is not None:
        if math.isnan(tag):
            return NodataRule("nan", alpha_band=alpha_band)
        return NodataRule("tag", value=float(tag), tolerance=config.nodata_tolerance,
                          buffer=config.collar_buffer, alpha_band=alpha_band)

    if alpha_band is not None:
        return NodataRule("alpha", alpha_band=alpha_band)

    if np.issubdtype(sample.dtype, np.floating) and np.isnan(sample).any():
        return NodataRule("nan")

    values = np.concatenate([sample.ravel(), border.ravel()])
    collar = detect_collar_value(border, _white_value(sample.dtype, values))
    if collar is not None:
        return NodataRule("collar", value=collar, tolerance=config.nodata_tolerance,
                          buffer=config.collar_buffer)
    return NodataRule("none")


def widen_collar_tolerance(rule: NodataRule, band_scale: np.ndarray) -> NodataRule:
    """Give a ``"collar"`` rule the fringe tolerance that covers JPEG's almost-collar pixels.

    Parameters
    ----------
    rule : NodataRule
        Any rule; kinds other than ``"collar"`` come back unchanged.
    band_scale : numpy.ndarray of shape (band,)
        Per-band scale in raw units (255 for uint8).

    Returns
    -------
    NodataRule
        The collar rule with ``fringe_tolerance = max(tolerance, 10/255 *
        min(band_scale))``. Its ``tolerance`` is unchanged, so far from the
        collar only pixels within that tolerance are nodata.
    """
    if rule.kind != "collar":
        return rule
    fringe_tolerance = max(rule.tolerance, COLLAR_FRINGE_TOLERANCE * float(np.min(band_scale)))
    return dataclasses.replace(rule, fringe_tolerance=fringe_tolerance)
