"""Per-process state of engine workers: the backbone cache.

Loading a ViT takes seconds and hundreds of MB, so each worker process loads
a backbone once, on the first task that needs it, and keeps it in a
module-level dict keyed by its :class:`~tree_seg.config.BackboneConfig`
(a frozen, hashable dataclass). Later tasks, later passes and later inputs of
a batch on the same cluster reuse it. The dict lives as long as the worker
process.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import warnings
from typing import Any

from tree_seg.config import BackboneConfig
from tree_seg.models import load_backbone
from tree_seg.models.base import Backbone

__all__ = ["backbone_info", "backbone_load_count", "clear_backbones", "get_backbone"]

logger = logging.getLogger(__name__)

_BACKBONES: dict[BackboneConfig, Backbone] = {}
_LOCK = threading.Lock()
_LOAD_COUNT = 0


def get_backbone(config: BackboneConfig) -> Backbone:
    """Return this process's backbone for ``config``, loading it on first use.

    Thread-safe: worker threads of one process that ask at the same time load
    it once.
    """
    global _LOAD_COUNT
    with _LOCK:
        backbone = _BACKBONES.get(config)
        if backbone is None:
            started = time.perf_counter()
            backbone = load_backbone(config)
            _BACKBONES[config] = backbone
            _LOAD_COUNT += 1
            logger.info("Loaded backbone %s on %s in %.1f s (cached for this process)",
                        backbone.info()["name"], backbone.device, time.perf_counter() - started)
    return backbone


def backbone_info(config: BackboneConfig) -> tuple[dict[str, Any], list[tuple[type[Warning], str]]]:
    """Load (or reuse) the backbone and return its info and the warnings of the load.

    The engine runs this as its first task on every worker, so the model is
    loaded in the workers rather than in the client process. The warnings
    (a fallback backbone, for example) come back to the client, which shows
    each once, instead of every worker printing its own copy.

    Returns
    -------
    info : dict
        :meth:`~tree_seg.models.base.Backbone.info`.
    warnings : list of (type, str)
        Category and message of each warning raised while loading.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = get_backbone(config).info()
    # The task functions import scikit-learn and scikit-image, 2.6 s in a
    # new worker on an idle 2-core machine. Importing them here, while the workers start up anyway,
    # keeps that one-time cost out of the feature pass's time.
    importlib.import_module("tree_seg.engine.tasks")
    return info, [(warning.category, str(warning.message)) for warning in caught]


def backbone_load_count() -> int:
    """Return how many backbones this process has loaded."""
    return _LOAD_COUNT


def clear_backbones() -> None:
    """Drop every cached backbone of this process, freeing its memory once unreferenced."""
    with _LOCK:
        _BACKBONES.clear()
