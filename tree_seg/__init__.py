"""Unsupervised segmentation of trees and vegetation in aerial orthomosaics.

The main entry points are :func:`segment` (one raster to an
:class:`xarray.Dataset` of labels), :func:`segment_to_files` (labels,
metadata and pictures on disk) and :class:`SegmentationConfig`.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version
from typing import Any as _Any

from tree_seg.config import SegmentationConfig

try:
    __version__ = _version("tree_seg")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["SegmentationConfig", "__version__", "evaluate_dataset", "segment", "segment_to_files"]

_LAZY = {
    "segment": "tree_seg.core.segmentation",
    "segment_to_files": "tree_seg.core.segmentation",
    "evaluate_dataset": "tree_seg.evaluation.harness",
}


def __getattr__(name: str) -> _Any:
    # The pipeline imports torch and transformers; load it on first use so
    # that `import tree_seg` and `tree-seg --help` stay fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tree_seg' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Lists the lazy functions too, so that tab completion offers them.
    return sorted({*globals(), *__all__})
