"""Tests for tree_seg.models.registry."""

from __future__ import annotations

import pytest

from tree_seg.exceptions import ConfigurationError
from tree_seg.models.registry import (
    ALIASES,
    IMAGENET_MEAN,
    SAT493M_MEAN,
    SAT493M_STD,
    SPECS,
    resolve_backbone,
)
from tree_seg.types import BACKBONE_NAMES


def test_specs_cover_backbone_names() -> None:
    assert set(SPECS) == set(BACKBONE_NAMES) - {"auto"}


@pytest.mark.parametrize(
    ("name", "family", "patch_size", "feature_dim", "repo"),
    [
        ("dinov3_vits16", "dinov3", 16, 384, "facebook/dinov3-vits16-pretrain-lvd1689m"),
        ("dinov3_vitb16", "dinov3", 16, 768, "facebook/dinov3-vitb16-pretrain-lvd1689m"),
        ("dinov3_vitl16", "dinov3", 16, 1024, "facebook/dinov3-vitl16-pretrain-lvd1689m"),
        ("dinov3_vith16plus", "dinov3", 16, 1280, "facebook/dinov3-vith16plus-pretrain-lvd1689m"),
        ("dinov3_vit7b16", "dinov3", 16, 4096, "facebook/dinov3-vit7b16-pretrain-lvd1689m"),
        ("dinov3_vitl16_sat", "dinov3", 16, 1024, "facebook/dinov3-vitl16-pretrain-sat493m"),
        ("dinov2_vits14", "dinov2", 14, 384, "facebook/dinov2-small"),
        ("dinov2_vitg14", "dinov2", 14, 1536, "facebook/dinov2-giant"),
        ("texture", "texture", 16, 18, None),
    ],
)
def test_resolve_backbone_canonical(name: str, family: str, patch_size: int, feature_dim: int,
                                    repo: str | None) -> None:
    spec = resolve_backbone(name)

    assert spec.name == name
    assert spec.family == family
    assert spec.patch_size == patch_size
    assert spec.feature_dim == feature_dim
    assert spec.hf_repo == repo


@pytest.mark.parametrize(
    ("alias", "name"),
    [("small", "dinov3_vits16"), ("base", "dinov3_vitb16"), ("large", "dinov3_vitl16"),
     ("huge", "dinov3_vith16plus"), ("small_plus", "dinov3_vits16plus"), ("LARGE", "dinov3_vitl16")],
)
def test_resolve_backbone_alias(alias: str, name: str) -> None:
    assert resolve_backbone(alias).name == name


def test_aliases_point_to_specs() -> None:
    assert set(ALIASES.values()) <= set(SPECS)


def test_resolve_backbone_unknown_lists_names() -> None:
    with pytest.raises(ConfigurationError, match="unknown backbone 'dinov4'.*dinov3_vits16.*small"):
        resolve_backbone("dinov4")


def test_resolve_backbone_auto_rejected() -> None:
    with pytest.raises(ConfigurationError, match="unknown backbone 'auto'"):
        resolve_backbone("auto")


def test_satellite_specs_normalisation() -> None:
    for name in ("dinov3_vitl16_sat", "dinov3_vit7b16_sat"):
        assert SPECS[name].mean == SAT493M_MEAN
        assert SPECS[name].std == SAT493M_STD
    assert SPECS["dinov3_vitl16"].mean == IMAGENET_MEAN
    assert SPECS["dinov2_vits14"].mean == IMAGENET_MEAN


def test_gated_only_dinov3() -> None:
    for spec in SPECS.values():
        assert spec.gated == (spec.family == "dinov3")
