"""Spatial blends of cluster responsibilities for the V2 head refinement.

Two blends, both pure torch functions of one chunk with its halo:

- ``"neighbour"`` mixes each patch's responsibilities with the mean of its
  valid 3 x 3 neighbours on the patch grid. It works with clusters last,
  the layout of the E-step, so that no step reorders the data.
- ``"guided"`` upsamples the responsibilities bilinearly to a guide grid of
  ``guide_stride`` pixels per cell. It then filters them with a guided
  filter (He, Sun and Tang, "Guided Image Filtering", TPAMI 2013) whose guide
  is the image averaged to that grid, so class boundaries follow image edges
  below the patch size.

Every step reads a bounded neighbourhood (:func:`blend_halo`), and cells
outside the raster or on nodata are masked, never padded with values. A chunk
passed with a large enough halo, whose cells beyond the raster edge are
marked invalid, therefore gets the same values as the whole grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tree_seg.config import HeadRefineConfig
from tree_seg.exceptions import ConfigurationError, InvalidInputError

__all__ = [
    "GuideCells",
    "blend_halo",
    "blend_neighbours_last",
    "cells_per_patch",
    "cells_to_patches",
    "guide_to_cells",
    "guided_blend",
    "guided_filter",
    "neighbour_blend",
    "neighbour_weights",
    "prepare_guide",
    "upsample_bilinear_masked",
]

# Sums below this are treated as zero when renormalising responsibilities.
_TINY = 1e-12


def cells_per_patch(config: HeadRefineConfig, patch_size: int) -> int:
    """Return the number of blend cells along one side of a patch.

    Parameters
    ----------
    config : HeadRefineConfig
        ``blend`` and ``guide_stride`` are read.
    patch_size : int
        Backbone patch side in pixels of the resampled image.

    Returns
    -------
    int
        1 for the neighbour blend; ``patch_size // guide_stride`` for the
        guided blend.

    Raises
    ------
    ConfigurationError
        If ``guide_stride`` does not divide ``patch_size`` in the guided blend.
    """
    if config.blend == "neighbour":
        return 1
    return patch_size // guide_stride(config, patch_size)


def guide_stride(config: HeadRefineConfig, patch_size: int) -> int:
    """Return the guide cell side in pixels: the configured one, or for ``None``
    the largest divisor of the patch size up to 4 (4 for 16 px patches, 2 for 14 px).

    Raises
    ------
    ConfigurationError
        If a configured ``guide_stride`` does not divide ``patch_size``.
    """
    if config.guide_stride is None:
        return max(d for d in range(1, 5) if patch_size % d == 0)
    if patch_size < 1 or patch_size % config.guide_stride != 0:
        divisors = [d for d in range(1, patch_size + 1) if patch_size % d == 0]
        raise ConfigurationError(
            f"invalid guide_stride={config.guide_stride}: it must divide the patch size {patch_size} "
            f"pixels; use one of {divisors}"
        )
    return config.guide_stride


def blend_halo(config: HeadRefineConfig, patch_size: int) -> int:
    """Return the halo, in patches, that one E-step with the blend needs.

    The neighbour blend reads one patch on each side. The guided blend reads
    one patch for the bilinear upsampling plus ``2 * guided_radius`` cells for
    the two box-filter passes of the guided filter, rounded up to patches.

    Parameters
    ----------
    config : HeadRefineConfig
        Blend settings.
    patch_size : int
        Backbone patch side in pixels of the resampled image.

    Returns
    -------
    int
        Halo width in patches on every side of a chunk.
    """
    if config.blend == "neighbour":
        return 1
    factor = cells_per_patch(config, patch_size)
    return 1 + math.ceil(2 * config.guided_radius / factor)


def neighbour_weights(valid: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the per-patch weights of the neighbour blend.

    The blend of :func:`neighbour_blend` is ``own * r + window * S``, where
    ``S`` is the sum of ``r`` over the 3 x 3 window including the patch
    itself. With ``c`` valid neighbours, ``window = alpha / c`` and
    ``own = 1 - alpha - alpha / c``, so the weights of a valid patch sum to
    1 and the result is again a distribution over clusters. The weights
    depend only on the mask, so several E-steps on one grid can share them.

    Parameters
    ----------
    valid : Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data.
    alpha : float
        Blend weight in [0, 1].

    Returns
    -------
    own : Tensor of float32, shape (patch_y, patch_x, 1)
        Weight of the window sum's correction for the patch itself: 1 on a
        valid patch without valid neighbours, 0 on invalid patches.
    window : Tensor of float32, shape (patch_y, patch_x, 1)
        Weight of the 3 x 3 window sum: 0 on invalid patches and on patches
        without valid neighbours.
    """
    mask = valid.to(torch.float32)[..., None]
    count = _window_sum_3x3(mask) - mask
    window = torch.where(count > 0, alpha / count.clamp(min=1.0), 0.0) * mask
    own = torch.where(count > 0, 1.0 - alpha, 1.0) * mask - window
    return own, window


def _window_sum_3x3(x: torch.Tensor) -> torch.Tensor:
    # Sum over the 3 x 3 window of the first two axes of x (y, x, channel),
    # with nothing outside the grid. Every cell's sum has the same terms in
    # the same order wherever the grid is cut, so a chunk with a halo and the
    # whole grid agree.
    if x.device.type == "cpu":
        # One depthwise convolution (oneDNN) on the channels-last view,
        # measured about twice as fast in the EM loop as the shifted slices.
        # CUDA uses the slices, because cuDNN convolutions may round to TF32.
        channels = x.shape[2]
        ones = x.new_ones((channels, 1, 3, 3))
        out = F.conv2d(x[None].permute(0, 3, 1, 2), ones, padding=1, groups=channels)
        return out[0].permute(1, 2, 0).contiguous()
    return _window_sum_slices(x)


def _window_sum_slices(x: torch.Tensor) -> torch.Tensor:
    # Computes _window_sum_3x3 with shifted slices, rows first, then columns.
    rows = x.clone()
    rows[:, 1:] += x[:, :-1]
    rows[:, :-1] += x[:, 1:]
    out = rows.clone()
    out[1:] += rows[:-1]
    out[:-1] += rows[1:]
    return out


def blend_neighbours_last(resp: torch.Tensor, own: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Apply the neighbour blend to responsibilities stored clusters last.

    That is the layout the E-step produces. :func:`neighbour_blend` applies
    the same blend to responsibilities stored clusters first.

    Parameters
    ----------
    resp : Tensor of float32, shape (patch_y, patch_x, K)
        Responsibilities, summing to 1 over K on valid patches and 0 on
        invalid ones.
    own, window : Tensor of float32, shape (patch_y, patch_x, 1)
        Output of :func:`neighbour_weights`.

    Returns
    -------
    Tensor of float32, shape (patch_y, patch_x, K)
        Blended responsibilities, summing to 1 over K (to float32 rounding)
        on valid patches and 0 on invalid ones.
    """
    return _window_sum_3x3(resp).mul_(window).addcmul_(resp, own)


def neighbour_blend(resp: torch.Tensor, valid: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """Mix each patch's responsibilities with the mean of its valid neighbours.

    ``r' = (1 - alpha) * r + alpha * mean(r over the valid 3 x 3 neighbours,
    excluding the patch itself)``. A valid patch with no valid neighbour
    keeps its own responsibilities.

    Parameters
    ----------
    resp : Tensor of float32, shape (K, patch_y, patch_x)
        Responsibilities, summing to 1 over K on valid patches.
    valid : Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data; the others neither give nor receive.
    alpha : float
        Blend weight in [0, 1].

    Returns
    -------
    Tensor of float32, shape (K, patch_y, patch_x)
        Blended responsibilities; 0 on invalid patches.
    """
    own, window = neighbour_weights(valid, alpha)
    masked = (resp * valid.to(resp.dtype)).permute(1, 2, 0)
    return blend_neighbours_last(masked, own, window).permute(2, 0, 1)


def _renormalise(resp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # Divides by the sum over clusters in place. Cells that are invalid or
    # whose sum is 0 become 0.
    total = resp.sum(dim=0)
    resp /= total.clamp(min=_TINY)
    return resp.masked_fill_(~valid | (total <= _TINY), 0.0)


def _upsample_axis(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    # Cell c of patch i has its centre at patch coordinate i + t, with
    # t = (c + 0.5) / factor - 0.5 in (-0.5, 0.5), which is the half-pixel
    # convention of bilinear resizing (align_corners=False).
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    padded = F.pad(x, (1, 1))
    previous, current, following = padded[..., :n], padded[..., 1:n + 1], padded[..., 2:]
    phases = []
    for c in range(factor):
        t = (c + 0.5) / factor - 0.5
        if t < 0:
            phases.append(-t * previous + (1.0 + t) * current)
        else:
            phases.append((1.0 - t) * current + t * following)
    out = torch.stack(phases, dim=-1).reshape(*x.shape[:-1], n * factor)
    return out.movedim(-1, dim)


def upsample_bilinear_masked(resp: torch.Tensor, valid: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample patch responsibilities bilinearly, ignoring invalid patches.

    Each cell is the bilinear mix of the up to four nearest patch centres,
    with the weights of invalid patches set to 0 and the rest renormalised
    (normalised convolution). Near an invalid patch or the grid edge this
    reduces to the valid patches only, which is how a chunk edge padded with
    invalid patches and the true raster edge give the same values.

    Parameters
    ----------
    resp : Tensor of float32, shape (K, patch_y, patch_x)
        Responsibilities on the patch grid.
    valid : Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data.
    factor : int
        Cells per patch along each side.

    Returns
    -------
    Tensor of float32, shape (K, patch_y * factor, patch_x * factor)
        Upsampled responsibilities; 0 where no valid patch contributes.
    """
    if factor == 1:
        return resp * valid.to(resp.dtype)
    mask = valid.to(resp.dtype)
    stacked = torch.cat([resp * mask, mask[None]])
    up = _upsample_axis(_upsample_axis(stacked, factor, 1), factor, 2)
    weight = up[-1]
    return torch.where(weight > _TINY, up[:-1] / weight.clamp(min=_TINY), torch.zeros((), dtype=resp.dtype,
                       device=resp.device))


def guide_to_cells(
    guide: torch.Tensor, guide_valid: torch.Tensor | None, stride: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the guide image over blocks of ``stride`` x ``stride`` pixels.

    Parameters
    ----------
    guide : Tensor of float32, shape (C, H, W)
        Image in [0, 1]; H and W are multiples of ``stride``.
    guide_valid : Tensor of bool, shape (H, W), or None
        True on pixels that hold data; None treats every pixel as valid.
    stride : int
        Pixels per cell along each side.

    Returns
    -------
    cells : Tensor of float32, shape (C, H // stride, W // stride)
        Mean of the valid pixels of each cell; 0 where none is valid.
    cell_valid : Tensor of bool, shape (H // stride, W // stride)
        True on cells with at least one valid pixel.
    """
    channels, height, width = guide.shape
    shape = (channels, height // stride, stride, width // stride, stride)
    if guide_valid is None:
        cells = guide.reshape(shape).mean(dim=(2, 4))
        return cells, torch.ones(cells.shape[1:], dtype=torch.bool, device=guide.device)
    mask = guide_valid.to(guide.dtype)
    sums = (guide * mask).reshape(shape).sum(dim=(2, 4))
    counts = mask.reshape(shape[1:]).sum(dim=(1, 3))
    return sums / counts.clamp(min=1.0), counts > 0


@dataclass(frozen=True)
class GuideCells:
    """Guide image of one chunk averaged to the cell grid (:func:`prepare_guide`).

    Attributes
    ----------
    cells : Tensor of float32, shape (C, cell_y, cell_x)
        Mean of the valid pixels of each cell, in [0, 1]; one channel (the
        band mean) unless ``guided_colour`` is set.
    valid : Tensor of bool, shape (cell_y, cell_x)
        True on cells with at least one valid pixel.
    """

    cells: torch.Tensor
    valid: torch.Tensor


def prepare_guide(
    guide: np.ndarray | torch.Tensor | None,
    guide_valid: np.ndarray | torch.Tensor | None,
    *,
    grid_shape: tuple[int, int],
    patch_size: int,
    config: HeadRefineConfig,
    device: torch.device | str = "cpu",
) -> GuideCells:
    """Check the guide image of a patch grid and average it to cells.

    The result depends only on the image, so a caller that runs several EM
    iterations on the same grid can prepare it once and pass it as ``guide``
    to :func:`tree_seg.clustering.head_refine.em_chunk`.

    Parameters
    ----------
    guide : ndarray or Tensor, shape (C, H, W) or (H, W)
        Resampled image in [0, 1] covering the patch grid:
        ``H`` in ``(patch_y - 1) * patch_size + 1 .. patch_y * patch_size``,
        and likewise ``W``. Pixels of the last partial patch row or column
        that are missing are treated as invalid.
    guide_valid : ndarray or Tensor of bool, shape (H, W), or None
        True on pixels that hold data; None treats every pixel as valid.
    grid_shape : tuple of int
        Patch grid (patch_y, patch_x) that the image covers.
    patch_size : int
        Patch side in pixels.
    config : HeadRefineConfig
        ``guide_stride`` and ``guided_colour`` are read.
    device : torch.device or str, default="cpu"
        Where the cells are stored.

    Returns
    -------
    GuideCells
        Cells of ``guide_stride`` x ``guide_stride`` pixels.

    Raises
    ------
    InvalidInputError
        If the guide is missing or its shape does not cover the patch grid.
    ConfigurationError
        If ``guide_stride`` does not divide ``patch_size``.
    """
    if guide is None:
        raise InvalidInputError("blend='guided' needs the image as guide=(C, H, W); pass it or use blend='neighbour'")
    cells_per_patch(config, patch_size)
    guide_t = torch.as_tensor(guide, device=device).to(torch.float32)
    if guide_t.ndim == 2:
        guide_t = guide_t[None]
    height, width = grid_shape[0] * patch_size, grid_shape[1] * patch_size
    if (guide_t.ndim != 3 or not height - patch_size < guide_t.shape[1] <= height
            or not width - patch_size < guide_t.shape[2] <= width):
        raise InvalidInputError(
            f"invalid guide of shape {tuple(guide_t.shape)}: expected (C, H, W) covering the patch grid "
            f"{tuple(grid_shape)} of {patch_size} px patches, with H in ({height - patch_size}, {height}] "
            f"and W in ({width - patch_size}, {width}]"
        )
    if guide_valid is None:
        valid_t = torch.ones(guide_t.shape[1:], dtype=torch.bool, device=device)
    else:
        valid_t = torch.as_tensor(guide_valid, device=device).to(torch.bool)
        if tuple(valid_t.shape) != tuple(guide_t.shape[1:]):
            raise InvalidInputError(
                f"shape mismatch: guide_valid {tuple(valid_t.shape)} must equal the spatial shape of "
                f"guide {tuple(guide_t.shape)}"
            )

    pad_y, pad_x = height - guide_t.shape[1], width - guide_t.shape[2]
    if pad_y or pad_x:
        guide_t = F.pad(guide_t, (0, pad_x, 0, pad_y))
        valid_t = F.pad(valid_t, (0, pad_x, 0, pad_y), value=False)
    if not config.guided_colour:
        guide_t = guide_t.mean(dim=0, keepdim=True)
    masked = guide_valid is not None or pad_y > 0 or pad_x > 0
    cells, cell_valid = guide_to_cells(guide_t, valid_t if masked else None, guide_stride(config, patch_size))
    return GuideCells(cells=cells, valid=cell_valid)


def _box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    # Sum over a (2r+1) x (2r+1) window with zeros outside, as 2r+1 shifted
    # slices per axis. Unlike cumulative sums, each cell's sum depends only on
    # its window and is added in the same order everywhere, so a chunk and the
    # whole grid agree bit for bit, and float32 keeps full precision.
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius, radius))
    rows = padded[..., :width].clone()
    for shift in range(1, 2 * radius + 1):
        rows += padded[..., shift:shift + width]
    padded = F.pad(rows, (0, 0, radius, radius))
    out = padded[..., :height, :].clone()
    for shift in range(1, 2 * radius + 1):
        out += padded[..., shift:shift + height, :]
    return out


def guided_filter(
    src: torch.Tensor,
    guide: torch.Tensor,
    valid: torch.Tensor,
    *,
    radius: int,
    eps: float,
) -> torch.Tensor:
    """Filter maps with a guided filter restricted to valid cells.

    Every box mean is a masked mean, the sum over valid cells in the window
    divided by the number of valid cells, so invalid cells contribute nothing.
    A one-channel guide uses the grey-level filter; a guide of C > 1 channels
    uses the colour filter, which solves a C x C system per cell.

    Parameters
    ----------
    src : Tensor, shape (K, H, W)
        Maps to filter, here responsibilities in [0, 1].
    guide : Tensor, shape (C, H, W)
        Guide image in [0, 1].
    valid : Tensor of bool, shape (H, W)
        True on cells that hold data.
    radius : int
        Window radius in cells; the window is (2 * radius + 1) cells wide.
    eps : float
        Regularisation on the guide's local variance, in squared [0, 1]
        intensity units. Edges with a local variance well above ``eps`` are
        kept, flatter areas are smoothed.

    Returns
    -------
    Tensor of float32, shape (K, H, W)
        Filtered maps; 0 on invalid cells. Values may leave [0, 1] slightly.
    """
    # Centring the guide at 0.5 reduces the cancellation in the variance
    # E[I^2] - E[I]^2. The filter's output does not depend on this offset.
    src = src.to(torch.float32)
    guide = guide.to(torch.float32) - 0.5
    mask = valid.to(torch.float32)
    count = _box_sum(mask, radius).clamp(min=1.0)
    channels = guide.shape[0]

    def box_mean(x: torch.Tensor) -> torch.Tensor:
        return _box_sum(x * mask, radius) / count

    mean_guide = box_mean(guide)
    mean_src = box_mean(src)
    if channels == 1:
        var_guide = box_mean(guide * guide) - mean_guide * mean_guide
        cov = box_mean(guide * src) - mean_guide * mean_src
        a = cov / (var_guide + eps)
        b = mean_src - a * mean_guide
        out = box_mean(a) * guide + box_mean(b)
    else:
        # a has shape (K, C, H, W), and per cell a[:, :, y, x] solves
        # (Sigma + eps * I) a = cov(guide, src).
        outer = guide[:, None] * guide[None, :]
        sigma = box_mean(outer) - mean_guide[:, None] * mean_guide[None, :]
        sigma = sigma + eps * torch.eye(channels, dtype=torch.float32, device=guide.device)[:, :, None, None]
        cov = box_mean(guide[None] * src[:, None]) - mean_guide[None] * mean_src[:, None]
        solved = torch.linalg.solve(sigma.permute(2, 3, 0, 1), cov.permute(2, 3, 1, 0))
        a = solved.permute(3, 2, 0, 1)
        b = mean_src - (a * mean_guide[None]).sum(dim=1)
        out = (box_mean(a) * guide[None]).sum(dim=1) + box_mean(b)
    return out * mask


def guided_blend(
    resp: torch.Tensor,
    valid: torch.Tensor,
    guide_cells: torch.Tensor,
    guide_cell_valid: torch.Tensor,
    *,
    factor: int,
    alpha: float,
    radius: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend responsibilities at cell resolution with a guided filter.

    ``r' = (1 - alpha) * r_up + alpha * guided_filter(r_up)``, clipped at 0
    and renormalised, where ``r_up`` is the masked bilinear upsampling of the
    patch responsibilities. A cell is valid when its patch is valid and at
    least one of its guide pixels is.

    Parameters
    ----------
    resp : Tensor of float32, shape (K, patch_y, patch_x)
        Patch responsibilities.
    valid : Tensor of bool, shape (patch_y, patch_x)
        True on patches that hold data.
    guide_cells : Tensor of float32, shape (C, patch_y * factor, patch_x * factor)
        Guide image averaged to cells (:func:`guide_to_cells`), in [0, 1].
    guide_cell_valid : Tensor of bool, shape (patch_y * factor, patch_x * factor)
        True on cells with valid guide pixels.
    factor : int
        Cells per patch along each side.
    alpha, radius, eps : float, int, float
        Blend weight in [0, 1], filter radius in cells, filter regularisation.

    Returns
    -------
    cell_resp : Tensor of float32, shape (K, patch_y * factor, patch_x * factor)
        Blended responsibilities, summing to 1 on valid cells and 0 elsewhere.
    cell_valid : Tensor of bool, shape (patch_y * factor, patch_x * factor)
        True on valid cells.
    """
    cell_valid = valid.repeat_interleave(factor, 0).repeat_interleave(factor, 1) & guide_cell_valid
    upsampled = upsample_bilinear_masked(resp, valid, factor)
    if alpha == 0.0:
        return _renormalise(upsampled, cell_valid), cell_valid

    filtered = guided_filter(upsampled, guide_cells, cell_valid, radius=radius, eps=eps)
    blended = ((1.0 - alpha) * upsampled + alpha * filtered).clamp(min=0.0)

    # Where clipping removed everything (possible only for alpha near 1), the
    # unfiltered responsibilities are kept.
    empty = blended.sum(dim=0) <= _TINY
    blended = torch.where(empty, upsampled, blended)
    return _renormalise(blended, cell_valid), cell_valid


def cells_to_patches(
    cell_resp: torch.Tensor, cell_valid: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average cell responsibilities back to the patch grid for the M-step.

    Parameters
    ----------
    cell_resp : Tensor of float32, shape (K, patch_y * factor, patch_x * factor)
        Cell responsibilities, 0 on invalid cells.
    cell_valid : Tensor of bool, shape (patch_y * factor, patch_x * factor)
        True on valid cells.
    factor : int
        Cells per patch along each side.

    Returns
    -------
    patch_resp : Tensor of float32, shape (K, patch_y, patch_x)
        Mean over each patch's valid cells; 0 where it has none.
    patch_has_cells : Tensor of bool, shape (patch_y, patch_x)
        True on patches with at least one valid cell.
    """
    k, height, width = cell_resp.shape
    shape = (k, height // factor, factor, width // factor, factor)
    sums = cell_resp.reshape(shape).sum(dim=(2, 4))
    counts = cell_valid.to(cell_resp.dtype).reshape(shape[1:]).sum(dim=(1, 3))
    return sums / counts.clamp(min=1.0), counts > 0
