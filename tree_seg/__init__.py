"""Unsupervised segmentation of trees and vegetation in aerial orthomosaics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tree_seg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
