"""Tests for tree_seg.models.hf: strict loading of DINOv3 and DINOv2 checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from tree_seg.config import BackboneConfig
from tree_seg.exceptions import ConfigurationError, InvalidInputError, WeightsMismatchError, WeightsNotFoundError
from tree_seg.models import load_backbone
from tree_seg.models.hf import HFBackbone, checkpoint_files
from tree_seg.models.registry import SPECS, BackboneSpec

VITS16 = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
              patch_size=16, num_register_tokens=4)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            patch_size=16, num_register_tokens=4)


def _save_dinov3(folder: Path, seed: int = 0, **settings: int) -> Path:
    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(**settings))
    model.save_pretrained(folder)
    return folder


def _tiny_spec() -> BackboneSpec:
    """A spec that accepts the tiny test checkpoint (64 channels)."""
    return replace(SPECS["dinov3_vits16"], feature_dim=TINY["hidden_size"])


@pytest.fixture(scope="module")
def vits16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINOv3 ViT-S/16 with random weights in the Hugging Face format, created once."""
    return _save_dinov3(tmp_path_factory.mktemp("dinov3_vits16"), **VITS16)


@pytest.fixture(scope="module")
def vits16(vits16_checkpoint: Path) -> HFBackbone:
    return load_backbone(BackboneConfig(name="dinov3_vits16", weights=vits16_checkpoint, device="cpu"))


def _copy_with_tensors(source: Path, target: Path, edit) -> Path:
    """Copy a checkpoint folder and rewrite model.safetensors after ``edit(state)``."""
    shutil.copytree(source, target)
    state = load_file(str(source / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _reference_tokens(folder: Path, windows: np.ndarray, registers: int) -> np.ndarray:
    """Patch tokens from transformers' own loader, ImageNet-normalised."""
    model = DINOv3ViTModel.from_pretrained(folder).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = model(pixel_values=(torch.from_numpy(windows) - mean) / std).last_hidden_state
    n, _, height, width = windows.shape
    return tokens[:, 1 + registers:].reshape(n, height // 16, width // 16, -1).numpy()


def test_dinov3_extract_shape(vits16: HFBackbone, rng: np.random.Generator) -> None:
    windows = rng.random((2, 3, 64, 96), dtype=np.float32)

    features = vits16.extract(windows)

    assert features.shape == (2, 4, 6, 384)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()


def test_dinov3_matches_transformers(vits16: HFBackbone, vits16_checkpoint: Path,
                                     rng: np.random.Generator) -> None:
    windows = rng.random((1, 3, 64, 96), dtype=np.float32)

    features = vits16.extract(windows)
    expected = _reference_tokens(vits16_checkpoint, windows, registers=4)

    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_dinov3_layerscale_loaded(vits16: HFBackbone, vits16_checkpoint: Path) -> None:
    state = load_file(str(vits16_checkpoint / "model.safetensors"))
    loaded = vits16.model.state_dict()

    for key in ("layer.3.layer_scale1.lambda1", "layer.11.layer_scale2.lambda1"):
        assert torch.equal(loaded[f"model.{key}"], state[key])


def test_dinov3_info(vits16: HFBackbone, vits16_checkpoint: Path) -> None:
    info = vits16.info()
    expected_hash = hashlib.sha256((vits16_checkpoint / "model.safetensors").read_bytes()).hexdigest()

    assert info["name"] == "dinov3_vits16"
    assert info["family"] == "dinov3"
    assert info["patch_size"] == 16
    assert info["feature_dim"] == 384
    assert info["weights_path"] == str(vits16_checkpoint)
    assert info["weights_sha256"] == expected_hash
    assert info["mean"] == [0.485, 0.456, 0.406]
    assert info["std"] == [0.229, 0.224, 0.225]
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"


def test_dinov3_missing_tensor(vits16_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy_with_tensors(vits16_checkpoint, tmp_path / "ckpt",
                                lambda state: state.pop("layer.5.mlp.up_proj.weight"))

    with pytest.raises(WeightsMismatchError, match=r"missing tensor 'layer\.5\.mlp\.up_proj\.weight'"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def test_dinov3_missing_layerscale(vits16_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy_with_tensors(vits16_checkpoint, tmp_path / "ckpt",
                                lambda state: state.pop("layer.0.layer_scale1.lambda1"))

    with pytest.raises(WeightsMismatchError, match=r"missing tensor 'layer\.0\.layer_scale1\.lambda1'"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def test_dinov3_unexpected_tensor(vits16_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy_with_tensors(vits16_checkpoint, tmp_path / "ckpt",
                                lambda state: state.__setitem__("layer.2.extra.weight", torch.zeros(3)))

    with pytest.raises(WeightsMismatchError, match=r"unexpected tensor 'layer\.2\.extra\.weight'"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def test_dinov3_mis_shaped_tensor(vits16_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy_with_tensors(vits16_checkpoint, tmp_path / "ckpt",
                                lambda state: state.__setitem__("layer.1.mlp.up_proj.bias", torch.zeros(7)))

    with pytest.raises(WeightsMismatchError,
                       match=r"'layer\.1\.mlp\.up_proj\.bias' has shape \[7\] but the model expects \[1536\]"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def test_dinov3_wrapped_prefix_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    plain = _save_dinov3(tmp_path / "plain", **TINY)
    wrapped = _copy_with_tensors(
        plain, tmp_path / "wrapped",
        lambda state: state.update({f"model.{key}": state.pop(key) for key in list(state)}),
    )
    windows = rng.random((1, 3, 32, 48), dtype=np.float32)

    expected = HFBackbone(_tiny_spec(), weights=plain, device="cpu").extract(windows)
    features = HFBackbone(_tiny_spec(), weights=wrapped, device="cpu").extract(windows)

    np.testing.assert_array_equal(features, expected)


def test_dinov3_sharded_checkpoint(tmp_path: Path, rng: np.random.Generator) -> None:
    torch.manual_seed(1)
    model = DINOv3ViTModel(DINOv3ViTConfig(**TINY))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    windows = rng.random((1, 3, 32, 32), dtype=np.float32)

    backbone = HFBackbone(_tiny_spec(), weights=tmp_path / "sharded", device="cpu")
    files = checkpoint_files(tmp_path / "sharded")

    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(files) > 1
    np.testing.assert_allclose(backbone.extract(windows),
                               _reference_tokens(tmp_path / "sharded", windows, registers=4), atol=1e-5)


def test_dinov3_pytorch_bin_checkpoint(tmp_path: Path, rng: np.random.Generator) -> None:
    plain = _save_dinov3(tmp_path / "plain", **TINY)
    (tmp_path / "bin").mkdir()
    shutil.copy(plain / "config.json", tmp_path / "bin" / "config.json")
    torch.save(load_file(str(plain / "model.safetensors")), tmp_path / "bin" / "pytorch_model.bin")
    windows = rng.random((1, 3, 32, 32), dtype=np.float32)

    expected = HFBackbone(_tiny_spec(), weights=plain, device="cpu").extract(windows)
    features = HFBackbone(_tiny_spec(), weights=tmp_path / "bin", device="cpu").extract(windows)

    np.testing.assert_array_equal(features, expected)


def test_dinov3_preprocessor_normalisation(tmp_path: Path) -> None:
    folder = _save_dinov3(tmp_path / "ckpt", **TINY)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.43, 0.411, 0.296], "image_std": [0.213, 0.156, 0.143]})
    )

    info = HFBackbone(_tiny_spec(), weights=folder, device="cpu").info()

    assert info["mean"] == [0.43, 0.411, 0.296]
    assert info["std"] == [0.213, 0.156, 0.143]


def test_auto_backbone_with_mismatched_weights_names_resolved_backbone(tmp_path: Path) -> None:
    folder = _save_dinov3(tmp_path / "ckpt", **{**TINY, "patch_size": 14})

    with pytest.raises(ConfigurationError, match=r"^backbone auto loads dinov3_vits16, and weights in .* patch size 14"):
        load_backbone(BackboneConfig(name="auto", weights=folder, device="cpu"))


def test_dinov3_wrong_patch_size(tmp_path: Path) -> None:
    folder = _save_dinov3(tmp_path / "ckpt", **{**TINY, "patch_size": 14})

    with pytest.raises(ConfigurationError, match="patch size 14.*expects dinov3 with patch size 16"):
        HFBackbone(_tiny_spec(), weights=folder, device="cpu")


def test_dinov3_wrong_width_names_backbone(vits16_checkpoint: Path) -> None:
    with pytest.raises(ConfigurationError, match="384 channels.*use --backbone dinov3_vits16"):
        load_backbone(BackboneConfig(name="dinov3_vitb16", weights=vits16_checkpoint))


def test_weights_folder_absent(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="weights folder .*nowhere.* not found"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=tmp_path / "nowhere"))


def test_weights_file_absent(vits16_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "config_only").mkdir()
    shutil.copy(vits16_checkpoint / "config.json", tmp_path / "config_only" / "config.json")

    with pytest.raises(WeightsNotFoundError, match="no weight file in .*config_only"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=tmp_path / "config_only"))


def test_weights_path_is_a_file(vits16_checkpoint: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"weights path .*model\.safetensors for dinov3_vits16 is a file"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=vits16_checkpoint / "model.safetensors"))


def test_truncated_weights_file_names_it(vits16_checkpoint: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(vits16_checkpoint, tmp_path / "cut")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:100_000])

    with pytest.raises(WeightsMismatchError, match=r"weights file .*cut.model\.safetensors could not be read "
                                                   r"\(SafetensorError: .*download it again"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def test_truncated_pytorch_bin_names_it(tmp_path: Path) -> None:
    folder = _save_dinov3(tmp_path / "bin", **TINY)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])

    with pytest.raises(WeightsMismatchError, match=r"weights file .*pytorch_model\.bin could not be read"):
        HFBackbone(_tiny_spec(), weights=folder, device="cpu")


@pytest.mark.parametrize("text, message", [
    ("{}", r"config\.json gives model_type None, which is not a DINOv3 or DINOv2 backbone"),
    ("{not json", r"config\.json is not valid JSON .*download the checkpoint again"),
    ("[1, 2]", r"config\.json gives model_type None"),
])
def test_bad_config_json_names_the_file(vits16_checkpoint: Path, tmp_path: Path, text: str, message: str) -> None:
    folder = shutil.copytree(vits16_checkpoint, tmp_path / "bad_config")
    (folder / "config.json").write_text(text, encoding="utf-8")

    with pytest.raises(ConfigurationError, match=message):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=folder))


def _empty_hf_cache(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(folder))
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    return folder


def test_named_vit_without_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _empty_hf_cache(monkeypatch, tmp_path / "hf")

    with pytest.raises(WeightsNotFoundError) as caught:
        load_backbone(BackboneConfig(name="dinov3_vits16"))

    message = str(caught.value)
    assert "facebook/dinov3-vits16-pretrain-lvd1689m not found in the Hugging Face cache" in message
    assert "accept the licence" in message
    assert "hf download facebook/dinov3-vits16-pretrain-lvd1689m" in message
    assert "--weights DIR" in message


def test_hf_cache_snapshot_loads(vits16_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    cache = _empty_hf_cache(monkeypatch, tmp_path / "hf")
    repo = cache / "models--facebook--dinov3-vits16-pretrain-lvd1689m"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(vits16_checkpoint / name)

    backbone = load_backbone(BackboneConfig(name="small", device="cpu"))

    assert backbone.info()["name"] == "dinov3_vits16"
    assert Path(backbone.info()["weights_path"]).resolve() == snapshot.resolve()


def test_extract_rejects_non_multiple(vits16: HFBackbone) -> None:
    with pytest.raises(InvalidInputError, match="60 x 96.*multiples of the patch size 16"):
        vits16.extract(np.zeros((1, 3, 60, 96), dtype=np.float32))


def test_extract_rejects_bands(vits16: HFBackbone) -> None:
    with pytest.raises(InvalidInputError, match=r"shape \(1, 4, 64, 64\)"):
        vits16.extract(np.zeros((1, 4, 64, 64), dtype=np.float32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_unavailable(vits16_checkpoint: Path) -> None:
    with pytest.raises(ConfigurationError, match="device='cuda'"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=vits16_checkpoint, device="cuda"))


@pytest.mark.shared_data
def test_dinov2_real_weights(dinov2_weights: Path, rng: np.random.Generator) -> None:
    backbone = load_backbone(BackboneConfig(name="dinov2_vits14", weights=dinov2_weights, device="cpu"))
    windows = rng.random((1, 3, 224, 224), dtype=np.float32)

    features = backbone.extract(windows)
    info = backbone.info()

    assert features.shape == (1, 16, 16, 384)
    assert np.isfinite(features).all()
    assert info["family"] == "dinov2"
    assert info["patch_size"] == 14
    assert len(info["weights_sha256"]) == 64
    assert info["weights_sha256"] == backbone.weights_sha256


@pytest.mark.shared_data
def test_dinov2_as_dinov3_rejected(dinov2_weights: Path) -> None:
    with pytest.raises(ConfigurationError, match="dinov2 model with patch size 14.*use --backbone dinov2_vits14"):
        load_backbone(BackboneConfig(name="dinov3_vits16", weights=dinov2_weights))


def test_dinov2_registers_drops_registers(tmp_path: Path, rng: np.random.Generator) -> None:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(2)
    config = Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       patch_size=14, num_register_tokens=4, image_size=56)
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path)
    spec = replace(SPECS["dinov2_vits14"], feature_dim=64)
    windows = rng.random((2, 3, 42, 56), dtype=np.float32)

    features = HFBackbone(spec, weights=tmp_path, device="cpu").extract(windows)

    model = Dinov2WithRegistersModel.from_pretrained(tmp_path).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        tokens = model(pixel_values=(torch.from_numpy(windows) - mean) / std).last_hidden_state
    assert features.shape == (2, 3, 4, 64)
    np.testing.assert_allclose(features, tokens[:, 5:].reshape(2, 3, 4, 64).numpy(), atol=1e-5)


@pytest.mark.shared_data
def test_dinov2_non_square_window(dinov2_weights: Path, rng: np.random.Generator) -> None:
    backbone = load_backbone(BackboneConfig(name="dinov2_vits14", weights=dinov2_weights, device="cpu"))

    features = backbone.extract(rng.random((1, 3, 56, 84), dtype=np.float32))

    assert features.shape == (1, 4, 6, 384)
    assert np.isfinite(features).all()


def test_dinov2_wrapped_prefix_loads(tmp_path: Path, rng: np.random.Generator) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14,
                             image_size=56)).save_pretrained(tmp_path / "plain")
    wrapped = _copy_with_tensors(
        tmp_path / "plain", tmp_path / "wrapped",
        lambda state: state.update({f"dinov2.{key}": state.pop(key) for key in list(state)}),
    )
    spec = replace(SPECS["dinov2_vits14"], feature_dim=64)
    windows = rng.random((1, 3, 28, 42), dtype=np.float32)

    expected = HFBackbone(spec, weights=tmp_path / "plain", device="cpu").extract(windows)
    features = HFBackbone(spec, weights=wrapped, device="cpu").extract(windows)

    np.testing.assert_array_equal(features, expected)
