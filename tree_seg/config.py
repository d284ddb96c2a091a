"""Validated configuration dataclasses for every stage of the pipeline.

Each stage reads one frozen dataclass. Values are checked in
``__post_init__``, so an invalid setting fails when the configuration is built,
before any raster is read. :class:`SegmentationConfig` groups the stages and
loads the named presets in ``profiles.toml``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from tree_seg.exceptions import ConfigurationError
from tree_seg.types import Blend, FeatureDtype, Method, Refinement, Upsampling

__all__ = [
    "BackboneConfig",
    "ClusterConfig",
    "EngineConfig",
    "HeadRefineConfig",
    "LabelConfig",
    "ReadConfig",
    "SegmentationConfig",
    "WindowConfig",
    "load_profile",
    "profile_names",
]


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigurationError(f"invalid {name}={value!r}: expected one of {allowed}")


def _check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    hint: str = "",
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"invalid {name}={value!r}: expected a finite number{hint}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        bounds = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigurationError(f"invalid {name}={value!r}: expected a value in {bounds}{hint}")


def _check_int(name: str, value: int, *, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"invalid {name}={value!r}: expected an integer")
    _check_range(name, value, low=low, high=high)


@dataclass(frozen=True, kw_only=True)
class ReadConfig:
    """Settings for reading the input raster and finding its valid pixels.

    Parameters
    ----------
    bands : tuple of int or None, default=None
        1-based band indices, as in GDAL. ``None`` takes bands 1-3 of an input
        with three or more colour bands (an alpha band is never a feature) and
        repeats a single band three times.
    nodata : float, "auto" or "none", default="auto"
        ``"auto"`` takes the nodata tag, then an alpha band, then NaN, then a
        collar detected on the raster border (a border where most pixels are
        exactly 0 or exactly the dtype's maximum in every band). A number is a
        value in the input's units: a pixel is nodata when every selected band
        is within ``nodata_tolerance`` of it. ``"none"`` treats every pixel as
        valid.
    nodata_tolerance : float, default=0
        Largest difference from ``nodata``, in the input's units (digital
        numbers for integer data), that still counts as nodata. Within 12
        pixels of a collar found by ``"auto"``, at least 10/255 of the band's
        range counts, because JPEG compression leaves near-collar values that
        an exact match misses.
    collar_buffer : int, default=3
        Pixels by which the nodata mask grows after small specks are removed,
        so the fringe that JPEG compression leaves along a collar is masked.
        Only used when the mask comes from a value (explicit or detected), not
        from a tag-free alpha band or NaN.
    """

    bands: tuple[int, ...] | None = None
    nodata: float | str = "auto"
    nodata_tolerance: float = 0.0
    collar_buffer: int = 3

    def __post_init__(self) -> None:
        if self.bands is not None:
            if len(self.bands) == 0:
                raise ConfigurationError("invalid bands=(): select at least one band, e.g. bands=(1, 2, 3)")
            for band in self.bands:
                _check_int("band index", band, low=1)
        if isinstance(self.nodata, str):
            _check_choice("nodata", self.nodata, ("auto", "none"))
        else:
            _check_range("nodata", self.nodata)
        _check_range("nodata_tolerance", self.nodata_tolerance, low=0.0)
        _check_int("collar_buffer", self.collar_buffer, low=0, high=64)


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """Settings of the feature extractor: its name, weights, device and precision.

    Parameters
    ----------
    name : str, default="auto"
        A name from :data:`tree_seg.types.BACKBONE_NAMES` or an alias from
        :mod:`tree_seg.models.registry`. ``"auto"`` uses DINOv3 ViT-S/16 when
        its weights are found locally and the weight-free ``"texture"``
        backbone otherwise, with a :class:`~tree_seg.exceptions.BackboneFallbackWarning`.
    weights : Path or None, default=None
        Folder holding a Hugging Face checkpoint (``config.json`` and
        ``model.safetensors``). ``None`` looks in the Hugging Face cache.
    device : {"auto", "cpu", "cuda"}, default="auto"
        ``"auto"`` picks CUDA when available.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Inference precision. ``"auto"`` is bfloat16 on CUDA and float32 on the
        CPU, where bfloat16 is several times slower without AVX512-BF16.
    batch_size : int, default=8
        Windows per forward pass.
    """

    name: str = "auto"
    weights: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _check_int("batch_size", self.batch_size, low=1, high=4096)
        if self.weights is not None and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))


# Window overlap in resampled pixels, a quarter of the default 448 px window.
_DEFAULT_OVERLAP = 112


@dataclass(frozen=True, kw_only=True)
class WindowConfig:
    """The window grid on which the backbone runs.

    Windows lie on a grid anchored at the raster origin, in pixels of the
    resampled image. Window and overlap must be multiples of the backbone's
    patch size, which :func:`tree_seg.features.grid.WindowGrid` checks once the
    backbone is known.

    Parameters
    ----------
    window : int, default=448
        Window side in pixels (448 is a multiple of 14 and of 16).
    overlap : int, default=112
        Overlap between neighbouring windows in pixels; the stride is
        ``window - overlap``.
    scale : float or "auto", default="auto"
        Resampling factor applied before feature extraction (0.5 halves each
        side). ``"auto"`` resamples a georeferenced raster to about
        ``target_resolution`` ground metres per pixel, never upsampling, and
        keeps rasters without a known pixel size (pixel coordinates) at 1.0.
        Labels are always written on the input's pixel grid.
    target_resolution : float, default=0.2
        Ground pixel size in metres that ``scale="auto"`` aims for, measured
        on the CRS's ellipsoid at the raster's centre, so Mercator and
        degree pixels count by the ground they cover. On the shared OAM-TCD
        tile (0.066 m ground pixels) DINOv2 features from 0.11 to 0.27 m
        scored far better than at 0.066 m (see docs/results).
    """

    window: int = 448
    overlap: int = _DEFAULT_OVERLAP
    scale: float | str = "auto"
    target_resolution: float = 0.2

    def __post_init__(self) -> None:
        _check_int("window", self.window, low=14, high=8192)
        _check_int("overlap", self.overlap, low=0)
        if self.overlap >= self.window:
            raise ConfigurationError(
                f"invalid overlap={self.overlap}{' (the default)' if self.overlap == _DEFAULT_OVERLAP else ''} for "
                f"window={self.window}: the overlap must be smaller than the window; set a smaller --overlap "
                "(a quarter of the window is typical)"
            )
        if isinstance(self.scale, str):
            if self.scale != "auto":
                raise ConfigurationError(f"invalid scale={self.scale!r}: expected a number in [0.05, 4] or 'auto'")
        else:
            _check_range("scale", self.scale, low=0.05, high=4.0, hint=" (1.0 keeps the input resolution) or 'auto'")
        _check_range("target_resolution", self.target_resolution, low=0.0, low_inclusive=False)


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """K-means and the elbow choice of K.

    Parameters
    ----------
    k : int or None, default=None
        Fixed number of clusters; ``None`` chooses K with the elbow rule.
    k_min, k_max : int, default=2, 12
        Inclusive K range searched by the elbow rule.
    elbow_threshold : float, default=0.05
        Relative inertia drop, as a fraction, below which adding a cluster is
        not worth it. The elbow is the K before the first K whose drop
        ``(W[K-1] - W[K]) / W[K-1]`` falls below it.
    seed : int, default=0
        Seed of K-means, the elbow fits and patch sampling.
    n_init : int, default=4
        K-means restarts per K; the lowest inertia wins.
    max_samples : int, default=50000
        Most patch vectors used to fit K-means and the elbow curve, drawn
        deterministically from global patch coordinates and ``seed``.
    """

    k: int | None = None
    k_min: int = 2
    k_max: int = 12
    elbow_threshold: float = 0.05
    seed: int = 0
    n_init: int = 4
    max_samples: int = 50_000

    def __post_init__(self) -> None:
        if self.k is not None:
            _check_int("k", self.k, low=2, high=254)
        _check_int("k_min", self.k_min, low=2, high=254)
        _check_int("k_max", self.k_max, low=2, high=254)
        if self.k_min > self.k_max:
            raise ConfigurationError(
                f"invalid K range {self.k_min}:{self.k_max}: the first value must not exceed the second"
            )
        _check_range("elbow_threshold", self.elbow_threshold, low=0.0, high=1.0, low_inclusive=False,
                     high_inclusive=False, hint=" (a fraction; the CLI takes percent)")
        _check_int("seed", self.seed, low=0, high=2**32 - 1)
        _check_int("n_init", self.n_init, low=1, high=100)
        _check_int("max_samples", self.max_samples, low=100)


@dataclass(frozen=True, kw_only=True)
class HeadRefineConfig:
    """V2 head refinement: soft EM seeded from the K-means centroids.

    The defaults are one E-step with equal priors and tau 0.05, then the
    grey guided blend with alpha 1, radius 8 cells and eps 1e-4. They were chosen in a
    sweep on two labelled aerial tiles with DINOv2-S/14 and colour-texture
    features, scored by mIoU and boundary F-score at 2 px, and
    docs/results/README.md has the tables. Runs with M-steps (``iterations`` 2 to 5) scored below the
    same run with ``iterations=1``, and learned priors below equal priors.

    Parameters
    ----------
    tau : float or "auto", default=0.05
        Softmax temperature on squared distances between L2-normalised
        vectors (which lie in [0, 4]). Smaller values give harder assignments
        (tau -> 0 is K-means); larger values soften them and let clusters
        merge. ``"auto"`` sets tau so that a patch with the median margin
        (second-nearest minus nearest squared distance) gets responsibility
        0.95 for its nearest cluster: ``tau = median margin / ln(19)``. In
        the sweep, 0.05 beat ``"auto"`` on the mean of both tiles with both
        backbones (``"auto"`` gave 0.006 to 0.06).
    alpha : float, default=1.0
        Weight of the spatial blend, in [0, 1]; 0 disables it and 1 keeps
        only the blended responsibilities.
    iterations : int, default=1
        Most E-steps, each with the blend; an M-step (centroid and prior
        update) runs between consecutive E-steps, so 1 keeps the K-means
        centroids and only blends. Each iteration is one pass over the
        features.
    tol : float, default=1e-4
        Early stop when no centroid moves by more than this (Euclidean) in an
        M-step; the next E-step is then the last.
    blend : {"neighbour", "guided"}, default="guided"
        ``"neighbour"`` mixes each patch with the mean of its 3 x 3 patch
        neighbours; ``"guided"`` filters the responsibility maps with a guided
        filter that uses the image as the guide.
    priors : bool, default=False
        Use cluster mixing proportions in the E-step, starting from the
        K-means cluster sizes and re-estimated in each M-step; False gives
        equal priors (the plain textbook form).
    guided_radius : int, default=8
        Guided filter radius in guide cells (``guide_stride`` pixels each);
        the window is ``2 * guided_radius + 1`` cells wide.
    guided_eps : float, default=1e-4
        Guided filter regularisation, in squared [0, 1] intensity units: image
        edges whose local variance is well above it are followed, flatter
        areas are smoothed.
    guide_stride : int or None, default=None
        Pixels of the resampled image per guide cell; must divide the patch
        size. ``None`` takes the largest divisor of the patch size up to 4:
        4 for 16 px patches, 2 for 14 px patches.
    guided_colour : bool, default=False
        Guide with every image band (the colour guided filter, a C x C solve
        per cell, about five times slower) instead of their mean (the
        grey-level filter). Neither was better on both tiles of the sweep.
    """

    tau: float | str = 0.05
    alpha: float = 1.0
    iterations: int = 1
    tol: float = 1e-4
    blend: Blend = "guided"
    priors: bool = False
    guided_radius: int = 8
    guided_eps: float = 1e-4
    guide_stride: int | None = None
    guided_colour: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.tau, str):
            if self.tau != "auto":
                raise ConfigurationError(f"invalid tau={self.tau!r}: expected a number > 0 or 'auto'")
        else:
            _check_range("tau", self.tau, low=0.0, low_inclusive=False, hint=" or 'auto'")
        _check_range("alpha", self.alpha, low=0.0, high=1.0)
        _check_int("iterations", self.iterations, low=1, high=1000)
        _check_range("tol", self.tol, low=0.0)
        _check_choice("blend", self.blend, get_args(Blend))
        if not isinstance(self.priors, bool):
            raise ConfigurationError(f"invalid priors={self.priors!r}: expected True or False")
        _check_int("guided_radius", self.guided_radius, low=1, high=256)
        _check_range("guided_eps", self.guided_eps, low=0.0, low_inclusive=False)
        if self.guide_stride is not None:
            _check_int("guide_stride", self.guide_stride, low=1, high=64)
        if not isinstance(self.guided_colour, bool):
            raise ConfigurationError(f"invalid guided_colour={self.guided_colour!r}: expected True or False")


@dataclass(frozen=True, kw_only=True)
class LabelConfig:
    """Settings that turn patch scores into pixel labels.

    Parameters
    ----------
    upsampling : {"nearest", "bilinear"}, default="nearest"
        ``"nearest"`` repeats hard patch labels; ``"bilinear"`` interpolates
        per-cluster scores, then takes the argmax.
    refine : {"none", "slic"}, default="none"
        ``"slic"`` gives each SLIC superpixel the majority label of its pixels.
    slic_size : int, default=16
        Approximate superpixel side in input pixels.
    slic_compactness : float, default=10
        SLIC compactness; larger values give squarer superpixels.
    """

    upsampling: Upsampling = "nearest"
    refine: Refinement = "none"
    slic_size: int = 16
    slic_compactness: float = 10.0

    def __post_init__(self) -> None:
        _check_choice("upsampling", self.upsampling, get_args(Upsampling))
        _check_choice("refine", self.refine, get_args(Refinement))
        _check_int("slic_size", self.slic_size, low=4, high=1024)
        _check_range("slic_compactness", self.slic_compactness, low=0.0, low_inclusive=False)


_HOST_AND_PORT = re.compile(r"[^\s/]+:\d+/?")
_OTHER_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def _is_scheduler_address(address: str) -> bool:
    # Network addresses (bare, tcp, tls, ws, wss) need a port, which
    # distributed requires; other schemes, such as inproc://, are taken as
    # they are.
    scheme, separator, rest = address.partition("://")
    if not separator:
        return bool(_HOST_AND_PORT.fullmatch(address))
    if scheme in ("tcp", "tls", "ws", "wss"):
        return bool(_HOST_AND_PORT.fullmatch(rest))
    return bool(_OTHER_SCHEME.fullmatch(address))


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Chunked execution on Dask.

    Parameters
    ----------
    chunk_size : int, default=2048
        Chunk side in input pixels.
    workers : int or None, default=None
        Worker processes of the local cluster; ``None`` sizes it to the machine.
    scheduler : str or None, default=None
        ``None`` starts a ``LocalCluster``; ``"synchronous"`` runs in-process;
        any other value is the address of a running scheduler.
    feature_store : Path or None, default=None
        Zarr store for patch features; ``None`` puts it in the output folder.
    feature_dtype : {"float16", "float32"}, default="float16"
        dtype of the stored features. float16 halves the store's disk and
        reads, but its rounding changes the K-means fit a little, so labels,
        and on some rasters the elbow's K, differ from the in-memory
        pipeline. float32 reproduces that pipeline exactly.
    """

    chunk_size: int = 2048
    workers: int | None = None
    scheduler: str | None = None
    feature_store: Path | None = None
    feature_dtype: FeatureDtype = "float16"

    def __post_init__(self) -> None:
        _check_int("chunk_size", self.chunk_size, low=64, high=65536)
        _check_choice("feature_dtype", self.feature_dtype, get_args(FeatureDtype))
        if self.scheduler not in (None, "synchronous") and not _is_scheduler_address(str(self.scheduler)):
            raise ConfigurationError(f"invalid scheduler={self.scheduler!r}: expected 'synchronous' or a scheduler "
                                     "address with a port, such as tcp://HOST:8786")
        if self.workers is not None:
            _check_int("workers", self.workers, low=1, high=4096)


@dataclass(frozen=True, kw_only=True)
class SegmentationConfig:
    """Every setting of one segmentation run.

    Parameters
    ----------
    method : {"kmeans", "head-refine"}, default="head-refine"
        ``"kmeans"`` is V1.5; ``"head-refine"`` (V2) refines the K-means
        clusters with the image-guided soft assignment, which scored higher
        mIoU and boundary F on the labelled tiles (docs/results).
    read, backbone, window, cluster, head_refine, labels, engine
        Stage settings; see each class.
    metrics : bool, default=False
        Record per-window timings and peak memory in addition to the
        per-stage times that are always recorded.
    """

    method: Method = "head-refine"
    read: ReadConfig = field(default_factory=ReadConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    head_refine: HeadRefineConfig = field(default_factory=HeadRefineConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    metrics: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, get_args(Method))

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready nested dicts."""
        return _jsonable(dataclasses.asdict(self))

    def with_updates(self, updates: dict[str, dict[str, Any] | Any]) -> SegmentationConfig:
        """Return a copy with nested values replaced.

        ``updates`` maps a top-level field to a value, or a stage name to a
        dict of that stage's fields, e.g. ``{"cluster": {"k": 5}}``.
        """
        top: dict[str, Any] = {}
        for key, value in updates.items():
            current = getattr(self, key, None)
            if key not in _FIELD_NAMES:
                raise ConfigurationError(f"unknown setting {key!r}: expected one of {sorted(_FIELD_NAMES)}")
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                top[key] = _replace_checked(current, key, value)
            else:
                top[key] = value
        return dataclasses.replace(self, **top)

    @classmethod
    def from_profile(cls, name: str, path: Path | None = None) -> SegmentationConfig:
        """Build the configuration of a named preset from ``profiles.toml``."""
        return cls().with_updates(load_profile(name, path))


_PROFILES_FILE = Path(__file__).with_name("profiles.toml")
_FIELD_NAMES = {f.name for f in dataclasses.fields(SegmentationConfig)}


def _replace_checked(section: Any, section_name: str, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigurationError(
            f"unknown setting {section_name}.{unknown[0]}: expected one of {sorted(names)}"
        )
    if "weights" in values and values["weights"] is not None:
        values = {**values, "weights": Path(values["weights"])}
    if "bands" in values and values["bands"] is not None:
        values = {**values, "bands": tuple(values["bands"])}
    return dataclasses.replace(section, **values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _read_profiles(path: Path | None) -> dict[str, Any]:
    source = _PROFILES_FILE if path is None else Path(path)
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"profiles file {source} not found: check the path") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"invalid TOML in profiles file {source}: {error}") from None


def profile_names(path: Path | None = None) -> list[str]:
    """Return the preset names defined in ``profiles.toml`` (or ``path``)."""
    return sorted(_read_profiles(path))


def load_profile(name: str, path: Path | None = None) -> dict[str, Any]:
    """Return the settings of one preset as nested dicts.

    Raises
    ------
    ConfigurationError
        If ``name`` is not a preset in the file.
    """
    profiles = _read_profiles(path)
    if name not in profiles:
        raise ConfigurationError(f"unknown profile {name!r}: expected one of {', '.join(sorted(profiles))}")
    return dict(profiles[name])
