"""Raster input and output: lazy reading with a valid mask, label GeoTIFFs, output names."""

from tree_seg.io.nodata import NodataRule
from tree_seg.io.outputs import OutputManager
from tree_seg.io.reader import RasterSource, open_raster
from tree_seg.io.writer import LabelRasterWriter, write_json_atomic, write_label_raster

__all__ = [
    "LabelRasterWriter",
    "NodataRule",
    "OutputManager",
    "RasterSource",
    "open_raster",
    "write_json_atomic",
    "write_label_raster",
]
