"""Tests for tree_seg.models.load_backbone: name resolution and the "auto" fallback."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from tree_seg.config import BackboneConfig
from tree_seg.exceptions import BackboneFallbackWarning, ConfigurationError, WeightsNotFoundError
from tree_seg.models import HFBackbone, TextureBackbone, load_backbone


@pytest.fixture
def empty_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_auto_falls_back_to_texture(empty_hf_cache: Path) -> None:
    with pytest.warns(BackboneFallbackWarning, match="'texture' backbone .* is used instead") as record:
        backbone = load_backbone(BackboneConfig(name="auto"))

    assert isinstance(backbone, TextureBackbone)
    assert backbone.info()["name"] == "texture"
    assert "hf download facebook/dinov3-vits16-pretrain-lvd1689m" in str(record[0].message)


def test_auto_uses_given_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                                   intermediate_size=1536, num_register_tokens=4)).save_pretrained(tmp_path)

    backbone = load_backbone(BackboneConfig(name="auto", weights=tmp_path, device="cpu"))

    assert isinstance(backbone, HFBackbone)
    assert backbone.info()["name"] == "dinov3_vits16"


def test_auto_missing_given_weights_raises(empty_hf_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="weights folder .*absent.* not found"):
        load_backbone(BackboneConfig(name="auto", weights=tmp_path / "absent"))


def test_named_vit_no_fallback(empty_hf_cache: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not found in the Hugging Face cache"):
        load_backbone(BackboneConfig(name="dinov2_vits14"))


def test_texture_by_name() -> None:
    backbone = load_backbone(BackboneConfig(name="texture", device="cpu"))

    assert isinstance(backbone, TextureBackbone)
    assert backbone.patch_size == 16
    assert backbone.feature_dim == 18


def test_texture_rejects_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="texture backbone, which has no weights"):
        load_backbone(BackboneConfig(name="texture", weights=tmp_path))


def test_texture_rejects_reduced_dtype() -> None:
    with pytest.raises(ConfigurationError, match="dtype='bfloat16' for the texture backbone"):
        load_backbone(BackboneConfig(name="texture", dtype="bfloat16"))


def test_unknown_name_rejected() -> None:
    with pytest.raises(ConfigurationError, match="unknown backbone 'resnet50'"):
        load_backbone(BackboneConfig(name="resnet50"))
