"""The zarr v3 store of one run's pixel labels, and of its V2 guide cells.

Layout of ``<stem>_<method>_labels.zarr`` (a zarr v3 group, rewritten by every run):

===============  =====================  ========  ==========================================
array            dims                   dtype     contents
===============  =====================  ========  ==========================================
``labels``       (y, x)                 uint8     labels 0..K-1, 255 on nodata
``guide_cells``  (channel, cell_y,      float32   guided blend only: the resampled image
                 cell_x)                          averaged over ``guide_stride`` pixels
``guide_valid``  (cell_y, cell_x)       bool      guided blend only: cells with a valid pixel
``y``, ``x``     (y), (x)               float64   pixel-centre coordinates in the CRS
===============  =====================  ========  ==========================================

``labels`` is chunked by the label-pass chunk (``chunk_size`` pixels) and the
guide arrays by the feature chunk, so every task writes whole zarr chunks of
its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import affine
import numpy as np
import zarr

from tree_seg.core.labels import NODATA_LABEL
from tree_seg.engine.feature_store import ZarrArrays, write_georeference
from tree_seg.engine.kernels import pad_halo
from tree_seg.engine.layout import Block, halo_slices

__all__ = ["LabelStore"]

logger = logging.getLogger(__name__)


@dataclass
class LabelStore(ZarrArrays):
    """Handle on a label store; pickles as its path and shapes, so tasks can carry it.

    Attributes
    ----------
    path : Path
        The zarr group.
    shape : tuple of int
        (y, x) of the input raster in pixels.
    chunk_size : int
        Label chunk side in pixels.
    """

    path: Path
    shape: tuple[int, int]
    chunk_size: int
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, path: str | Path, *, shape: tuple[int, int], chunk_size: int, crs_wkt: str | None,
               transform: affine.Affine, attributes: dict[str, Any] | None = None) -> LabelStore:
        """Create the store, replacing any earlier one at ``path``."""
        path = Path(path)
        group = zarr.open_group(path, mode="w", zarr_format=3,
                                attributes={"crs_wkt": crs_wkt, "transform": list(transform)[:6], **(attributes or {})})
        labels = group.create_array("labels", shape=shape, chunks=(chunk_size, chunk_size), dtype="uint8",
                                    fill_value=NODATA_LABEL, dimension_names=["y", "x"])
        labels.attrs.update({"grid_mapping": "spatial_ref", "_FillValue": NODATA_LABEL, "long_name": "cluster label"})
        write_georeference(group, crs_wkt=crs_wkt, transform=transform, shape=shape)
        logger.info("Created label store %s: %d x %d pixels (width x height) in chunks of %d", path, shape[1], shape[0],
                    chunk_size)
        return cls(path, cast("tuple[int, int]", tuple(shape)), int(chunk_size))

    def write_labels(self, block: Block, labels: np.ndarray) -> None:
        """Write one chunk of pixel labels."""
        self._array("labels")[block.rows, block.cols] = labels

    def read_labels(self, rows: slice, cols: slice) -> np.ndarray:
        """Return labels (rows, cols) uint8 of a pixel region."""
        return np.asarray(self._array("labels")[rows, cols])

    def create_guide(self, *, channels: int, cell_shape: tuple[int, int], chunk_cells: int) -> None:
        """Create the guide arrays of the guided V2 blend (cells of ``guide_stride`` pixels)."""
        group = zarr.open_group(self.path, mode="r+")
        group.create_array("guide_cells", shape=(channels, *cell_shape), chunks=(channels, chunk_cells, chunk_cells),
                           dtype="float32", fill_value=0.0, dimension_names=["channel", "cell_y", "cell_x"],
                           overwrite=True)
        group.create_array("guide_valid", shape=cell_shape, chunks=(chunk_cells, chunk_cells), dtype="bool",
                           fill_value=False, dimension_names=["cell_y", "cell_x"], overwrite=True)

    def write_guide(self, rows: slice, cols: slice, cells: np.ndarray, valid: np.ndarray) -> None:
        """Write the guide cells of one region, in cells."""
        self._array("guide_cells")[:, rows, cols] = cells
        self._array("guide_valid")[rows, cols] = valid

    def read_guide_with_halo(self, rows: slice, cols: slice, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Read guide cells of a region grown by ``depth`` cells; cells past the edge are invalid zeros.

        Returns
        -------
        cells : ndarray of shape (channel, rows + 2 * depth, cols + 2 * depth), float32
        valid : ndarray of shape (rows + 2 * depth, cols + 2 * depth), bool
        """
        cells_array = self._array("guide_cells")
        halo_rows = halo_slices(rows, depth, cells_array.shape[1])
        halo_cols = halo_slices(cols, depth, cells_array.shape[2])
        cells = np.asarray(cells_array[:, halo_rows.read, halo_cols.read], dtype=np.float32)
        valid = np.asarray(self._array("guide_valid")[halo_rows.read, halo_cols.read], dtype=bool)
        return (pad_halo(cells, halo_rows, halo_cols, fill=0.0, axes=(1, 2)),
                pad_halo(valid, halo_rows, halo_cols, fill=False))
