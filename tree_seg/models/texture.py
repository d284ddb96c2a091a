"""A weight-free backbone of per-patch colour and texture statistics.

It runs anywhere with no download and separates canopy from soil, roads and
roofs reasonably well, but not tree species. Each 16 x 16 pixel patch gets
18 values:

==========  =====================================================
index       value (pooled over the patch's pixels)
==========  =====================================================
0-2         mean of R, G, B
3-5         standard deviation of R, G, B
6-8         mean of CIE L*, a*, b* (D65 white point)
9-11        standard deviation of L*, a*, b*
12-13       mean and standard deviation of the excess-green index
            ``2g - r - b`` on chromaticities ``r = R / (R + G + B)``
14-15       mean and standard deviation of the Sobel gradient
            magnitude of L* / 100
16-17       mean local standard deviation of L* / 100 in 3 x 3 and
            9 x 9 pixel neighbourhoods
==========  =====================================================

Each value is centred and scaled with fixed constants (:data:`FEATURE_CENTRE`,
:data:`FEATURE_SCALE`) chosen for 8-bit aerial RGB scaled to [0, 1]. They are
constants rather than statistics of the data, so every window and every chunk
of a raster gives the same value for the same pixels. Centring matters
because the features are L2-normalised before K-means, which then compares
directions from that centre.

Neighbourhood filters pad by reflection inside the window, so a patch's
features depend only on pixels of the window it is computed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tree_seg.models.base import Backbone
from tree_seg.models.registry import SPECS

__all__ = ["FEATURE_CENTRE", "FEATURE_NAMES", "FEATURE_SCALE", "TextureBackbone"]

FEATURE_NAMES = (
    "mean_r", "mean_g", "mean_b",
    "std_r", "std_g", "std_b",
    "mean_l", "mean_a", "mean_b_star",
    "std_l", "std_a", "std_b_star",
    "mean_exg", "std_exg",
    "mean_gradient", "std_gradient",
    "local_std_3", "local_std_9",
)

# Typical values for aerial RGB: the centre is a value between vegetation and
# bare ground or built surfaces, the scale about the spread between them.
FEATURE_CENTRE = np.array(
    [0.40, 0.40, 0.40,
     0.06, 0.06, 0.06,
     45.0, 0.0, 10.0,
     6.0, 2.0, 2.0,
     0.05, 0.03,
     0.10, 0.08,
     0.03, 0.05],
    dtype=np.float32,
)
FEATURE_SCALE = np.array(
    [0.20, 0.20, 0.20,
     0.05, 0.05, 0.05,
     20.0, 15.0, 15.0,
     5.0, 2.0, 2.0,
     0.10, 0.03,
     0.10, 0.08,
     0.03, 0.04],
    dtype=np.float32,
)

# The standard sRGB-to-CIE-XYZ matrix and reference white, both for the D65 illuminant.
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]],
    dtype=torch.float32,
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float32).view(1, 3, 1, 1)

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL = torch.stack([_SOBEL_X, _SOBEL_X.T]).unsqueeze(1)  # (2, 1, 3, 3)


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert (N, 3, H, W) sRGB in [0, 1] to CIE L*a*b* (L* in [0, 100])."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,njhw->nihw", _RGB_TO_XYZ.to(rgb.device), linear) / _WHITE.to(rgb.device)
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp_min(delta**3) ** (1.0 / 3.0), xyz / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def _local_std(x: torch.Tensor, size: int) -> torch.Tensor:
    """Standard deviation in a size x size neighbourhood, reflect-padded inside the window."""
    padded = F.pad(x, (size // 2,) * 4, mode="reflect")
    mean = F.avg_pool2d(padded, size, stride=1)
    mean_sq = F.avg_pool2d(padded * padded, size, stride=1)
    return (mean_sq - mean * mean).clamp_min(0.0).sqrt()


def _patch_mean_std(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Two passes: E[x^2] - E[x]^2 loses most digits in float32 for L* ~ 50.
    mean = F.avg_pool2d(x, patch)
    deviation = x - mean.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return mean, F.avg_pool2d(deviation * deviation, patch).sqrt()


def texture_features(windows: torch.Tensor, *, patch_size: int = 16) -> torch.Tensor:
    """Compute centred colour and texture statistics per patch.

    Parameters
    ----------
    windows : Tensor of shape (N, 3, H, W), float32
        RGB in [0, 1]; ``H`` and ``W`` are multiples of ``patch_size`` and at
        least 16 pixels (the 9 x 9 filter pads by reflection).
    patch_size : int, default=16
        Patch side in pixels.

    Returns
    -------
    Tensor of shape (N, H // patch_size, W // patch_size, 18), float32
        Values in the order of :data:`FEATURE_NAMES`, centred and scaled.
    """
    rgb = windows.clamp(0.0, 1.0)
    lab = _rgb_to_lab(rgb)
    lightness = lab[:, :1] / 100.0

    chromaticity = rgb / rgb.sum(dim=1, keepdim=True).clamp_min(1e-6)
    excess_green = 2.0 * chromaticity[:, 1:2] - chromaticity[:, :1] - chromaticity[:, 2:]

    sobel = F.conv2d(F.pad(lightness, (1, 1, 1, 1), mode="reflect"), _SOBEL.to(windows.device))
    gradient = sobel.pow(2).sum(dim=1, keepdim=True).sqrt()

    rgb_mean, rgb_std = _patch_mean_std(rgb, patch_size)
    lab_mean, lab_std = _patch_mean_std(lab, patch_size)
    exg_mean, exg_std = _patch_mean_std(excess_green, patch_size)
    grad_mean, grad_std = _patch_mean_std(gradient, patch_size)
    local = torch.cat([_local_std(lightness, 3), _local_std(lightness, 9)], dim=1)
    local_mean = F.avg_pool2d(local, patch_size)

    features = torch.cat(
        [rgb_mean, rgb_std, lab_mean, lab_std, exg_mean, exg_std, grad_mean, grad_std, local_mean], dim=1
    )
    centre = torch.from_numpy(FEATURE_CENTRE).to(windows.device).view(1, -1, 1, 1)
    scale = torch.from_numpy(FEATURE_SCALE).to(windows.device).view(1, -1, 1, 1)
    return ((features - centre) / scale).permute(0, 2, 3, 1)


class TextureBackbone(Backbone):
    """Weight-free backbone of colour and texture statistics on 16 px patches.

    Parameters
    ----------
    device : torch.device or str, default="cpu"
        Where the statistics are computed; always in float32.
    """

    def __init__(self, *, device: torch.device | str = "cpu") -> None:
        super().__init__(SPECS["texture"], device=torch.device(device))

    def _extract(self, windows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            pixels = torch.from_numpy(windows).to(self.device)
            features = texture_features(pixels, patch_size=self.patch_size)
        return features.cpu().numpy()

    def info(self) -> dict[str, Any]:
        """Describe the backbone for run metadata; see :meth:`Backbone.info`."""
        return {
            "name": self.spec.name,
            "family": self.spec.family,
            "patch_size": self.patch_size,
            "feature_dim": self.feature_dim,
            "weights_path": None,
            "weights_sha256": None,
            "mean": None,
            "std": None,
            "device": str(self.device),
            "dtype": "float32",
        }
