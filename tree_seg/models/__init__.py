"""Feature extractors behind one interface, and how to load them.

``transformers`` is imported only when a ViT is loaded, because importing it
takes seconds and the texture backbone does not need it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from tree_seg.config import BackboneConfig
from tree_seg.exceptions import BackboneFallbackWarning, ConfigurationError, WeightsNotFoundError
from tree_seg.models.base import Backbone, resolve_device
from tree_seg.models.registry import BackboneSpec, resolve_backbone
from tree_seg.models.texture import TextureBackbone

if TYPE_CHECKING:
    from tree_seg.models.hf import HFBackbone

__all__ = ["Backbone", "BackboneSpec", "HFBackbone", "TextureBackbone", "load_backbone", "resolve_backbone"]

logger = logging.getLogger(__name__)

_AUTO_BACKBONE = "dinov3_vits16"


def __getattr__(name: str) -> Any:
    if name == "HFBackbone":
        from tree_seg.models.hf import HFBackbone

        return HFBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _texture(config: BackboneConfig) -> TextureBackbone:
    return TextureBackbone(device=resolve_device(config.device))


def load_backbone(config: BackboneConfig) -> Backbone:
    """Load the backbone that a configuration names.

    Parameters
    ----------
    config : BackboneConfig
        ``name`` is a canonical name, an alias or ``"auto"``; ``weights``,
        ``device`` and ``dtype`` apply to ViTs.

    Returns
    -------
    Backbone
        For ``"auto"``: DINOv3 ViT-S/16 when its weights are found in
        ``config.weights`` or the Hugging Face cache, otherwise the
        weight-free texture backbone, with a warning.

    Raises
    ------
    WeightsNotFoundError
        If a named ViT has no weights, or ``config.weights`` is given and
        contains no checkpoint. ``"auto"`` falls back only when no folder
        was given.
    WeightsMismatchError
        If a checkpoint does not match its model class.
    ConfigurationError
        If the name is unknown, or ``weights`` or a reduced ``dtype`` is
        given for the texture backbone, which has neither.

    Warns
    -----
    BackboneFallbackWarning
        When ``"auto"`` falls back to the texture backbone.
    """
    name = config.name.strip().lower()
    if name == "auto":
        return _load_auto(config)

    spec = resolve_backbone(name)
    if spec.family == "texture":
        if config.weights is not None:
            raise ConfigurationError(
                f"invalid weights={config.weights} for the texture backbone, which has no weights: "
                f"drop --weights or choose a ViT backbone"
            )
        if config.dtype not in ("auto", "float32"):
            raise ConfigurationError(
                f"invalid dtype={config.dtype!r} for the texture backbone, which always computes in "
                f"float32: use dtype='auto'"
            )
        backbone: Backbone = _texture(config)
    else:
        from tree_seg.models.hf import HFBackbone

        backbone = HFBackbone(spec, weights=config.weights, device=config.device, dtype=config.dtype)
    logger.info("backbone %s on %s", spec.name, backbone.device)
    return backbone


def _load_auto(config: BackboneConfig) -> Backbone:
    from tree_seg.models.hf import HFBackbone

    spec = resolve_backbone(_AUTO_BACKBONE)
    try:
        backbone: Backbone = HFBackbone(spec, weights=config.weights, device=config.device, dtype=config.dtype)
    except ConfigurationError as error:
        # The user may not know that "auto" means this backbone.
        raise ConfigurationError(f"backbone auto loads {spec.name}, and {error}") from None
    except WeightsNotFoundError as error:
        if config.weights is not None:
            raise
        message = (
            f"DINOv3 weights not found, so the weight-free 'texture' backbone (colour and texture "
            f"statistics) is used instead; for DINOv3 features: {error}"
        )
        # The CLI routes warnings into the log, so logging it here too would repeat it.
        warnings.warn(message, BackboneFallbackWarning, stacklevel=3)
        return _texture(config)
    logger.info("backbone auto: %s on %s", spec.name, backbone.device)
    return backbone
