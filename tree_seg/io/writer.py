"""Write label GeoTIFFs and JSON files so that no half-written output looks finished.

Every writer here writes to a temporary name in the destination folder and
renames it with :func:`os.replace` only after the file is complete. On any
error the temporary file is removed and the destination is left as it was.

Label rasters are GeoTIFFs: uint8, tiled 256 x 256, DEFLATE with horizontal
differencing (predictor 2), nodata 255, internal overviews built with the
``mode`` resampling (the most common label in each block), and the input's
CRS and transform written back unchanged.

GeoTIFF keys reproduce most CRSs exactly, including a LOCAL_CS with no EPSG
code. Some they change: an engineering CRS loses its datum, and a custom
projection gets rounded numbers (seen with rasterio 1.4 and its bundled
GDAL). For those the writer adds a GDAL PAM sidecar, ``<name>.aux.xml``,
with the exact WKT, which GDAL reads in preference to the keys. The sidecar
must travel with the GeoTIFF; without it GDAL falls back to the keys.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
import warnings
from pathlib import Path
from xml.sax.saxutils import escape
from types import TracebackType
from typing import Any

import affine
import numpy as np
import rasterio
import rasterio.shutil
import rasterio.crs
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from tree_seg.exceptions import InvalidInputError

__all__ = ["LabelRasterWriter", "to_json", "write_json_atomic", "write_label_raster"]

logger = logging.getLogger(__name__)

TILE_SIZE = 256
"""Side in pixels of the GeoTIFF tiles and the largest side of the smallest overview."""


def _temporary_path(path: Path) -> Path:
    # A hidden name in the same folder, so os.replace stays on one file system
    # and a listing of finished outputs never shows it.
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _remove_quietly(path: Path) -> None:
    for candidate in (path, _sidecar_path(path)):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("Failed to remove temporary file %s", candidate, exc_info=True)


def overview_factors(height: int, width: int) -> list[int]:
    """Return the overview decimation factors for a raster of this size.

    Factors double (2, 4, 8, ...) until the smallest overview fits in one
    256 x 256 tile; a raster that already fits gets none.

    Parameters
    ----------
    height, width : int
        Raster size in pixels.

    Returns
    -------
    list of int
    """
    factors = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > TILE_SIZE:
        factors.append(factor)
        factor *= 2
    return factors


def _check_crs(crs: rasterio.crs.CRS | str | None) -> rasterio.crs.CRS | None:
    if crs is None or isinstance(crs, rasterio.crs.CRS):
        return crs
    try:
        return rasterio.crs.CRS.from_user_input(crs)
    except rasterio.errors.CRSError as error:
        raise InvalidInputError(f"invalid crs {crs!r}: {error}; pass a WKT string or a rasterio CRS") from error


def _write_exact_crs(path: Path, crs: rasterio.crs.CRS) -> Path | None:
    """Add a PAM sidecar with the exact WKT when the GeoTIFF keys of ``path`` change it.

    Returns the sidecar path, or None when the keys reproduce the WKT.
    """
    expected = crs.to_wkt()
    with rasterio.open(path) as src:
        if src.crs is not None and src.crs.to_wkt() == expected:
            return None

    sidecar = _sidecar_path(path)
    sidecar.write_text(f"<PAMDataset>\n  <SRS>{escape(expected)}</SRS>\n</PAMDataset>\n", encoding="utf-8")

    with rasterio.open(path) as src:
        if src.crs is None or src.crs.to_wkt() != expected:
            logger.warning("The CRS of %s differs from the input's even with a PAM sidecar: %s", path, src.crs)
    return sidecar


def _check_labels(labels: np.ndarray) -> None:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        shape = getattr(labels, "shape", None)
        raise InvalidInputError(f"invalid labels of shape {shape}: expected a 2-D array with dims (y, x)")
    if labels.dtype != np.uint8:
        raise InvalidInputError(
            f"invalid labels dtype {labels.dtype}: expected uint8 (0..K-1, 255 = nodata); "
            "set nodata pixels to 255 and convert with labels.astype(np.uint8)"
        )


class LabelRasterWriter:
    """Context manager that writes a label GeoTIFF window by window.

    The file is created under a temporary name on entry. A clean exit builds
    the overviews, closes the file, adds a CRS sidecar when needed (see the
    module notes) and renames the file to ``path``. An exception
    inside the ``with`` block removes the temporary file and leaves ``path``
    untouched. Windows may be written in any order; pixels never written read
    as ``nodata``. One writer must be used from one process.

    Parameters
    ----------
    path : str or Path
        Destination file; its folder must exist.
    height, width : int
        Raster size in pixels.
    crs : rasterio.crs.CRS, str or None
        The input's CRS, written unchanged; ``None`` writes no CRS.
    transform : affine.Affine or None
        Pixel-to-CRS transform, kept without a CRS too; None writes the identity.
    nodata : int, default=255
        Nodata value of the labels, in 0..255.
    overviews : bool, default=True
        Build internal overviews on close.

    Examples
    --------
    >>> with LabelRasterWriter(path, height=512, width=512, crs=crs, transform=transform) as writer:
    ...     writer.write_window(labels[:256], 0, 0)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        crs: rasterio.crs.CRS | str | None,
        transform: affine.Affine | None,
        nodata: int = 255,
        overviews: bool = True,
    ) -> None:
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidInputError(f"invalid {name}={value!r}: expected a positive integer")
        if isinstance(nodata, bool) or not isinstance(nodata, (int, np.integer)) or not 0 <= nodata <= 255:
            raise InvalidInputError(f"invalid nodata={nodata!r}: expected an integer in 0..255")

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"output folder {self.path.parent} not found: create it first")
        self.height = int(height)
        self.width = int(width)
        self.crs = _check_crs(crs)
        self.transform = transform if transform is not None else affine.Affine.identity()
        self.nodata = int(nodata)
        self.overviews = overviews
        self._temporary: Path | None = None
        self._dataset: rasterio.io.DatasetWriter | None = None

    def _profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "height": self.height,
            "width": self.width,
            "count": 1,
            "dtype": "uint8",
            "nodata": self.nodata,
            "tiled": True,
            "blockxsize": TILE_SIZE,
            "blockysize": TILE_SIZE,
            "compress": "deflate",
            "predictor": 2,
        }
        if self.crs is not None:
            profile["crs"] = self.crs
        if self.transform != affine.Affine.identity():
            profile["transform"] = self.transform
        return profile

    def __enter__(self) -> LabelRasterWriter:
        self._temporary = _temporary_path(self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dataset = rasterio.open(self._temporary, "w", **self._profile())
        except Exception:
            _remove_quietly(self._temporary)
            raise
        return self

    def write_window(self, labels: np.ndarray, y0: int, x0: int) -> None:
        """Write a block of labels with its top-left corner at pixel (y0, x0).

        Parameters
        ----------
        labels : numpy.ndarray of shape (h, w), uint8
            Labels 0..K-1, ``nodata`` where invalid.
        y0, x0 : int
            Pixel offset of the block's top-left corner.

        Raises
        ------
        InvalidInputError
            If the labels are not a 2-D uint8 array or the block does not fit
            in the raster.
        """
        if self._dataset is None:
            raise InvalidInputError("the writer is not open: use it in a `with LabelRasterWriter(...)` block")
        _check_labels(labels)
        height, width = labels.shape
        if y0 < 0 or x0 < 0 or y0 + height > self.height or x0 + width > self.width:
            raise InvalidInputError(
                f"invalid window at y0={y0}, x0={x0} of shape {labels.shape}: it must fit in "
                f"{self.height} x {self.width} pixels"
            )
        self._dataset.write(labels, 1, window=Window(x0, y0, width, height))

    def _finish(self) -> None:
        assert self._dataset is not None and self._temporary is not None
        factors = overview_factors(self.height, self.width) if self.overviews else []
        self._dataset.close()
        self._dataset = None

        # GDAL's COG driver lays out tiles, overviews and the header so that
        # readers can fetch parts by HTTP range requests. It can only copy an
        # existing dataset, so it writes a second temporary file.
        written = self._temporary
        self._temporary = written.with_name(f"{written.stem}.cog{written.suffix}")
        try:
            rasterio.shutil.copy(
                written, self._temporary, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=256,
                OVERVIEWS="AUTO" if factors else "NONE", OVERVIEW_RESAMPLING="MODE",
            )
        finally:
            _remove_quietly(written)

        sidecar = _write_exact_crs(self._temporary, self.crs) if self.crs is not None else None
        final_sidecar = _sidecar_path(self.path)
        if sidecar is not None:
            os.replace(sidecar, final_sidecar)
        elif final_sidecar.exists():
            # A sidecar left by an earlier output would override this file's CRS.
            final_sidecar.unlink()
        os.replace(self._temporary, self.path)
        logger.info("Wrote %s: %d x %d labels (width x height), overview factors %s", self.path, self.width, self.height,
                    factors)

    def _abort(self) -> None:
        if self._dataset is not None:
            try:
                self._dataset.close()
            except Exception:
                logger.warning("Failed to close temporary file %s", self._temporary, exc_info=True)
            self._dataset = None
        if self._temporary is not None:
            _remove_quietly(self._temporary)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise


def write_label_raster(
    labels: np.ndarray,
    path: str | Path,
    *,
    crs: rasterio.crs.CRS | str | None,
    transform: affine.Affine | None,
    nodata: int = 255,
    overviews: bool = True,
) -> Path:
    """Write a whole label raster as a GeoTIFF, atomically.

    Parameters
    ----------
    labels : numpy.ndarray of shape (y, x), uint8
        Labels 0..K-1, ``nodata`` where invalid.
    path : str or Path
        Destination file; its folder must exist.
    crs : rasterio.crs.CRS, str or None
        The input's CRS, written unchanged; ``None`` writes no CRS.
    transform : affine.Affine or None
        The input's pixel-to-CRS transform, non-square pixels included; None
        writes the identity.
    nodata : int, default=255
        Nodata value, in 0..255.
    overviews : bool, default=True
        Build internal overviews (``mode`` resampling).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InvalidInputError
        If the labels are not a 2-D uint8 array, or an argument is invalid.
    """
    _check_labels(labels)
    height, width = labels.shape
    with LabelRasterWriter(path, height=height, width=width, crs=crs, transform=transform, nodata=nodata,
                           overviews=overviews) as writer:
        writer.write_window(labels, 0, 0)
    return Path(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """Return an object as JSON text; NumPy scalars and arrays become numbers and lists, paths strings.

    Raises
    ------
    TypeError
        If ``obj`` contains a value JSON cannot represent.
    """
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write an object as indented JSON through a temporary file and a rename.

    NumPy scalars and arrays become numbers and lists, and paths become
    strings.

    Parameters
    ----------
    obj : Any
        A JSON-serialisable object.
    path : str or Path
        Destination file; its folder must exist.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    TypeError
        If ``obj`` contains a value JSON cannot represent; nothing is written.
    """
    path = Path(path)
    text = to_json(obj, indent=2) + "\n"

    temporary = _temporary_path(path)
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise
    return path
