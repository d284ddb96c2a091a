"""Exceptions and warnings raised by tree_seg.

Each error subclasses a builtin, so ``except ValueError`` still catches bad
input and ``except FileNotFoundError`` still catches a missing file.
"""


class TreeSegError(Exception):
    """Base class of every tree_seg error."""


class InvalidInputError(TreeSegError, ValueError):
    """A raster, band selection, nodata value or option value is invalid."""


class ConfigurationError(TreeSegError, ValueError):
    """A configuration value is out of range or conflicts with another one."""


class WeightsNotFoundError(TreeSegError, FileNotFoundError):
    """No weights were found for a backbone that needs them."""


class WeightsMismatchError(TreeSegError, ValueError):
    """A checkpoint has missing, unexpected or mis-shaped tensors."""


class DatasetError(TreeSegError, ValueError):
    """An evaluation dataset folder is malformed or an image-mask pair does not match."""


class FeatureStoreMismatchError(TreeSegError, ValueError):
    """A feature store on disk was written with different settings."""


class ClusterStartError(TreeSegError, RuntimeError):
    """Error raised when the local Dask cluster cannot start, or a given scheduler cannot be reached."""


class ClusterLostError(TreeSegError, RuntimeError):
    """Error raised when the Dask scheduler goes away in the middle of a run."""


class TreeSegWarning(UserWarning):
    """Base class of every tree_seg warning."""


class NoGeoreferenceWarning(TreeSegWarning):
    """The input has no CRS or transform, so outputs use pixel coordinates."""


class ElbowRangeWarning(TreeSegWarning):
    """The elbow rule reached the top of the K range, which may be too small."""


class BackboneFallbackWarning(TreeSegWarning):
    """The automatic backbone choice fell back to the weight-free backbone."""


class RefinementFallbackWarning(TreeSegWarning):
    """Head refinement degenerated, so the K-means labels were kept."""
