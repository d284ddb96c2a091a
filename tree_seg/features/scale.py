"""Choose the resampling factor of ``scale="auto"`` from the raster's pixel size."""

from __future__ import annotations

import logging
import math

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


def pixel_size_m(crs: CRS | None, transform: Affine) -> float | None:
    """Return the pixel size in metres (geometric mean of both axes), or None.

    None when the raster has no CRS or its CRS is not in metres (degrees,
    feet). Non-square pixels count by the square root of the pixel area.

    NOTE: a projected CRS's metres are taken as ground metres. In Mercator
    (EPSG:3395, EPSG:3857) a map metre covers cos(latitude) ground metres,
    so at 48 degrees north ``scale="auto"`` aims at about 0.67 times the
    target resolution.
    """
    if crs is None:
        return None
    try:
        axes = pyproj.CRS.from_wkt(crs.to_wkt()).axis_info
    except pyproj.exceptions.CRSError:
        return None
    # LOCAL_CS and engineering CRSs have no "linear units" in rasterio but
    # state the unit of each axis.
    if not axes or any(axis.unit_name not in ("metre", "meter") for axis in axes[:2]):
        return None
    area = abs(transform.a * transform.e - transform.b * transform.d)
    return math.sqrt(area) if area > 0 else None


def resolve_scale(
    window: WindowConfig, *, crs: CRS | None, transform: Affine, shape: tuple[int, int] | None = None
) -> float:
    """Return the numeric resampling factor for ``window.scale``.

    Parameters
    ----------
    window : WindowConfig
        A number is returned unchanged; ``"auto"`` aims at
        ``window.target_resolution`` metres per pixel without upsampling.
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

    size = pixel_size_m(crs, transform)
    if size is None:
        logger.info("scale auto: the raster's pixel size is not in metres, so it is kept (scale 1.0)")
        return 1.0
    scale = max(MIN_SCALE, size / window.target_resolution)
    floor = ""
    if shape is not None and MIN_SIDE_PX / min(shape) > scale:
        scale = MIN_SIDE_PX / min(shape)
        floor = f", not {window.target_resolution:g} m, to keep the shorter side at {MIN_SIDE_PX} px or more"
    scale = round(min(1.0, scale), 3)
    logger.info("scale auto: %.3f m pixels resampled by %.3f to about %.2f m%s", size, scale, size / scale, floor)
    return scale
