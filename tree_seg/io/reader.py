"""Open a raster lazily and read windows of it as scaled images with a valid mask.

:func:`open_raster` inspects the input once: it selects the feature bands,
picks the nodata rule, and fixes a per-band offset and scale from a decimated
sample of the raster. The returned :class:`RasterSource` then reads any window
with the same numbers, so a chunk read in a worker process gives exactly the
values of the same pixels in a whole-raster read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import numpy as np
import rasterio
import rasterio.crs
import rioxarray
import xarray as xr
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from tree_seg.config import ReadConfig
from tree_seg.exceptions import InvalidInputError, NoGeoreferenceWarning
from tree_seg.io.nodata import NodataRule, choose_nodata_rule, valid_mask, widen_collar_tolerance

__all__ = ["NodataRule", "RasterSource", "open_raster"]

logger = logging.getLogger(__name__)

SAMPLE_MAX_SIDE = 1024
"""Maximum side, in pixels, of the decimated sample that fixes scaling and the nodata rule."""

BORDER_MAX_SAMPLES = 8192
"""Maximum number of pixels read from each raster edge for collar detection; shorter edges are read whole."""


@dataclass
class RasterSource:
    """A raster opened for reading, with its band selection, scaling and nodata rule fixed.

    A file source stores its path, never an open rasterio dataset, so it
    pickles and each worker process reopens the file for every window it
    reads. An array source pickles its DataArray, with its values when they
    are in memory.

    Attributes
    ----------
    data : xarray.DataArray
        Lazy raw values of the selected bands, dims ("band", "y", "x"), in the
        input's dtype, dask-backed when opened with ``chunks``. Georeferenced
        inputs carry their CRS and transform in ``rio``.
    alpha : xarray.DataArray or None
        Lazy alpha band, dims ("y", "x"), when the file has one.
    path : Path or None
        The file, or ``None`` for an in-memory DataArray.
    stem : str
        File name without its suffix, ``"array"`` for a DataArray.
    crs : rasterio.crs.CRS or None
        ``None`` when the input has no CRS.
    transform : affine.Affine
        Pixel-to-CRS transform, also without a CRS; the identity for a file
        without a geotransform.
    height, width : int
        Raster size in pixels.
    dtype : numpy.dtype
        dtype of the raw values.
    band_indices : tuple of int
        1-based indices of the selected bands in the file, in feature order;
        a single band appears three times.
    georeferenced : bool
        Whether the input has a CRS.
    nodata_rule : NodataRule
        How :meth:`read_window` builds the valid mask.
    band_offset, band_scale : numpy.ndarray of shape (band,), float32
        Per-band scaling in raw units: ``image = clip((raw - offset) / scale, 0, 1)``.
    """

    data: xr.DataArray
    alpha: xr.DataArray | None
    path: Path | None
    stem: str
    crs: rasterio.crs.CRS | None
    transform: affine.Affine
    height: int
    width: int
    dtype: np.dtype
    band_indices: tuple[int, ...]
    georeferenced: bool
    nodata_rule: NodataRule
    band_offset: np.ndarray
    band_scale: np.ndarray

    def _read_raw(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.path is None:
            raw = np.asarray(self.data.isel(y=slice(y0, y1), x=slice(x0, x1)).values)
            return raw, None

        window = Window.from_slices((y0, y1), (x0, x1))
        unique = sorted(set(self.band_indices))
        with _open_dataset(self.path, georeferenced=self.georeferenced) as src:
            stack = src.read(unique, window=window)
            alpha = None
            if self.nodata_rule.alpha_band is not None:
                alpha = src.read(self.nodata_rule.alpha_band, window=window)
        raw = stack[[unique.index(band) for band in self.band_indices]]
        return raw, alpha

    def _scale(self, raw: np.ndarray) -> np.ndarray:
        offset = self.band_offset[:, None, None]
        scale = self.band_scale[:, None, None]
        image = raw.astype(np.float32)
        np.subtract(image, offset, out=image)
        np.divide(image, scale, out=image)
        np.clip(image, 0.0, 1.0, out=image)
        if np.issubdtype(raw.dtype, np.floating):
            # NaN survives the clip; a zero keeps it out of the backbone, and
            # the valid mask already marks the pixel.
            image[np.isnan(image)] = 0.0
        return image

    def _check_window(self, y0: int, y1: int, x0: int, x1: int) -> None:
        for name, value in (("y0", y0), ("y1", y1), ("x0", x0), ("x1", x1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(f"invalid window bound {name}={value!r}: expected an integer")
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise InvalidInputError(
                f"invalid window y {y0}:{y1}, x {x0}:{x1}: expected 0 <= y0 < y1 <= {self.height} "
                f"and 0 <= x0 < x1 <= {self.width}"
            )

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Read one window as a scaled image and its valid mask.

        Rules that clean a collar read ``nodata_rule.halo`` extra pixels on
        each side (clipped at the raster edge) and crop them off, so the
        result equals the same crop of :meth:`read`.

        Parameters
        ----------
        y0, y1, x0, x1 : int
            Pixel bounds, end exclusive, within the raster.

        Returns
        -------
        image : numpy.ndarray of shape (band, y1 - y0, x1 - x0), float32
            Values in [0, 1]; NaN input pixels are 0.
        valid : numpy.ndarray of shape (y1 - y0, x1 - x0), bool
            True where the pixel has data.

        Raises
        ------
        InvalidInputError
            If the bounds are not integers or lie outside the raster.
        """
        self._check_window(y0, y1, x0, x1)

        halo = self.nodata_rule.halo
        ya, yb = max(0, y0 - halo), min(self.height, y1 + halo)
        xa, xb = max(0, x0 - halo), min(self.width, x1 + halo)
        raw, alpha = self._read_raw(ya, yb, xa, xb)

        valid = valid_mask(raw, self.nodata_rule, alpha=alpha)
        core = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
        image = self._scale(raw[(slice(None), *core)])
        return image, valid[core]

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Read the whole raster into memory; the same as ``read_window(0, height, 0, width)``."""
        return self.read_window(0, self.height, 0, self.width)

    def read_sample(self, *, max_side: int = SAMPLE_MAX_SIDE) -> tuple[np.ndarray, np.ndarray]:
        """Read a decimated copy of the raster for previews and checks.

        Pixels are picked by nearest-neighbour decimation (from an overview
        when the file has one). The valid mask applies the nodata rule without
        collar clean-up, because its pixel distances do not hold after
        decimation.

        Parameters
        ----------
        max_side : int, default=1024
            Maximum side of the sample in pixels.

        Returns
        -------
        image : numpy.ndarray of shape (band, h, w), float32 in [0, 1]
        valid : numpy.ndarray of shape (h, w), bool
        """
        raw, alpha = _read_decimated(self.data, self.path, self.band_indices, self.nodata_rule.alpha_band,
                                     max_side=max_side, georeferenced=self.georeferenced)
        return self._scale(raw), valid_mask(raw, self.nodata_rule, alpha=alpha, clean=False)

    def check_has_valid_pixels(self) -> None:
        """Raise when a decimated sample of the raster has no valid pixel.

        The sample has at most 1024 pixels per side, so a raster whose few
        valid pixels all fall between sampled ones passes.

        Raises
        ------
        InvalidInputError
            If no sampled pixel is valid under the nodata rule.
        """
        _, valid = self.read_sample()
        _check_sample_valid(valid, self.path, self.nodata_rule)

    def to_dict(self) -> dict[str, Any]:
        """Describe the source as JSON-ready values for the run metadata."""
        return {
            "path": None if self.path is None else str(self.path),
            "stem": self.stem,
            "height": self.height,
            "width": self.width,
            "dtype": str(self.dtype),
            "band_indices": list(self.band_indices),
            "crs_wkt": None if self.crs is None else self.crs.to_wkt(),
            "transform": list(self.transform)[:6],
            "georeferenced": self.georeferenced,
            "nodata_rule": dataclasses.asdict(self.nodata_rule),
            "band_offset": [float(v) for v in self.band_offset],
            "band_scale": [float(v) for v in self.band_scale],
        }


def _check_sample_valid(valid: np.ndarray, path: Path | None, rule: NodataRule) -> None:
    if not valid.any():
        name = "the array" if path is None else str(path)
        raise InvalidInputError(
            f"{name} has no valid pixel under nodata rule {rule.kind!r} (value={rule.value}): "
            "pass another --nodata value, or --nodata none to treat every pixel as valid"
        )


@contextlib.contextmanager
def _open_dataset(path: Path, *, georeferenced: bool = False) -> Iterator[rasterio.DatasetReader]:
    """Open a file with rasterio, silencing the NotGeoreferencedWarning that NoGeoreferenceWarning replaces.

    A read error in the block becomes an InvalidInputError with GDAL's own message.
    """
    try:
        if georeferenced:
            # catch_warnings swaps process-wide filters and is not thread-safe,
            # so files that cannot raise the warning skip it.
            with rasterio.open(path) as src:
                yield src
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    except RasterioIOError as error:
        raise _read_error(path, error) from error


def _read_error(path: Path | str, error: RasterioIOError) -> InvalidInputError:
    # rasterio's "Read failed. See previous exception for details." keeps
    # GDAL's message in the chained exceptions, which the CLI does not print.
    message = str(error)
    cause = error.__cause__
    while "previous exception" in message and cause is not None:
        message, cause = str(cause), cause.__cause__
    return InvalidInputError(f"failed to read raster {path}: {message.rstrip('.')}; the file may be truncated or "
                             "damaged (gdalinfo -checksum reads every block)")


def _decimation(height: int, width: int, max_side: int) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def _read_decimated(
    data: xr.DataArray,
    path: Path | None,
    band_indices: tuple[int, ...],
    alpha_band: int | None,
    *,
    max_side: int,
    georeferenced: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    height, width = data.sizes["y"], data.sizes["x"]
    step = _decimation(height, width, max_side)

    if path is None:
        raw = np.asarray(data.isel(y=slice(None, None, step), x=slice(None, None, step)).values)
        return raw, None

    out_shape = (math.ceil(height / step), math.ceil(width / step))
    unique = sorted(set(band_indices))
    with _open_dataset(path, georeferenced=georeferenced) as src:
        stack = src.read(unique, out_shape=(len(unique), *out_shape), resampling=Resampling.nearest)
        alpha = None
        if alpha_band is not None:
            alpha = src.read(alpha_band, out_shape=out_shape, resampling=Resampling.nearest)
    return stack[[unique.index(band) for band in band_indices]], alpha


def _read_border(src: rasterio.DatasetReader, band_indices: tuple[int, ...]) -> np.ndarray:
    unique = sorted(set(band_indices))
    height, width = src.height, src.width
    row_samples = min(width, BORDER_MAX_SAMPLES)
    column_samples = min(height, BORDER_MAX_SAMPLES)

    edges = []
    for row in {0, height - 1}:
        window = Window(0, row, width, 1)
        edges.append(src.read(unique, window=window, out_shape=(len(unique), 1, row_samples))[:, 0, :])
    for column in {0, width - 1}:
        window = Window(column, 0, 1, height)
        edges.append(src.read(unique, window=window, out_shape=(len(unique), column_samples, 1))[:, :, 0])
    return np.concatenate(edges, axis=1)


def _select_bands(count: int, alpha_band: int | None, requested: tuple[int, ...] | None) -> tuple[int, ...]:
    if requested is not None:
        for band in requested:
            if not 1 <= band <= count:
                raise InvalidInputError(
                    f"invalid band {band}: the input has {count} band(s); pass --bands with indices from 1 to {count}"
                )
        selected = tuple(requested)
    else:
        colour = tuple(band for band in range(1, count + 1) if band != alpha_band)
        if len(colour) == 0:
            raise InvalidInputError(f"the input has no colour band, only alpha band {alpha_band}: pass --bands")
        if len(colour) == 2:
            raise InvalidInputError(
                f"the input has 2 colour bands {colour}: pass --bands with one or three indices, e.g. --bands 1"
            )
        selected = colour[:3]

    # Backbones take three channels, so one band becomes a grey RGB image.
    if len(selected) == 1:
        return selected * 3
    if len(selected) != 3:
        raise InvalidInputError(
            f"invalid bands {selected}: backbones take 3 channels; pass one or three band indices"
        )
    return selected


def _scaling(dtype: np.dtype, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Choose per-band offset and scale from valid sample values of shape (band, n)."""
    bands = values.shape[0]
    offset = np.zeros(bands, dtype=np.float32)

    if dtype == np.uint8:
        return offset, np.full(bands, 255.0, dtype=np.float32)

    if dtype == np.uint16:
        # 12-bit sensors store 0..4095 in uint16. NOTE: the max comes from a
        # decimated sample, so a few brighter pixels it missed clip to 1.
        top = 4095.0 if values.size == 0 or values.max() <= 4095 else 65535.0
        return offset, np.full(bands, top, dtype=np.float32)

    finite = np.where(np.isfinite(values), values, np.nan)
    if values.size == 0 or np.all(np.isnan(finite)):
        return offset, np.ones(bands, dtype=np.float32)
    if np.nanmin(finite) >= 0 and np.nanmax(finite) <= 1:
        return offset, np.ones(bands, dtype=np.float32)
    whole = finite[np.isfinite(finite)]
    if np.nanmin(finite) >= 0 and np.array_equal(whole, np.round(whole)):
        # Whole numbers are integer data stored as floats, e.g. by rioxarray's
        # masked=True, and keep the scale their integer dtype would get.
        level = next((level for level in (255.0, 4095.0, 65535.0) if np.nanmax(finite) <= level), None)
        if level is not None:
            return offset, np.full(bands, level, dtype=np.float32)

    # Other data get a 2-98% stretch per band, which ignores outliers.
    low = np.nanpercentile(finite, 2, axis=1)
    high = np.nanpercentile(finite, 98, axis=1)
    scale = np.where(high > low, high - low, 1.0)
    return low.astype(np.float32), scale.astype(np.float32)


def _chunk_spec(chunks: int | dict | None) -> dict | None:
    if chunks is None or isinstance(chunks, dict):
        return chunks
    return {"band": -1, "y": chunks, "x": chunks}


def _log_unlikely_alpha(alpha: np.ndarray, path: Path, band: int) -> None:
    # GDAL tags band 4 of a 4-band uint8 GeoTIFF as alpha by default, so an
    # RGB + NIR file can arrive with its NIR band marked alpha.
    top = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
    partial = float(np.mean((alpha != 0) & (alpha != top)))
    if partial > 0.5:
        logger.warning(
            "Band %d of %s is marked alpha, but %.0f%% of sampled values are neither 0 nor %s, so it may be a "
            "data band such as near-infrared; its zeros are treated as nodata. Pass --nodata none to ignore it.",
            band, path, 100 * partial, top,
        )


def _file_tag(src: rasterio.DatasetReader, band_indices: tuple[int, ...]) -> float | None:
    values = {src.nodatavals[band - 1] for band in band_indices}
    if values == {None}:
        return None
    if len(values) > 1:
        raise InvalidInputError(
            f"{src.name} has different nodata tags {sorted(map(str, values))} on the selected bands: "
            "pass --nodata with one value"
        )
    return float(values.pop())


def _open_file(path: Path, config: ReadConfig, chunks: int | dict | None) -> RasterSource:
    if not path.is_file():
        raise InvalidInputError(f"raster {path} not found: check the path")
    try:
        with _open_dataset(path) as src:
            alphas = [i + 1 for i, colour in enumerate(src.colorinterp) if colour == ColorInterp.alpha]
            alpha_band = alphas[0] if alphas else None
            band_indices = _select_bands(src.count, alpha_band, config.bands)
            dtypes = {src.dtypes[band - 1] for band in band_indices}
            if len(dtypes) > 1:
                raise InvalidInputError(f"{path} mixes dtypes {sorted(dtypes)} in the selected bands: pass --bands")
            dtype = np.dtype(dtypes.pop())
            tag = _file_tag(src, band_indices)
            crs = src.crs
            # A file without a geotransform reads as the identity.
            transform = src.transform
            border = _read_border(src, band_indices)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                full = rioxarray.open_rasterio(path, chunks=_chunk_spec(chunks), masked=False)
    except RasterioIOError as error:
        raise _read_error(path, error) from error
    if not isinstance(full, xr.DataArray):
        raise InvalidInputError(f"rioxarray opens {path} as a {type(full).__name__}, not one DataArray of bands: "
                                "pass a file with a single raster, such as a GeoTIFF")

    data = full.sel(band=list(band_indices))
    alpha = full.sel(band=alpha_band) if alpha_band is not None else None
    sample, sample_alpha = _read_decimated(data, path, band_indices, alpha_band, max_side=SAMPLE_MAX_SIDE,
                                           georeferenced=crs is not None)
    if sample_alpha is not None and alpha_band is not None:
        _log_unlikely_alpha(sample_alpha, path, alpha_band)
    rule = choose_nodata_rule(config, tag=tag, alpha_band=alpha_band, sample=sample, border=border)

    return _assemble(data, alpha, path=path, stem=path.stem, crs=crs, transform=transform, dtype=dtype,
                     band_indices=band_indices, rule=rule, sample=sample, sample_alpha=sample_alpha)


def _open_array(array: xr.DataArray, config: ReadConfig, chunks: int | dict | None) -> RasterSource:
    if array.dims == ("y", "x"):
        array = array.expand_dims(band=[1])
    if array.dims != ("band", "y", "x"):
        raise InvalidInputError(
            f"invalid DataArray dims {array.dims}: expected ('band', 'y', 'x') or ('y', 'x'); "
            "use .transpose('band', 'y', 'x')"
        )
    if array.sizes["y"] == 0 or array.sizes["x"] == 0:
        raise InvalidInputError(f"invalid DataArray of shape {array.shape}: it has no pixel")

    band_indices = _select_bands(array.sizes["band"], None, config.bands)
    data = array.isel(band=[band - 1 for band in band_indices])
    if chunks is not None:
        data = data.chunk(_chunk_spec(chunks))
    dtype = np.dtype(array.dtype)

    crs = array.rio.crs
    transform = array.rio.transform()
    tag = array.rio.nodata if array.rio.nodata is not None else array.rio.encoded_nodata
    tag = None if tag is None else float(tag)

    border = _array_border(data)
    sample, _ = _read_decimated(data, None, band_indices, None, max_side=SAMPLE_MAX_SIDE, georeferenced=True)
    rule = choose_nodata_rule(config, tag=tag, alpha_band=None, sample=sample, border=border)

    return _assemble(data, None, path=None, stem="array", crs=crs, transform=transform, dtype=dtype,
                     band_indices=band_indices, rule=rule, sample=sample, sample_alpha=None)


def _array_border(data: xr.DataArray) -> np.ndarray:
    """Return the outermost pixels of an array source as (band, n), reading only its edges."""
    height, width = data.sizes["y"], data.sizes["x"]
    bands = data.sizes["band"]
    rows = np.asarray(data.isel(y=sorted({0, height - 1})).values)
    columns = np.asarray(data.isel(x=sorted({0, width - 1})).values)
    return np.concatenate([rows.reshape(bands, -1), columns.reshape(bands, -1)], axis=1)


def _assemble(
    data: xr.DataArray,
    alpha: xr.DataArray | None,
    *,
    path: Path | None,
    stem: str,
    crs: rasterio.crs.CRS | None,
    transform: affine.Affine,
    dtype: np.dtype,
    band_indices: tuple[int, ...],
    rule: NodataRule,
    sample: np.ndarray,
    sample_alpha: np.ndarray | None,
) -> RasterSource:
    sample_valid = valid_mask(sample, rule, alpha=sample_alpha, clean=False)
    _check_sample_valid(sample_valid, path, rule)

    offset, scale = _scaling(dtype, sample[:, sample_valid])
    rule = widen_collar_tolerance(rule, scale)

    return RasterSource(
        data=data,
        alpha=alpha,
        path=path,
        stem=stem,
        crs=crs,
        transform=transform,
        height=int(data.sizes["y"]),
        width=int(data.sizes["x"]),
        dtype=dtype,
        band_indices=band_indices,
        georeferenced=crs is not None,
        nodata_rule=rule,
        band_offset=offset,
        band_scale=scale,
    )


def open_raster(
    source: str | Path | xr.DataArray,
    config: ReadConfig | None = None,
    *,
    chunks: int | dict | None = 2048,
) -> RasterSource:
    """Open a raster file or DataArray for windowed, scaled reading.

    Only metadata, the four edges and a decimated sample of at most 1024
    pixels per side are read here.

    Parameters
    ----------
    source : str, Path or xarray.DataArray
        A file GDAL can read (GeoTIFF, PNG, JPEG, ...) or a DataArray with dims
        ("band", "y", "x") or ("y", "x"), in raw units, with an optional
        rioxarray CRS, transform and nodata.
    config : ReadConfig or None, default=None
        Band selection and nodata settings; ``None`` uses ``ReadConfig()``.
    chunks : int, dict or None, default=2048
        Dask chunk side in pixels of :attr:`RasterSource.data`, or a dict of
        chunks per dim. The band axis stays in one chunk. ``None`` keeps the
        data lazy without dask.

    Returns
    -------
    RasterSource

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable, the band selection is invalid,
        the selected bands have different nodata tags or dtypes, or the
        decimated sample has no valid pixel.

    Warns
    -----
    NoGeoreferenceWarning
        If the input has no CRS; outputs then use pixel coordinates.

    Notes
    -----
    Bands: ``config.bands`` takes 1-based indices. By default an alpha band
    (colour interpretation alpha) is never a feature. Of the other bands the
    first three are used and a single band is repeated three times, while
    two bands raise an error asking for ``--bands``. An explicit selection
    must have one band (repeated) or three.

    Scaling to [0, 1] is fixed here for every later read. uint8 is divided
    by 255. uint16 is divided by 4095 when the sample's maximum is at most
    4095 (12-bit data), and by 65535 otherwise. Float data in [0, 1] is kept.
    Float data whose sample holds only whole numbers from 0 to 65535, such
    as 8-bit data that rioxarray's ``masked=True`` turned into floats, is
    divided by the smallest of 255, 4095 and 65535 at or above its maximum.
    Other data get a per-band 2nd-98th percentile stretch of the valid
    sample pixels.

    Nodata with ``config.nodata="auto"``: the nodata tag, then an alpha
    band, then NaN (float data), then a collar found on the border by
    :func:`tree_seg.io.nodata.detect_collar_value`, else no nodata. A
    detected collar uses a tolerance of at least 10/255 of the band scale
    (10 digital numbers for uint8) so JPEG's almost-collar pixels count.
    See :class:`NodataRule` for how each rule builds the mask.
    """
    config = ReadConfig() if config is None else config

    if isinstance(source, xr.DataArray):
        raster = _open_array(source, config, chunks)
    elif isinstance(source, (str, Path)):
        raster = _open_file(Path(source), config, chunks)
    else:
        raise InvalidInputError(
            f"invalid source of type {type(source).__name__}: expected a path or an xarray.DataArray"
        )

    if not raster.georeferenced:
        placement = ("pixel coordinates and an identity transform" if raster.transform == affine.Affine.identity()
                     else "its transform without a CRS")
        warnings.warn(f"{raster.path or 'the array'} has no CRS: outputs use {placement}", NoGeoreferenceWarning,
                      stacklevel=2)

    rule = raster.nodata_rule
    fringe = f", fringe tolerance {rule.fringe_tolerance:g} within {rule.fringe_width} px" if rule.fringe_width else ""
    logger.info(
        "Opened %s: %d x %d pixels (width x height), %s, bands %s, nodata rule %s (value=%s, tolerance=%s%s, "
        "buffer=%d)", raster.path or "array", raster.width, raster.height, raster.dtype, raster.band_indices,
        rule.kind, rule.value, rule.tolerance, fringe, rule.buffer,
    )
    return raster
