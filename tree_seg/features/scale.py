"""Choose the resampling factor of ``scale="auto"`` from the raster's pixel size."""

from __future__ import annotations

import logging
import math
from typing import cast

import pyproj
from affine import Affine
from rasterio.crs import CRS

from tree_seg.config import WindowConfig

__all__ = ["MIN_SCALE", "pixel_size_m", "resolve_scale"]

logger = logging.getLogger(__name__)

MIN_SCALE = 0.05
"""Smallest factor ``scale="auto"`` returns, the lower bound of ``WindowConfig.scale``."""

MIN_SIDE_PX = 512
"""Shortest side, in resampled pixels, that ``scale="auto"`` keeps (32 patches of
16 px), so that a small or very fine raster still gets enough patches to cluster."""


def pixel_size_m(crs: CRS | None, transform: Affine, shape: tuple[int, int] | None = None) -> float | None:
    """Return the ground size of a pixel in metres, or None where it is unknown.

    Where the CRS has a datum (projected or geographic), the size is measured
    on its ellipsoid at the raster's centre, so a Mercator metre at 48 degrees
    north counts as 0.67 m, and degrees and feet work too. A CRS without a
    datum whose axes are in metres (a local engineering CRS) counts its own
    metres. Non-square pixels count by the square root of their area.

    Parameters
    ----------
    crs : rasterio.crs.CRS or None
        The raster's CRS; None gives None.
    transform : affine.Affine
        Pixel to CRS coordinates, x then y (GDAL's order, longitude first).
    shape : tuple of int, optional
        (height, width) in pixels; the size is measured at the centre pixel.
        Default: at the transform's origin.

    Returns
    -------
    float or None
        Metres per pixel, > 0.
    """
    if crs is None:
        return None
    try:
        parsed = pyproj.CRS.from_wkt(crs.to_wkt())
    except pyproj.exceptions.CRSError:
        return None

    centre = (shape[1] / 2.0, shape[0] / 2.0) if shape is not None else (0.0, 0.0)
    if parsed.geodetic_crs is not None:
        size = _ground_pixel_size(parsed, transform, centre)
        if size is not None:
            return size

    # LOCAL_CS and engineering CRSs have no "linear units" in rasterio but
    # state the unit of each axis.
    axes = parsed.axis_info
    if not axes or any(axis.unit_name not in ("metre", "meter") for axis in axes[:2]):
        return None
    area = abs(transform.a * transform.e - transform.b * transform.d)
    return math.sqrt(area) if area > 0 else None


def _ground_pixel_size(crs: pyproj.CRS, transform: Affine, centre: tuple[float, float]) -> float | None:
    # Geodesic lengths of the pixel's two edges at `centre` (pixel
    # coordinates) on the CRS's ellipsoid, and the angle between them, give
    # the pixel's ground area. None when the point does not convert.
    geodetic = cast(pyproj.CRS, crs.geodetic_crs)
    geod = geodetic.get_geod()
    if geod is None:
        return None
    try:
        to_lonlat = pyproj.Transformer.from_crs(crs, geodetic, always_xy=True)
        column, row = centre
        xs, ys = zip(transform * (column, row), transform * (column + 1, row), transform * (column, row + 1))
        lons, lats = to_lonlat.transform(xs, ys, errcheck=True)
        azimuths, _, lengths = geod.inv([lons[0]] * 2, [lats[0]] * 2, lons[1:], lats[1:])
    except pyproj.exceptions.ProjError:
        return None
    area = lengths[0] * lengths[1] * abs(math.sin(math.radians(azimuths[1] - azimuths[0])))
    return math.sqrt(area) if math.isfinite(area) and area > 0 else None


def resolve_scale(
    window: WindowConfig, *, crs: CRS | None, transform: Affine, shape: tuple[int, int] | None = None
) -> float:
    """Return the numeric resampling factor for ``window.scale``.

    Parameters
    ----------
    window : WindowConfig
        A number is returned unchanged; ``"auto"`` aims at
        ``window.target_resolution`` ground metres per pixel (see
        :func:`pixel_size_m`) without upsampling.
    crs : rasterio.crs.CRS or None
        The raster's CRS.
    transform : affine.Affine
        The raster's transform (CRS units per pixel).
    shape : tuple of int, optional
        (height, width) of the raster in pixels; ``"auto"`` then keeps the
        shorter side at least :data:`MIN_SIDE_PX` pixels.

    Returns
    -------
    float
        In [0.05, 1] for ``"auto"``, rounded to 3 decimals so that the same
        raster always gets the same grid.
    """
    if not isinstance(window.scale, str):
        return float(window.scale)

    size = pixel_size_m(crs, transform, shape)
    if size is None:
        logger.info("scale auto: the raster's ground pixel size is unknown (no CRS with a datum or metre "
                    "axes), so it is kept (scale 1.0)")
        return 1.0
    target = window.target_resolution
    scale = max(MIN_SCALE, size / target)
    short_side = min(shape) if shape is not None else None
    floor = False
    if short_side is not None and MIN_SIDE_PX / short_side > scale:
        scale, floor = MIN_SIDE_PX / short_side, True

    if scale >= 1.0:
        if floor:
            reason = (f"at {target:g} m its shorter side of {short_side} px would fall below {MIN_SIDE_PX} px, "
                      "and rasters are never upsampled")
        else:
            reason = f"its pixels are not finer than the {target:g} m target, and rasters are never upsampled"
        logger.info("scale auto: %.3f m ground pixels kept (scale 1.0): %s", size, reason)
        return 1.0

    scale = round(scale, 3)
    detail = f", not {target:g} m, to keep the shorter side at {MIN_SIDE_PX} px or more" if floor else ""
    logger.info("scale auto: %.3f m ground pixels resampled by %.3f to about %.2f m%s", size, scale, size / scale,
                detail)
    return scale
