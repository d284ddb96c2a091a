"""Choose the resampling factor of ``scale="auto"`` from the raster's pixel size."""

from __future__ import annotations

import logging
import math

from affine import Affine
from rasterio.crs import CRS

from tree_seg.config import WindowConfig

__all__ = ["MIN_SCALE", "pixel_size_m", "resolve_scale"]

logger = logging.getLogger(__name__)

MIN_SCALE = 0.05
"""Smallest factor ``scale="auto"`` returns, the lower bound of ``WindowConfig.scale``."""


def pixel_size_m(crs: CRS | None, transform: Affine) -> float | None:
    """Return the pixel size in metres (geometric mean of both axes), or None.

    None when the raster has no CRS or its CRS is not in metres (degrees,
    feet). Non-square pixels count by the square root of the pixel area.
    """
    if crs is None:
        return None
    units = (crs.linear_units or "").lower()
    if units not in ("metre", "meter", "m"):
        return None
    area = abs(transform.a * transform.e - transform.b * transform.d)
    return math.sqrt(area) if area > 0 else None


def resolve_scale(window: WindowConfig, *, crs: CRS | None, transform: Affine) -> float:
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
    scale = round(min(1.0, max(MIN_SCALE, size / window.target_resolution)), 3)
    logger.info("scale auto: %.3f m pixels resampled by %.3f to about %.2f m", size, scale, size / scale)
    return scale
