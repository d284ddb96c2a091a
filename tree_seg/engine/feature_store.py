"""The zarr v3 store of patch features, with a settings hash and per-chunk completion.

Layout of ``<name>_features.zarr`` (a zarr v3 group):

================  ===============================  ========  =========================================
array             dims                             dtype     contents
================  ===============================  ========  =========================================
``features``      (y, x, feature)                  float16   L2-normalised patch features
``valid``         (y, x)                           bool      patches with half their pixels valid
``n_valid``       (chunk_y, chunk_x)               int64     valid patches per chunk
``done``          (chunk_y, chunk_x)               uint8     1 once the chunk's features are written
``windows``       (window_y, window_x, y, x, f)    float32   seam windows' features (temporary)
``window_state``  (window_y, window_x)             uint8     ``WINDOW_*`` state per window (temporary)
``y``, ``x``      (y), (x)                         float64   patch-centre coordinates in the CRS
``spatial_ref``   ()                               int32     CRS WKT and GDAL GeoTransform in attrs
================  ===============================  ========  =========================================

``features`` and ``valid`` are chunked by the feature-pass chunk, so each task
writes whole zarr chunks and no two tasks ever write the same chunk; ``done``
and ``n_valid`` have one zarr chunk per feature chunk. A task writes
``features``, ``valid`` and ``n_valid`` before ``done``, so a chunk marked done
is complete, and a run killed midway redoes only the chunks not marked.

Each window runs through the backbone once, for the chunk that owns it
(:class:`~tree_seg.engine.layout.WindowOwnership`). A seam window, whose
patches reach into other chunks, is computed first and kept in ``windows``
until every chunk of the store is done; then ``windows`` and
``window_state`` are deleted. ``window_state`` has one zarr chunk per feature
chunk. Only the process that runs the pass writes it, after a task's seam
windows are in ``windows``, so a nonzero state means that the window is
stored or has no valid pixels.

The group attributes hold ``settings`` (everything that determines the
features: the input file's identity, read settings, backbone and weights
checksum, window grid, scale, store dtype) and ``settings_sha256``, its hash.
Opening an existing store with other settings raises
:class:`~tree_seg.exceptions.FeatureStoreMismatchError` rather than mixing
features of two configurations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import affine
import numpy as np
import zarr

from tree_seg.config import SegmentationConfig
from tree_seg.engine.layout import Block, WindowOwnership, block_grid, halo_slices, iter_blocks
from tree_seg.engine.kernels import pad_halo
from tree_seg.exceptions import FeatureStoreMismatchError
from tree_seg.io.reader import RasterSource

__all__ = [
    "FEATURE_STORE_FORMAT",
    "WINDOW_EMPTY",
    "WINDOW_INTERIOR",
    "WINDOW_PENDING",
    "WINDOW_STORED",
    "FeatureStore",
    "feature_settings",
    "input_identity",
    "settings_differences",
    "settings_hash",
    "write_georeference",
]

logger = logging.getLogger(__name__)

FEATURE_STORE_FORMAT = 1
"""Version of the store layout; part of the settings, so a layout change invalidates old stores."""

WINDOW_PENDING = 0
"""Window state: nothing recorded yet; a seam window in this state is still to compute."""

WINDOW_STORED = 1
"""Window state: a seam window whose features are in the ``windows`` array."""

WINDOW_EMPTY = 2
"""Window state: a window without valid pixels, which no chunk blends."""

WINDOW_INTERIOR = 3
"""Window state: a window inside its owner's chunk, computed with the chunk's features."""

HEADER_BYTES = 65536
"""Bytes at the start of the input file whose SHA-256 identifies its content with its size and mtime."""


def input_identity(path: Path) -> dict[str, Any]:
    """Identify an input file by path, size, modification time and a hash of its header.

    A file rewritten in place, or replaced by another with the same name,
    changes at least one of these, so a feature store made from it no longer
    matches.
    """
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(HEADER_BYTES))
    return {
        "path": str(path),
        "size_bytes": int(stat.st_size),
        "mtime_ns": int(stat.st_mtime_ns),
        "header_sha256": digest.hexdigest(),
    }


def feature_settings(
    source: RasterSource, config: SegmentationConfig, backbone_info: dict[str, Any], *, scale: float,
    feature_dtype: str,
) -> dict[str, Any]:
    """Collect every setting that determines the content of a feature store.

    Parameters
    ----------
    source : RasterSource
        The opened input file; its band selection, scaling and nodata rule
        are recorded as resolved.
    config : SegmentationConfig
        ``read``, and ``window`` with the scale as resolved, are recorded.
    backbone_info : dict
        :meth:`~tree_seg.models.base.Backbone.info` of the loaded backbone.
        The weights path and the device are left out, so moved weights or
        another device keep a store valid. The weights checksum and the
        inference dtype are recorded.
    scale : float
        The resampling factor that ``config.window.scale`` resolved to; a
        store made with ``"auto"`` matches a later run with that number.
    feature_dtype : {"float16", "float32"}
        dtype of the stored features.

    Returns
    -------
    dict
        JSON-ready nested settings.
    """
    if source.path is None:
        raise FeatureStoreMismatchError("a feature store needs a file input: pass a raster path, not an array")
    backbone_keys = ("name", "family", "patch_size", "feature_dim", "weights_sha256", "mean", "std", "dtype")
    settings = {
        "format": FEATURE_STORE_FORMAT,
        "tree_seg_version": _tree_seg_version(),
        "input": input_identity(source.path),
        "read": {
            **_jsonable(asdict(config.read)),
            "band_indices": list(source.band_indices),
            "band_offset": [float(v) for v in source.band_offset],
            "band_scale": [float(v) for v in source.band_scale],
            "nodata_rule": _jsonable(asdict(source.nodata_rule)),
        },
        "backbone": {key: _jsonable(backbone_info.get(key)) for key in backbone_keys},
        "window": {"window": config.window.window, "overlap": config.window.overlap, "scale": float(scale)},
        "feature_dtype": feature_dtype,
    }
    return json.loads(json.dumps(settings))


def _tree_seg_version() -> str:
    try:
        return version("tree_seg")
    except PackageNotFoundError:
        return "0+unknown"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def settings_hash(settings: dict[str, Any]) -> str:
    """Return the SHA-256 of the settings as canonical JSON (sorted keys)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def settings_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """List the settings that differ, as (dotted name, stored value, current value), sorted by name.

    A setting missing on one side appears with ``None`` there.
    """
    left, right = _flatten(stored), _flatten(current)
    names = sorted(set(left) | set(right))
    return [(name, left.get(name), right.get(name)) for name in names if left.get(name) != right.get(name)]


def write_georeference(group: zarr.Group, *, crs_wkt: str | None, transform: affine.Affine,
                       shape: tuple[int, int]) -> None:
    """Write ``y``/``x`` cell-centre coordinates and a ``spatial_ref`` variable into a group.

    ``spatial_ref`` carries ``crs_wkt`` and the GDAL ``GeoTransform``, the
    CF grid-mapping convention that rioxarray reads. The 1-D coordinates are
    written only for a north-up transform (no rotation terms), where they are
    separable.
    """
    spatial_ref = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0, overwrite=True)
    gdal = " ".join(repr(float(v)) for v in transform.to_gdal())
    spatial_ref.attrs.update({"crs_wkt": crs_wkt or "", "spatial_ref": crs_wkt or "", "GeoTransform": gdal})
    if transform.b != 0 or transform.d != 0:
        logger.info("The transform %s is rotated, so the store gets no 1-D y and x coordinates", transform)
        return
    ys = transform.f + (np.arange(shape[0]) + 0.5) * transform.e
    xs = transform.c + (np.arange(shape[1]) + 0.5) * transform.a
    group.create_array("y", data=ys.astype(np.float64), dimension_names=["y"], overwrite=True)
    group.create_array("x", data=xs.astype(np.float64), dimension_names=["x"], overwrite=True)


class ZarrArrays:
    """Lazily opened arrays of a zarr group at ``self.path``, cached in ``self._arrays``.

    The cache is dropped when the object is pickled, so a store sent to a
    Dask worker opens its arrays there.
    """

    path: Path
    _arrays: dict[str, zarr.Array]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _array(self, name: str) -> zarr.Array:
        array = self._arrays.get(name)
        if array is None:
            array = zarr.open_array(self.path / name, mode="r+")
            self._arrays[name] = array
        return array


@dataclass
class FeatureStore(ZarrArrays):
    """Handle on a feature store; pickles as its path and layout, so tasks can carry it.

    Use :meth:`open_or_create` on the client and pass the handle to tasks;
    each process opens the zarr arrays on first use.

    Attributes
    ----------
    path : Path
        The zarr group.
    patch_shape : tuple of int
        (patch_y, patch_x) of the whole patch grid.
    feature_dim : int
        Values per patch feature.
    chunk_side : int
        Feature-chunk side in patches.
    """

    path: Path
    patch_shape: tuple[int, int]
    feature_dim: int
    chunk_side: int
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        settings: dict[str, Any],
        *,
        patch_shape: tuple[int, int],
        feature_dim: int,
        chunk_side: int,
        crs_wkt: str | None,
        transform: affine.Affine,
    ) -> FeatureStore:
        """Open the store at ``path`` for these settings, creating it when missing.

        An existing store keeps its own chunk side, so a rerun with another
        ``chunk_size`` still reuses it.

        Raises
        ------
        FeatureStoreMismatchError
            If ``path`` contains a store written with other settings, or
            something that is not a feature store.
        """
        path = Path(path)
        digest = settings_hash(settings)
        if path.exists():
            group = _open_existing(path)
            stored: dict[str, Any] = dict(group.attrs)
            if stored.get("settings_sha256") != digest:
                raise FeatureStoreMismatchError(_mismatch_message(path, stored.get("settings", {}), settings))
            stored_side = int(stored["chunk_side"])
            if stored_side != chunk_side:
                logger.warning("Feature store %s keeps its chunks of %d patches, so the chunk size of this run "
                               "(%d patches) does not apply; labels do not depend on it. Pass another "
                               "--feature-store to change it.", path, stored_side, chunk_side)
            store = cls(path, tuple(stored["patch_shape"]), int(stored["feature_dim"]), stored_side)
        else:
            attrs: dict[str, Any] = {
                "settings": settings,
                "settings_sha256": digest,
                "patch_shape": list(patch_shape),
                "feature_dim": int(feature_dim),
                "chunk_side": int(chunk_side),
                "crs_wkt": crs_wkt,
                "transform": list(transform)[:6],
            }
            group = zarr.open_group(path, mode="w-", attributes=attrs, zarr_format=3)
            store = cls(path, cast("tuple[int, int]", tuple(patch_shape)), int(feature_dim), int(chunk_side))
            logger.info("Created feature store %s: %d x %d patches (width x height) of %d values in chunks of %d "
                        "patches", path, patch_shape[1], patch_shape[0], feature_dim, chunk_side)
        store._ensure_arrays(group, settings["feature_dtype"], crs_wkt, transform)
        return store

    def _ensure_arrays(self, group: zarr.Group, dtype: str, crs_wkt: str | None, transform: affine.Affine) -> None:
        # A run killed while creating the store leaves some arrays missing;
        # the settings already match, so the missing ones are created.
        side, dim = self.chunk_side, self.feature_dim
        grid = self.chunk_grid
        specs = {
            "features": ((*self.patch_shape, dim), (side, side, dim), dtype, 0, ["y", "x", "feature"]),
            "valid": (self.patch_shape, (side, side), "bool", False, ["y", "x"]),
            "n_valid": (grid, (1, 1), "int64", 0, ["chunk_y", "chunk_x"]),
            "done": (grid, (1, 1), "uint8", 0, ["chunk_y", "chunk_x"]),
        }
        existing = set(group.array_keys())
        for name, (shape, chunks, array_dtype, fill, dims) in specs.items():
            if name not in existing:
                array = group.create_array(name, shape=shape, chunks=chunks, dtype=array_dtype, fill_value=fill,
                                           dimension_names=dims)
                if name in ("features", "valid"):
                    array.attrs["grid_mapping"] = "spatial_ref"
        if "spatial_ref" not in existing:
            write_georeference(group, crs_wkt=crs_wkt, transform=transform, shape=self.patch_shape)

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Number of feature chunks (chunk_y, chunk_x)."""
        return block_grid(self.patch_shape, self.chunk_side)

    def blocks(self) -> list[Block]:
        """Return every feature chunk, row by row, in patches."""
        return list(iter_blocks(self.patch_shape, self.chunk_side))

    def done_mask(self) -> np.ndarray:
        """Return (chunk_y, chunk_x) bool: True where the chunk's features are complete."""
        return np.asarray(self._array("done")[...]).astype(bool)

    def pending_blocks(self) -> list[Block]:
        """Return the chunks whose features are not written yet."""
        done = self.done_mask()
        return [block for block in self.blocks() if not done[block.index]]

    def n_valid_total(self) -> int:
        """Return the number of valid patches over every finished chunk."""
        counts = np.asarray(self._array("n_valid")[...])
        return int(counts[self.done_mask()].sum())

    def write_block(self, block: Block, features: np.ndarray, valid: np.ndarray) -> None:
        """Write one chunk's features and valid mask, then mark the chunk done."""
        self._array("features")[block.rows, block.cols, :] = features
        self._array("valid")[block.rows, block.cols] = valid
        self._array("n_valid")[block.index] = int(valid.sum())
        self._array("done")[block.index] = 1

    def create_window_arrays(self, ownership: WindowOwnership) -> None:
        """Create the ``windows`` and ``window_state`` arrays of the seam windows, unless they exist."""
        group = zarr.open_group(self.path, mode="r+")
        existing = set(group.array_keys())
        counts = ownership.window_counts
        window_rows, window_cols = ownership.grid.window_patches
        if "windows" not in existing:
            group.create_array("windows", shape=(*counts, window_rows, window_cols, self.feature_dim),
                               chunks=(1, 1, window_rows, window_cols, self.feature_dim), dtype="float32",
                               fill_value=0.0, dimension_names=["window_y", "window_x", "y", "x", "feature"])
        if "window_state" not in existing:
            group.create_array("window_state", shape=counts, chunks=(ownership.per_chunk, ownership.per_chunk),
                               dtype="uint8", fill_value=WINDOW_PENDING, dimension_names=["window_y", "window_x"])

    def write_seams(self, ownership: WindowOwnership,
                    stored: Iterable[tuple[tuple[int, int], np.ndarray]]) -> list[tuple[int, int]]:
        """Write computed seam windows as they come; tasks on several workers may write at once.

        Parameters
        ----------
        ownership : WindowOwnership
            Window assignment of the store's chunks.
        stored : iterable of ((int, int), ndarray)
            Origin in pixels and features, shape (window_patch_y,
            window_patch_x, feature), of each computed seam window.

        Returns
        -------
        list of (int, int)
            Origins of the windows written, in the order they came.
        """
        windows = self._array("windows")
        written = []
        for origin, features in stored:
            windows[ownership.index(origin)] = np.asarray(features, dtype=np.float32)
            written.append(origin)
        return written

    def mark_seams(self, ownership: WindowOwnership, block: Block, written: Iterable[tuple[int, int]],
                   empty: Iterable[tuple[int, int]]) -> None:
        """Record seam windows of one owner chunk as stored or empty, and its other windows as interior.

        The states of one chunk share a zarr chunk, so only one process, the
        one that runs the pass, calls this.

        Parameters
        ----------
        ownership : WindowOwnership
            Window assignment of the store's chunks.
        block : Block
            The owner chunk.
        written, empty : iterable of (int, int)
            Origins of seam windows that :meth:`write_seams` wrote, and of
            seam windows without valid pixels.
        """
        m = ownership.per_chunk
        counts = ownership.window_counts
        rows = slice(block.index[0] * m, min((block.index[0] + 1) * m, counts[0]))
        cols = slice(block.index[1] * m, min((block.index[1] + 1) * m, counts[1]))
        array = self._array("window_state")
        states = np.asarray(array[rows, cols])
        for origin in ownership.owned(block):
            if not ownership.is_seam(origin):
                row, col = ownership.index(origin)
                states[row - rows.start, col - cols.start] = WINDOW_INTERIOR
        for origin, state in [*((o, WINDOW_STORED) for o in written), *((o, WINDOW_EMPTY) for o in empty)]:
            row, col = ownership.index(origin)
            states[row - rows.start, col - cols.start] = state
        array[rows, cols] = states

    def window_states(self) -> np.ndarray:
        """Return the (window_y, window_x) uint8 state of every window (``WINDOW_*``)."""
        return np.asarray(self._array("window_state")[...])

    def read_seam(self, index: tuple[int, int]) -> np.ndarray:
        """Return the stored features (window_patch_y, window_patch_x, feature) of one seam window, float32."""
        return np.asarray(self._array("windows")[index])

    def drop_window_arrays(self) -> None:
        """Delete the seam windows and their states, once every chunk is done."""
        for name in ("windows", "window_state"):
            self._arrays.pop(name, None)
            shutil.rmtree(self.path / name, ignore_errors=True)

    def read_valid(self, rows: slice, cols: slice) -> np.ndarray:
        """Return the valid mask (rows, cols) of a region in patches."""
        return np.asarray(self._array("valid")[rows, cols], dtype=bool)

    def read_features(self, rows: slice, cols: slice) -> np.ndarray:
        """Return the features (rows, cols, feature) of a region in patches, as float32."""
        return np.asarray(self._array("features")[rows, cols, :], dtype=np.float32)

    def read_with_halo(self, rows: slice, cols: slice, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Read features and valid mask of a region grown by ``depth`` patches on every side.

        Halo patches past the grid edge come back as zero features and
        invalid patches, which is how :func:`~tree_seg.clustering.head_refine.em_chunk`
        expects the raster edge.

        Returns
        -------
        features : ndarray of shape (rows + 2 * depth, cols + 2 * depth, feature), float32
        valid : ndarray of shape (rows + 2 * depth, cols + 2 * depth), bool
        """
        halo_rows = halo_slices(rows, depth, self.patch_shape[0])
        halo_cols = halo_slices(cols, depth, self.patch_shape[1])
        features = self.read_features(halo_rows.read, halo_cols.read)
        valid = self.read_valid(halo_rows.read, halo_cols.read)
        return (pad_halo(features, halo_rows, halo_cols, fill=0.0),
                pad_halo(valid, halo_rows, halo_cols, fill=False))


def _open_existing(path: Path) -> zarr.Group:
    try:
        group = zarr.open_group(path, mode="r+")
    except (FileNotFoundError, ValueError, zarr.errors.GroupNotFoundError) as error:
        raise FeatureStoreMismatchError(
            f"{path} exists but is not a zarr feature store ({error}): delete it or pass another --feature-store path"
        ) from error
    if "settings_sha256" not in group.attrs:
        raise FeatureStoreMismatchError(
            f"{path} is a zarr group without feature-store settings: delete it or pass another --feature-store path"
        )
    return group


def _mismatch_message(path: Path, stored: dict[str, Any], current: dict[str, Any]) -> str:
    differences = settings_differences(stored, current)
    if [name for name, _, _ in differences] == ["input.mtime_ns"]:
        # Size and header match, but a rewrite in place can keep both, so
        # the store is not trusted.
        return (f"the input {current['input']['path']} was modified (or touched) after feature store {path} was "
                f"written: delete {path}{os.sep} or pass another --feature-store path to compute the features again")
    listed = "; ".join(f"{name}: stored {old!r}, now {new!r}" for name, old, new in differences[:4])
    more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
    return (f"feature store {path} was written with other settings ({listed}{more}): "
            f"delete {path}{os.sep} or pass another --feature-store path")
