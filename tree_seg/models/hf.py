"""DINOv3 and DINOv2 backbones loaded strictly from Hugging Face checkpoints.

A checkpoint folder contains ``config.json`` and the weights as
``model.safetensors``, as shards listed in ``model.safetensors.index.json``,
or as ``pytorch_model.bin`` (optionally sharded the same way). Loading is
strict: before any tensor is read, the checkpoint's tensor names and shapes
are compared with those of the model class built from ``config.json``, and any
missing, unexpected or mis-shaped tensor raises
:class:`~tree_seg.exceptions.WeightsMismatchError`. The model is never left
with randomly initialised parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, cast

import huggingface_hub
import numpy as np
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors import safe_open
from transformers import (
    DINOv3ViTConfig,
    DINOv3ViTModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PretrainedConfig,
    PreTrainedModel,
)

from tree_seg.exceptions import ConfigurationError, WeightsMismatchError, WeightsNotFoundError
from tree_seg.models.base import Backbone, resolve_device, resolve_dtype
from tree_seg.models.registry import SPECS, BackboneSpec

__all__ = ["HFBackbone", "checkpoint_files"]

logger = logging.getLogger(__name__)

# model_type in config.json -> (family, config class, model class)
_MODEL_TYPES: dict[str, tuple[str, type[PretrainedConfig], type[PreTrainedModel]]] = {
    "dinov3_vit": ("dinov3", DINOv3ViTConfig, DINOv3ViTModel),
    "dinov2": ("dinov2", Dinov2Config, Dinov2Model),
    "dinov2_with_registers": ("dinov2", Dinov2WithRegistersConfig, Dinov2WithRegistersModel),
}

_HASH_BLOCK = 1 << 20


def _download_hint(spec: BackboneSpec) -> str:
    steps = []
    if spec.gated:
        steps.append(f"accept the licence at https://huggingface.co/{spec.hf_repo} (the weights are gated)")
    steps.append(f"run `hf download {spec.hf_repo}` (`huggingface-cli download` on older huggingface_hub)")
    steps.append("or pass --weights DIR / BackboneConfig(weights=DIR) with config.json and model.safetensors")
    return ", ".join(steps)


def _find_folder(spec: BackboneSpec, weights: Path | None) -> Path:
    if weights is not None:
        folder = Path(weights).expanduser()
        if folder.is_file():
            raise WeightsNotFoundError(
                f"weights path {folder} for {spec.name} is a file: pass the folder that contains it, with "
                "config.json and model.safetensors"
            )
        if not folder.is_dir():
            raise WeightsNotFoundError(
                f"weights folder {folder} for {spec.name} not found: pass a folder with config.json "
                f"and model.safetensors, or omit --weights to use the Hugging Face cache"
            )
        return folder
    if spec.hf_repo is None:
        raise ConfigurationError(
            f"backbone {spec.name} has no Hugging Face repository: pass --weights DIR with config.json "
            "and model.safetensors"
        )

    try:
        snapshot = huggingface_hub.snapshot_download(spec.hf_repo, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError) as error:
        cache = huggingface_hub.constants.HF_HUB_CACHE
        raise WeightsNotFoundError(
            f"no weights for {spec.name}: {spec.hf_repo} not found in the Hugging Face cache {cache}. "
            f"To get them, {_download_hint(spec)}"
        ) from error
    return Path(snapshot)


def checkpoint_files(folder: Path) -> list[Path]:
    """List the weight files of a checkpoint folder, in a fixed order.

    Safetensors files win over ``pytorch_model.bin`` when both are present,
    as in ``transformers``. Shards are listed in name order.

    Raises
    ------
    WeightsNotFoundError
        If the folder contains no weight file, or an index names a missing shard.
    """
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            shards = [folder / name for name in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise WeightsNotFoundError(
                        f"shard {shard.name} listed in {folder / index} not found: download the checkpoint again"
                    )
            return shards
    raise WeightsNotFoundError(
        f"no weight file in {folder}: expected model.safetensors, model.safetensors.index.json "
        f"or pytorch_model.bin next to config.json"
    )


def _checkpoint_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Read tensor names and shapes; safetensors headers are read without the data."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        shapes[key] = tuple(handle.get_slice(key).get_shape())
            else:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                shapes.update({key: tuple(tensor.shape) for key, tensor in state.items()})
        except Exception as error:
            # safetensors raises its own SafetensorError, and torch.load a
            # RuntimeError, EOFError or UnpicklingError, for a cut-off file.
            raise WeightsMismatchError(
                f"weights file {path} could not be read ({type(error).__name__}: {error}): it is probably "
                "truncated or damaged, so download it again"
            ) from error
    return shapes


def _expected_shapes(model_class: type[PreTrainedModel], config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Compute the tensor names and shapes that a checkpoint of this model stores on disk.

    In transformers 5 some model classes name their tensors differently from
    the files on the Hub and rename them while loading (in 5.25,
    ``layer.0.*`` on disk is ``model.layer.0.*`` in ``DINOv3ViTModel``). The
    names on disk are what ``save_pretrained`` writes, which
    ``revert_weight_conversion`` computes. Where transformers has no such
    function, the model's own names are used.
    """
    with torch.device("meta"):
        model = model_class(config)
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        pass
    else:
        state = revert_weight_conversion(model, state)
    return {key: tuple(tensor.shape) for key, tensor in state.items()}


def _strip_wrapping_prefix(shapes: dict[str, tuple[int, ...]], prefix: str,
                           expected: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Drop ``prefix.`` from every name when every name has it and the model's names do not.

    A checkpoint saved from a wrapper (for example a classification model
    around the base model) stores the base model under its
    ``base_model_prefix``. ``from_pretrained`` strips it the same way.
    """
    dotted = f"{prefix}."
    if not prefix or not shapes:
        return shapes
    if all(key.startswith(dotted) for key in shapes) and not all(key.startswith(dotted) for key in expected):
        return {key[len(dotted):]: shape for key, shape in shapes.items()}
    return shapes


def _check_tensors(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
                   *, source: str, model_name: str) -> None:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    mis_shaped = [key for key in expected if key in found and found[key] != expected[key]]
    if not (missing or unexpected or mis_shaped):
        return

    problems = []
    if missing:
        problems.append(f"missing tensor {missing[0]!r}")
    if unexpected:
        problems.append(f"unexpected tensor {unexpected[0]!r}")
    if mis_shaped:
        key = mis_shaped[0]
        problems.append(f"tensor {key!r} has shape {list(found[key])} but the model expects {list(expected[key])}")
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mis_shaped)} mis-shaped"
    raise WeightsMismatchError(
        f"checkpoint {source} does not match {model_name}: {'; '.join(problems)} ({counts}); "
        f"check that the weights belong to this backbone and that the download is complete"
    )


def _matching_name(family: str, patch_size: int, hidden_size: int) -> str | None:
    for spec in SPECS.values():
        if spec.family == family and spec.patch_size == patch_size and spec.feature_dim == hidden_size:
            return spec.name
    return None


def _load_config(folder: Path, spec: BackboneSpec) -> tuple[PretrainedConfig, type[PreTrainedModel]]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsNotFoundError(f"config.json not found in {folder}: {_download_hint(spec)}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"{config_path} is not valid JSON ({error}): download the checkpoint again") from error
    model_type = raw.get("model_type") if isinstance(raw, dict) else None

    if model_type not in _MODEL_TYPES:
        raise ConfigurationError(
            f"{config_path} gives model_type {model_type!r}, which is not a DINOv3 or DINOv2 "
            f"backbone: expected one of {', '.join(map(repr, _MODEL_TYPES))}"
        )
    family, config_class, model_class = _MODEL_TYPES[model_type]
    config = config_class.from_pretrained(folder)
    patch_size = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    hidden_size = config.hidden_size

    if (family, patch_size, hidden_size) != (spec.family, spec.patch_size, spec.feature_dim):
        match = _matching_name(family, patch_size, hidden_size)
        fix = f"use --backbone {match}" if match else "use weights that match the backbone name"
        raise ConfigurationError(
            f"weights in {folder} are a {family} model with patch size {patch_size} and {hidden_size} "
            f"channels, but {spec.name} expects {spec.family} with patch size {spec.patch_size} and "
            f"{spec.feature_dim} channels: {fix}"
        )
    return config, model_class


def _normalisation(folder: Path, spec: BackboneSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from ``preprocessor_config.json``, else the spec's defaults."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return spec.mean, spec.std
    raw = json.loads(path.read_text(encoding="utf-8"))
    mean = raw.get("image_mean", spec.mean)
    std = raw.get("image_std", spec.std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigurationError(
            f"invalid image_mean={mean} or image_std={std} in {path}: expected 3 values each, std > 0"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


class HFBackbone(Backbone):
    """A DINOv3 or DINOv2 ViT from a Hugging Face checkpoint.

    Parameters
    ----------
    spec : BackboneSpec
        Which backbone; its family, patch size and feature dimension must
        match the checkpoint's ``config.json``.
    weights : Path or None, default=None
        Checkpoint folder. ``None`` looks up ``spec.hf_repo`` in the Hugging
        Face cache without network access.
    device : {"auto", "cpu", "cuda"}, default="auto"
        See :func:`resolve_device`.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast precision; see :func:`resolve_dtype`. Parameters stay
        float32.

    Raises
    ------
    WeightsNotFoundError
        If no checkpoint folder or weight file is found.
    WeightsMismatchError
        If the checkpoint's tensors do not match the model built from its
        ``config.json``.
    ConfigurationError
        If the checkpoint is of another family, patch size or width than
        ``spec``.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        weights: Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        if spec.family not in ("dinov3", "dinov2"):
            raise ConfigurationError(f"invalid backbone {spec.name!r} for HFBackbone: expected a DINOv3 or DINOv2 name")
        super().__init__(spec, device=resolve_device(device))
        self._dtype = resolve_dtype(dtype, self.device)
        started = time.perf_counter()

        folder = _find_folder(spec, weights)
        config, model_class = _load_config(folder, spec)
        self._files = checkpoint_files(folder)
        source = str(self._files[0] if len(self._files) == 1 else folder)

        expected = _expected_shapes(model_class, config)
        found = _strip_wrapping_prefix(_checkpoint_shapes(self._files), model_class.base_model_prefix, expected)
        _check_tensors(found, expected, source=source, model_name=f"{spec.name} ({model_class.__name__})")

        self._model = self._load_model(model_class, folder, config, source)
        self._folder = folder
        self._register_tokens = int(getattr(config, "num_register_tokens", 0) or 0)
        self._mean, self._std = _normalisation(folder, spec)
        self._mean_t = torch.tensor(self._mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self._std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._sha256: str | None = None

        logger.info(
            "loaded %s from %s (%d file(s)) on %s with %s in %.1f s",
            spec.name, folder, len(self._files), self.device, self._dtype, time.perf_counter() - started,
        )

    def _load_model(self, model_class: type[PreTrainedModel], folder: Path, config: PretrainedConfig,
                    source: str) -> PreTrainedModel:
        # from_pretrained applies the library's own renames between file and
        # model names. The tensor check above has already ensured that every
        # tensor is present with the right shape, and the loading report is
        # checked again so that no parameter is left randomly initialised.
        # transformers 5.25 annotates from_pretrained as returning the model, but
        # output_loading_info=True makes it return (model, loading_info).
        model, report = cast("tuple[PreTrainedModel, dict[str, Any]]", model_class.from_pretrained(
            folder,
            config=config,
            dtype=torch.float32,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        ))
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            entries = sorted(report.get(kind) or [], key=str)
            if entries:
                raise WeightsMismatchError(
                    f"checkpoint {source} did not load into {model_class.__name__}: {kind.replace('_', ' ')} "
                    f"{entries[0]!r} ({len(entries)} in all); check that the weights belong to this backbone"
                )
        if report.get("error_msgs"):
            raise WeightsMismatchError(f"checkpoint {source} failed to load: {report['error_msgs'][0]}")
        return model.eval().to(self.device)

    @property
    def dtype(self) -> torch.dtype:
        """Autocast precision of the forward pass."""
        return self._dtype

    @property
    def model(self) -> PreTrainedModel:
        """The underlying ``transformers`` model, in eval mode."""
        return self._model

    @property
    def weights_path(self) -> Path:
        """Checkpoint folder the weights were read from."""
        return self._folder

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weight file bytes, concatenated in :func:`checkpoint_files` order.

        Computed on first access by streaming the files, then cached.
        """
        if self._sha256 is None:
            started = time.perf_counter()
            self._sha256 = _sha256(self._files)
            logger.info("weights %s sha256 %s (%.1f s)", self._folder, self._sha256, time.perf_counter() - started)
        return self._sha256

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._dtype)

    def _extract(self, windows: np.ndarray) -> np.ndarray:
        n, _, height, width = windows.shape
        rows, cols = height // self.patch_size, width // self.patch_size

        with torch.inference_mode():
            pixels = torch.from_numpy(windows).to(self.device)
            pixels = (pixels - self._mean_t) / self._std_t
            with self._autocast():
                tokens = self._model(pixel_values=pixels).last_hidden_state

        # Token order is [CLS, registers..., patches in row-major order].
        patches = tokens[:, 1 + self._register_tokens:, :]
        if patches.shape[1] != rows * cols:
            raise RuntimeError(
                f"{self.spec.name} returned {patches.shape[1]} patch tokens for a {height} x {width} window, "
                f"expected {rows * cols}"
            )
        return patches.reshape(n, rows, cols, -1).float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        """Describe the backbone for run metadata; see :meth:`Backbone.info`."""
        return {
            "name": self.spec.name,
            "family": self.spec.family,
            "patch_size": self.patch_size,
            "feature_dim": self.feature_dim,
            "weights_path": str(self._folder),
            "weights_sha256": self.weights_sha256,
            "mean": list(self._mean),
            "std": list(self._std),
            "device": str(self.device),
            "dtype": str(self._dtype).removeprefix("torch."),
        }
