"""Backbone names, their Hugging Face repositories and their default settings.

Every name in :data:`tree_seg.types.BACKBONE_NAMES` except ``"auto"`` has a
:class:`BackboneSpec` here, and a few short aliases map to DINOv3 names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tree_seg.exceptions import ConfigurationError
from tree_seg.types import BACKBONE_NAMES

__all__ = [
    "ALIASES",
    "BackboneSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SAT493M_MEAN",
    "SAT493M_STD",
    "SPECS",
    "resolve_backbone",
    "valid_backbone_names",
]

Family = Literal["dinov3", "dinov2", "texture"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Statistics of the SAT-493M satellite pretraining set, as published with the
# DINOv3 satellite checkpoints.
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """Static description of one backbone.

    Parameters
    ----------
    name : str
        Canonical name, one of :data:`tree_seg.types.BACKBONE_NAMES`.
    family : {"dinov3", "dinov2", "texture"}
        Architecture family; decides which ``transformers`` class loads it.
    hf_repo : str or None
        Hugging Face repository id of the pretrained weights; None for a
        weight-free backbone.
    patch_size : int
        Side of one patch in pixels.
    feature_dim : int
        Length of one patch feature vector.
    mean, std : tuple of float
        Per-channel RGB normalisation for inputs in [0, 1], used when the
        weights folder has no ``preprocessor_config.json``.
    gated : bool
        Whether Hugging Face requires accepting a licence before download.
    """

    name: str
    family: Family
    hf_repo: str | None
    patch_size: int
    feature_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    gated: bool = False


def _dinov3(name: str, repo: str, dim: int, *, satellite: bool = False) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        family="dinov3",
        hf_repo=repo,
        patch_size=16,
        feature_dim=dim,
        mean=SAT493M_MEAN if satellite else IMAGENET_MEAN,
        std=SAT493M_STD if satellite else IMAGENET_STD,
        gated=True,
    )


def _dinov2(name: str, repo: str, dim: int) -> BackboneSpec:
    return BackboneSpec(name=name, family="dinov2", hf_repo=repo, patch_size=14, feature_dim=dim)


# Length of the texture backbone's feature vector (tree_seg.models.texture).
TEXTURE_FEATURE_DIM = 18

SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(name="texture", family="texture", hf_repo=None, patch_size=16,
                     feature_dim=TEXTURE_FEATURE_DIM),
        _dinov3("dinov3_vits16", "facebook/dinov3-vits16-pretrain-lvd1689m", 384),
        _dinov3("dinov3_vits16plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m", 384),
        _dinov3("dinov3_vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m", 768),
        _dinov3("dinov3_vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m", 1024),
        _dinov3("dinov3_vith16plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m", 1280),
        _dinov3("dinov3_vit7b16", "facebook/dinov3-vit7b16-pretrain-lvd1689m", 4096),
        _dinov3("dinov3_vitl16_sat", "facebook/dinov3-vitl16-pretrain-sat493m", 1024, satellite=True),
        _dinov3("dinov3_vit7b16_sat", "facebook/dinov3-vit7b16-pretrain-sat493m", 4096, satellite=True),
        _dinov2("dinov2_vits14", "facebook/dinov2-small", 384),
        _dinov2("dinov2_vitb14", "facebook/dinov2-base", 768),
        _dinov2("dinov2_vitl14", "facebook/dinov2-large", 1024),
        _dinov2("dinov2_vitg14", "facebook/dinov2-giant", 1536),
    )
}
"""Spec of every canonical backbone name except ``"auto"``."""

ALIASES: dict[str, str] = {
    "small": "dinov3_vits16",
    "small_plus": "dinov3_vits16plus",
    "base": "dinov3_vitb16",
    "large": "dinov3_vitl16",
    "huge": "dinov3_vith16plus",
}
"""Short names accepted in place of a canonical DINOv3 name."""


def valid_backbone_names() -> list[str]:
    """Return every accepted backbone name: ``"auto"``, canonical names, then aliases."""
    return list(BACKBONE_NAMES) + list(ALIASES)


def resolve_backbone(name: str) -> BackboneSpec:
    """Look up the spec of a canonical backbone name or an alias.

    Parameters
    ----------
    name : str
        A canonical name or an alias; case-insensitive. ``"auto"`` is not
        resolved here because its choice depends on which weights are present
        (see :func:`tree_seg.models.load_backbone`).

    Returns
    -------
    BackboneSpec

    Raises
    ------
    ConfigurationError
        If ``name`` is neither a canonical name nor an alias.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in SPECS:
        valid = ", ".join(n for n in valid_backbone_names() if n != "auto")
        raise ConfigurationError(f"unknown backbone {name!r}: expected one of {valid}")
    return SPECS[key]
