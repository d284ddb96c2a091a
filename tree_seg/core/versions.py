"""Versions of tree_seg and the packages that determine its results."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_versions"]

_PACKAGES = (
    "tree_seg", "numpy", "scipy", "torch", "transformers", "scikit-learn", "scikit-image",
    "xarray", "rioxarray", "rasterio", "dask", "distributed", "zarr",
)


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package that shapes a result, and Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions
