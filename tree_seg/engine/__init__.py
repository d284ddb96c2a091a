"""Dask engine for rasters larger than memory: chunked features, clustering, V2 EM and labels.

Entry points: :func:`segment_raster` (one raster), :func:`segment_many` (a
batch on one cluster), :func:`build_feature_store` (the feature pass alone)
and :func:`open_client` (the Dask client that ``EngineConfig`` describes).
They load on first use, because the pipeline imports torch and Dask.
"""

from typing import Any

__all__ = ["BatchItem", "EngineResult", "build_feature_store", "open_client", "segment_many", "segment_raster"]

_LAZY = {
    "BatchItem": "tree_seg.engine.pipeline",
    "EngineResult": "tree_seg.engine.pipeline",
    "build_feature_store": "tree_seg.engine.pipeline",
    "segment_many": "tree_seg.engine.pipeline",
    "segment_raster": "tree_seg.engine.pipeline",
    "open_client": "tree_seg.engine.cluster",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tree_seg.engine' has no attribute {name!r}")
