"""The interface that every feature extractor implements."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch

from tree_seg.exceptions import ConfigurationError, InvalidInputError
from tree_seg.models.registry import BackboneSpec

__all__ = ["Backbone", "resolve_device", "resolve_dtype"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """Turn a device setting into a :class:`torch.device`.

    ``"auto"`` is CUDA when ``torch.cuda.is_available()`` and the CPU
    otherwise. ``"cuda"`` without a usable GPU raises
    :class:`~tree_seg.exceptions.ConfigurationError`.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("invalid device='cuda': CUDA is not available here; use device='auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn a dtype setting into the inference precision for ``device``.

    ``"auto"`` is bfloat16 on CUDA and float32 elsewhere, because bfloat16
    autocast is several times slower than float32 on CPUs without
    AVX512-BF16.
    """
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigurationError(f"invalid dtype={dtype!r}: expected one of 'auto', {', '.join(map(repr, _DTYPES))}")
    return _DTYPES[dtype]


class Backbone(abc.ABC):
    """A feature extractor that turns image windows into patch features.

    Subclasses implement :meth:`_extract`; :meth:`extract` checks the input
    first. Instances are meant to be built once per process and reused.
    """

    def __init__(self, spec: BackboneSpec, *, device: torch.device) -> None:
        self._spec = spec
        self._device = device

    @property
    def spec(self) -> BackboneSpec:
        """Static description of this backbone."""
        return self._spec

    @property
    def patch_size(self) -> int:
        """Side of one patch in pixels."""
        return self._spec.patch_size

    @property
    def feature_dim(self) -> int:
        """Length of one patch feature vector."""
        return self._spec.feature_dim

    @property
    def device(self) -> torch.device:
        """Device on which the features are computed."""
        return self._device

    def extract(self, windows: np.ndarray) -> np.ndarray:
        """Compute patch features of a batch of windows.

        Parameters
        ----------
        windows : ndarray of shape (N, 3, H, W), float32
            RGB windows with values in [0, 1]. ``H`` and ``W`` must be
            multiples of :attr:`patch_size`.

        Returns
        -------
        ndarray of shape (N, H // patch_size, W // patch_size, feature_dim), float32
            One feature vector per patch, not normalised.

        Raises
        ------
        InvalidInputError
            If the array does not have that shape.
        """
        windows = np.asarray(windows)
        if windows.ndim != 4 or windows.shape[1] != 3:
            raise InvalidInputError(
                f"invalid window batch of shape {windows.shape}: expected (N, 3, H, W) RGB windows"
            )
        height, width = windows.shape[2:]
        p = self.patch_size
        if height == 0 or width == 0 or height % p or width % p:
            raise InvalidInputError(
                f"invalid window size {height} x {width}: both sides must be positive multiples "
                f"of the patch size {p}"
            )
        features = self._extract(np.ascontiguousarray(windows, dtype=np.float32))
        return features.astype(np.float32, copy=False)

    @abc.abstractmethod
    def _extract(self, windows: np.ndarray) -> np.ndarray:
        """Compute the features of an already checked float32 batch."""

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Describe the backbone for run metadata.

        Returns
        -------
        dict
            JSON-ready values: ``name``, ``family``, ``patch_size``,
            ``feature_dim``, ``weights_path`` (str or None),
            ``weights_sha256`` (hex str or None), ``mean`` and ``std`` (lists
            of 3 floats or None), ``device`` (str) and ``dtype`` (str).
        """
