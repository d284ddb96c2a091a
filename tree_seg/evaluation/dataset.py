"""Labelled dataset folders: image-mask pairing, class names and mask reading.

A dataset folder contains::

    images/   GeoTIFF or PNG images
    masks/    GeoTIFF or PNG label masks, 255 = ignore
    classes.txt or classes.json   (optional) class names

An image and a mask pair when their file stems are equal after removing a
trailing ``_image`` from the image stem and ``_mask`` from the mask stem, so
``images/tcd_00004_image.tif`` pairs with ``masks/tcd_00004_mask.tif`` and
``images/a.png`` with ``masks/a.tif``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from tree_seg.exceptions import DatasetError

__all__ = ["Dataset", "Pair", "load_dataset", "read_mask"]

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".png")
"""File suffixes (compared in lower case) read as images or masks. Other files are skipped."""

MASK_IGNORE = 255
"""Mask value of unlabelled pixels, also given to image pixels that the mask does not cover."""


@dataclass(frozen=True)
class Pair:
    """An image and its label mask."""

    stem: str
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class Dataset:
    """Image-mask pairs of a dataset folder, sorted by stem, and optional class names."""

    root: Path
    pairs: list[Pair]
    class_names: list[str] | None


def _pairing_key(path: Path, suffix_to_drop: str) -> str:
    stem = path.stem
    if stem.endswith(suffix_to_drop) and len(stem) > len(suffix_to_drop):
        return stem[: -len(suffix_to_drop)]
    return stem


def _index_rasters(folder: Path, suffix_to_drop: str) -> dict[str, Path]:
    """Map each pairing key to its raster file in one folder, raising when two files share a key."""
    index: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in RASTER_SUFFIXES:
            logger.debug("skipping %s: not a %s file", path, "/".join(RASTER_SUFFIXES))
            continue
        key = _pairing_key(path, suffix_to_drop)
        if key in index:
            raise DatasetError(
                f"{index[key]} and {path} both pair as {key!r}; remove or rename one of them"
            )
        index[key] = path
    return index


def _describe_unpaired(paths: list[Path]) -> str:
    listed = ", ".join(str(path) for path in paths[:3])
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return listed + more


def _read_class_names_txt(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for number, name in enumerate(names, start=1):
        if not name:
            raise DatasetError(
                f"{path} line {number} is empty; write one class name per line, line i for class i"
            )
    return names


def _read_class_names_json(path: Path) -> list[str]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); expected {{\"0\": \"name\", ...}}") from err
    if not isinstance(content, dict):
        raise DatasetError(f"{path} contains a {type(content).__name__}; expected {{\"0\": \"name\", ...}}")

    by_index: dict[int, str] = {}
    for key, name in content.items():
        try:
            index = int(key)
        except ValueError:
            raise DatasetError(f"{path} has key {key!r}; keys must be class indices such as \"0\"") from None
        if not isinstance(name, str):
            raise DatasetError(f"{path} maps {key!r} to {name!r}; class names must be strings")
        by_index[index] = name

    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(
            f"{path} has class indices {sorted(by_index)}; expected every index from 0 to {len(by_index) - 1}"
        )
    return [by_index[index] for index in range(len(by_index))]


def _read_class_names(root: Path) -> list[str] | None:
    txt_path = root / "classes.txt"
    json_path = root / "classes.json"
    if txt_path.exists() and json_path.exists():
        raise DatasetError(f"{root} has both classes.txt and classes.json; keep only one")
    if txt_path.exists():
        return _read_class_names_txt(txt_path)
    if json_path.exists():
        return _read_class_names_json(json_path)
    return None


def load_dataset(folder: str | os.PathLike[str]) -> Dataset:
    """Pair the images and masks of a dataset folder and read its class names.

    Parameters
    ----------
    folder : str or path-like
        Folder with ``images/`` and ``masks/`` subfolders and, optionally,
        ``classes.txt`` (one name per line, line i names class i) or
        ``classes.json`` (``{"0": "other", "1": "tree"}``).

    Returns
    -------
    Dataset
        Pairs sorted by stem. ``class_names`` is None without a classes file.

    Raises
    ------
    DatasetError
        If a subfolder is missing, an image has no mask or a mask has no
        image, two files of one subfolder pair under one stem, there is no
        pair, or the classes file is malformed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} not found: check the path")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{root / sub} is missing; a dataset folder needs images/ and masks/")

    images = _index_rasters(root / "images", "_image")
    masks = _index_rasters(root / "masks", "_mask")

    without_mask = [images[key] for key in sorted(images.keys() - masks.keys())]
    if without_mask:
        raise DatasetError(
            f"no mask in {root / 'masks'} for {_describe_unpaired(without_mask)}; "
            "add <stem>_mask.tif (or the same stem) or move the image out"
        )
    without_image = [masks[key] for key in sorted(masks.keys() - images.keys())]
    if without_image:
        raise DatasetError(
            f"no image in {root / 'images'} for {_describe_unpaired(without_image)}; "
            "add <stem>_image.tif (or the same stem) or move the mask out"
        )
    if not images:
        raise DatasetError(
            f"{root} has no image-mask pairs; put {'/'.join(RASTER_SUFFIXES)} files in images/ and masks/"
        )

    pairs = [Pair(stem=key, image_path=images[key], mask_path=masks[key]) for key in sorted(images)]
    class_names = _read_class_names(root)
    logger.info(
        "loaded %d image-mask pairs from %s (%s)",
        len(pairs),
        root,
        f"{len(class_names)} class names" if class_names is not None else "no class names",
    )
    return Dataset(root=root, pairs=pairs, class_names=class_names)


def _is_georeferenced(crs: CRS | None, transform: Affine | None) -> bool:
    return crs is not None and transform is not None and not transform.almost_equals(Affine.identity())


def _resample_nearest(
    mask: np.ndarray, image_to_mask: Affine, image_shape: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """Sample the mask at the image pixel centres by nearest neighbour, MASK_IGNORE outside the mask.

    ``image_to_mask`` maps image pixel coordinates (column, row) to mask pixel
    coordinates. Returns the resampled mask and the fraction of image pixels
    that the mask covers.
    """
    height, width = image_shape
    cols = np.arange(width, dtype=np.float64) + 0.5
    rows = np.arange(height, dtype=np.float64) + 0.5

    if image_to_mask.b == 0 and image_to_mask.d == 0:
        # Axis-aligned grids: the mask column depends only on the image column, so 1-D index arrays suffice.
        mask_cols = np.floor(image_to_mask.a * cols + image_to_mask.c).astype(np.int64)[np.newaxis, :]
        mask_rows = np.floor(image_to_mask.e * rows + image_to_mask.f).astype(np.int64)[:, np.newaxis]
    else:
        col_grid, row_grid = np.meshgrid(cols, rows)
        mask_cols_float = image_to_mask.a * col_grid + image_to_mask.b * row_grid + image_to_mask.c
        mask_rows_float = image_to_mask.d * col_grid + image_to_mask.e * row_grid + image_to_mask.f
        mask_cols = np.floor(mask_cols_float).astype(np.int64)
        mask_rows = np.floor(mask_rows_float).astype(np.int64)

    mask_rows, mask_cols = np.broadcast_arrays(mask_rows, mask_cols)
    inside = (
        (mask_rows >= 0) & (mask_rows < mask.shape[0]) & (mask_cols >= 0) & (mask_cols < mask.shape[1])
    )
    resampled = np.full(image_shape, MASK_IGNORE, dtype=np.uint8)
    resampled[inside] = mask[mask_rows[inside], mask_cols[inside]]
    return resampled, float(inside.mean())


def _read_mask_band(path: Path) -> tuple[np.ndarray, CRS | None, Affine]:
    try:
        with warnings.catch_warnings():
            # PNG masks carry no georeference by design.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                if source.count != 1:
                    raise DatasetError(f"{path} has {source.count} bands; a mask must have a single band")
                values = source.read(1)
                crs = source.crs
                transform = source.transform
    except RasterioError as err:
        raise DatasetError(f"failed to read mask {path}: {err}") from err

    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise DatasetError(f"{path} has non-integer values ({values.dtype}); a mask must hold class indices")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DatasetError(
            f"{path} has values from {values.min()} to {values.max()}; a mask must hold classes in 0..254 and 255 = ignore"
        )
    return values.astype(np.uint8), crs, transform


def read_mask(
    pair: Pair,
    *,
    image_shape: tuple[int, int],
    image_crs: CRS | None,
    image_transform: Affine | None,
) -> np.ndarray:
    """Read the mask of a pair on the grid of its image.

    The mask is resampled with nearest neighbour when its size differs from
    the image, or when both are georeferenced and their transforms differ.
    When both are georeferenced, their transforms place the mask. Otherwise
    the mask is stretched to cover the image exactly. Image pixels outside the
    mask become 255 (ignore).

    Parameters
    ----------
    pair : Pair
        The image and mask paths.
    image_shape : tuple of int
        Image size (height, width) in pixels.
    image_crs : rasterio.crs.CRS or None
        Image CRS, None when the image has none.
    image_transform : affine.Affine or None
        Image pixel-to-CRS transform, None or the identity when the image is
        not georeferenced.

    Returns
    -------
    ndarray of shape image_shape, uint8
        Class indices, 255 where unlabelled. The mask's own nodata tag is not
        read, so its unlabelled pixels must already be 255.

    Raises
    ------
    DatasetError
        If the mask cannot be read, has more than one band or values outside
        0..255, or if image and mask are both georeferenced in different CRSs.
    """
    if len(image_shape) != 2:
        raise DatasetError(
            f"image_shape={tuple(image_shape)} for {pair.image_path}; expected (height, width) without the band axis"
        )
    image_shape = (int(image_shape[0]), int(image_shape[1]))
    mask, mask_crs, mask_transform = _read_mask_band(pair.mask_path)

    both_georeferenced = _is_georeferenced(image_crs, image_transform) and _is_georeferenced(
        mask_crs, mask_transform
    )
    if both_georeferenced and mask_crs != image_crs:
        raise DatasetError(
            f"mask {pair.mask_path} has CRS {mask_crs} but image {pair.image_path} has CRS {image_crs}; "
            "reproject the mask to the image CRS"
        )

    if both_georeferenced:
        assert image_transform is not None
        if mask.shape == image_shape and mask_transform.almost_equals(image_transform):
            return mask
        image_to_mask = ~mask_transform @ image_transform
    else:
        if mask.shape == image_shape:
            return mask
        image_to_mask = Affine.scale(mask.shape[1] / image_shape[1], mask.shape[0] / image_shape[0])

    logger.debug(
        "resampling mask %s from %s to the image grid %s (nearest neighbour, %s)",
        pair.mask_path,
        mask.shape,
        image_shape,
        "by transforms" if both_georeferenced else "by size",
    )
    resampled, covered = _resample_nearest(mask, image_to_mask, image_shape)
    if covered < 1.0:
        logger.warning("mask %s covers %.1f%% of image %s, so the rest is scored as unlabelled", pair.mask_path,
                       100 * covered, pair.image_path)
    return resampled
