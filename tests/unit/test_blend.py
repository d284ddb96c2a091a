"""Tests of the neighbour and guided blends of responsibilities."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tree_seg.clustering.blend import (
    _box_sum,
    blend_halo,
    cells_to_patches,
    guide_to_cells,
    guided_blend,
    guided_filter,
    neighbour_blend,
    neighbour_weights,
    prepare_guide,
    upsample_bilinear_masked,
)
from tree_seg.config import HeadRefineConfig
from tree_seg.exceptions import ConfigurationError, InvalidInputError


def _one_hot(labels, k):
    return F.one_hot(torch.as_tensor(labels), k).permute(2, 0, 1).to(torch.float32)


def test_neighbour_blend_hand_computed():
    labels = np.zeros((3, 3), dtype=np.int64)
    labels[1, 1] = 1
    valid = torch.ones(3, 3, dtype=torch.bool)

    out = neighbour_blend(_one_hot(labels, 2), valid, alpha=0.5)

    # Centre: its 8 neighbours are all cluster 0.
    np.testing.assert_allclose(out[:, 1, 1], [0.5, 0.5], atol=1e-7)
    # Corner: neighbours (0, 1), (1, 0), (1, 1) average to [2/3, 1/3].
    np.testing.assert_allclose(out[:, 0, 0], [5 / 6, 1 / 6], atol=1e-7)
    # Edge centre: five neighbours, one of them cluster 1.
    np.testing.assert_allclose(out[:, 0, 1], [0.9, 0.1], atol=1e-7)


def test_neighbour_blend_ignores_invalid():
    resp = _one_hot(np.array([[0, 1, 0]]), 2)
    valid = torch.tensor([[True, False, True]])

    out = neighbour_blend(resp, valid, alpha=0.5)

    # The invalid middle patch gives nothing and gets zeros, so the two
    # valid patches have no valid neighbour and keep their values.
    np.testing.assert_array_equal(out[:, 0, 1], [0.0, 0.0])
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 0.0])
    np.testing.assert_allclose(out[:, 0, 2], [1.0, 0.0])


def test_neighbour_blend_alpha_zero_identity(rng):
    resp = torch.softmax(torch.as_tensor(rng.normal(size=(4, 6, 7)), dtype=torch.float32), dim=0)
    valid = torch.ones(6, 7, dtype=torch.bool)

    out = neighbour_blend(resp, valid, alpha=0.0)

    torch.testing.assert_close(out, resp)


def test_neighbour_blend_keeps_distributions(rng):
    resp = torch.softmax(torch.as_tensor(rng.normal(size=(5, 9, 11)), dtype=torch.float32), dim=0)
    valid = torch.as_tensor(rng.random((9, 11)) > 0.3)
    valid[4, :] = False
    valid[:, 6] = False

    out = neighbour_blend(resp, valid, alpha=0.7)

    totals = out.sum(dim=0)
    torch.testing.assert_close(totals[valid], torch.ones(int(valid.sum())), atol=1e-6, rtol=0)
    assert float(out[:, ~valid].abs().max()) == 0.0
    assert float(out.min()) >= -1e-7


def test_window_sums_of_convolution_and_slices_agree(rng):
    from tree_seg.clustering.blend import _window_sum_3x3, _window_sum_slices

    x = torch.as_tensor(rng.random((13, 17, 6)), dtype=torch.float32)

    by_convolution = _window_sum_3x3(x)
    by_slices = _window_sum_slices(x)

    expected = F.pad(x.permute(2, 0, 1), (1, 1, 1, 1)).unfold(1, 3, 1).unfold(2, 3, 1).sum(dim=(-1, -2))
    torch.testing.assert_close(by_convolution, expected.permute(1, 2, 0), atol=2e-6, rtol=0)
    torch.testing.assert_close(by_slices, expected.permute(1, 2, 0), atol=2e-6, rtol=0)
    assert float(by_slices[0, 0, 0]) == pytest.approx(float(x[:2, :2, 0].sum()), abs=1e-6)


def test_neighbour_weights_corner_edge_and_isolated_patch():
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 3] = False
    valid[0, 3] = False

    own, window = neighbour_weights(valid, 0.4)

    # Corner (0, 0) has 3 valid neighbours; window sums include the patch.
    assert float(window[0, 0, 0]) == pytest.approx(0.4 / 3)
    assert float(own[0, 0, 0]) == pytest.approx(0.6 - 0.4 / 3)
    # (1, 3) has neighbours (0, 2), (1, 2), (2, 2) valid and two invalid ones.
    assert float(window[1, 3, 0]) == pytest.approx(0.4 / 3)
    assert float(own[2, 3, 0]) == 0.0
    assert float(window[2, 3, 0]) == 0.0
    # A patch whose neighbours are all invalid keeps its responsibilities.
    lonely = torch.zeros(3, 3, dtype=torch.bool)
    lonely[1, 1] = True
    own, window = neighbour_weights(lonely, 0.4)
    assert float(own[1, 1, 0]) == 1.0
    assert float(window[1, 1, 0]) == 0.0


def test_upsample_bilinear_masked_values():
    resp = torch.tensor([[[0.0, 1.0]]])
    valid = torch.ones(1, 2, dtype=torch.bool)

    out = upsample_bilinear_masked(resp, valid, 4)

    # Cell centres sit at patch coordinates (c + 0.5) / 4 - 0.5.
    expected = [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0]
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-7)
    np.testing.assert_allclose(out[0, 3], expected, atol=1e-7)


def test_upsample_bilinear_masked_matches_torch_inside(rng):
    resp = torch.as_tensor(rng.random((3, 5, 6)), dtype=torch.float32)
    valid = torch.ones(5, 6, dtype=torch.bool)

    out = upsample_bilinear_masked(resp, valid, 4)

    reference = F.interpolate(resp[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


def test_upsample_bilinear_masked_no_leak_from_invalid():
    resp = torch.tensor([[[0.2, 99.0, 0.2]]])
    valid = torch.tensor([[True, False, True]])

    out = upsample_bilinear_masked(resp, valid, 2)

    # Cells of the invalid patch are filled from its valid neighbours (the
    # caller masks them); its value 99 reaches no cell.
    np.testing.assert_allclose(out[0, 0], 0.2, atol=1e-7)


def test_box_sum_matches_convolution(rng):
    x = torch.as_tensor(rng.random((2, 13, 17)), dtype=torch.float32)

    out = _box_sum(x, 3)

    reference = F.conv2d(F.pad(x[:, None], (3, 3, 3, 3)), torch.ones(1, 1, 7, 7))[:, 0]
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)


def test_guided_filter_flat_guide_is_box_mean(rng):
    src = torch.as_tensor(rng.random((2, 20, 20)), dtype=torch.float32)
    guide = torch.full((1, 20, 20), 0.3)
    valid = torch.ones(20, 20, dtype=torch.bool)

    out = guided_filter(src, guide, valid, radius=2, eps=1e-3)

    # With no guide variance a = 0 and b is the box mean, so the output is
    # the box mean of the box mean.
    count = _box_sum(torch.ones(20, 20), 2)
    box_mean = _box_sum(src, 2) / count
    torch.testing.assert_close(out, _box_sum(box_mean, 2) / count, atol=1e-5, rtol=0)


def test_guided_filter_keeps_guide_edge(rng):
    step = torch.zeros(32, 32)
    step[:, 16:] = 1.0
    src = (step + 0.05 * torch.as_tensor(rng.normal(size=(32, 32)), dtype=torch.float32))[None]
    valid = torch.ones(32, 32, dtype=torch.bool)

    out = guided_filter(src, step[None], valid, radius=4, eps=1e-3)

    box_mean = _box_sum(src, 4) / _box_sum(torch.ones(32, 32), 4)
    # Next to the edge the box mean blurs to about 0.5; the guided filter
    # stays with the step.
    assert float((box_mean[0, :, 15] - 0.0).abs().min()) > 0.3
    assert float((out[0, :, 15] - 0.0).abs().max()) < 0.1
    assert float((out[0, :, 16] - 1.0).abs().max()) < 0.1


def test_guided_filter_colour_equal_bands_is_grey(rng):
    src = torch.as_tensor(rng.random((2, 16, 16)), dtype=torch.float32)
    grey = torch.as_tensor(rng.random((1, 16, 16)), dtype=torch.float32)
    valid = torch.ones(16, 16, dtype=torch.bool)

    colour_out = guided_filter(src, grey.expand(3, -1, -1), valid, radius=2, eps=3e-3)

    # Three equal bands triple the variance term: Sigma = v * 11^T + eps * I
    # gives a^T I = cov * I / (v + eps / 3).
    grey_out = guided_filter(src, grey, valid, radius=2, eps=1e-3)
    torch.testing.assert_close(colour_out, grey_out, atol=1e-4, rtol=0)


def test_guided_filter_invalid_cells_give_nothing(rng):
    src = torch.as_tensor(rng.random((1, 12, 12)), dtype=torch.float32)
    guide = torch.as_tensor(rng.random((1, 12, 12)), dtype=torch.float32)
    valid = torch.ones(12, 12, dtype=torch.bool)
    valid[:, 6:] = False
    polluted = src.clone()
    polluted[:, :, 6:] = 50.0

    out = guided_filter(src, guide, valid, radius=2, eps=1e-3)
    out_polluted = guided_filter(polluted, guide, valid, radius=2, eps=1e-3)

    torch.testing.assert_close(out, out_polluted)
    assert float(out[:, :, 6:].abs().max()) == 0.0


def test_guided_blend_sums_to_one(rng):
    resp = torch.softmax(torch.as_tensor(rng.normal(size=(3, 4, 5)), dtype=torch.float32), dim=0)
    valid = torch.ones(4, 5, dtype=torch.bool)
    valid[0, 0] = False
    guide = torch.as_tensor(rng.random((1, 16, 20)), dtype=torch.float32)

    out, cell_valid = guided_blend(resp, valid, guide, torch.ones(16, 20, dtype=torch.bool),
                                   factor=4, alpha=0.7, radius=2, eps=1e-3)

    assert out.shape == (3, 16, 20)
    assert not bool(cell_valid[:4, :4].any())
    torch.testing.assert_close(out.sum(dim=0)[cell_valid], torch.ones(int(cell_valid.sum())))
    assert float(out[:, ~cell_valid].abs().max()) == 0.0
    assert float(out.min()) >= 0.0


def test_cells_to_patches_mean_of_valid_cells():
    cell_resp = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    cell_valid = torch.ones(4, 4, dtype=torch.bool)
    cell_valid[0, 0] = False
    cell_resp[0, 0, 0] = 0.0
    cell_valid[2:, 2:] = False
    cell_resp[0, 2:, 2:] = 0.0

    patch_resp, has_cells = cells_to_patches(cell_resp, cell_valid, 2)

    np.testing.assert_allclose(patch_resp[0], [[(1 + 4 + 5) / 3, (2 + 3 + 6 + 7) / 4],
                                               [(8 + 9 + 12 + 13) / 4, 0.0]])
    np.testing.assert_array_equal(has_cells, [[True, True], [True, False]])


def test_guide_to_cells_masked_mean():
    guide = torch.tensor([[[1.0, 3.0], [5.0, 100.0]]])
    guide_valid = torch.tensor([[True, True], [True, False]])

    cells, cell_valid = guide_to_cells(guide, guide_valid, 2)

    np.testing.assert_allclose(cells[0], [[3.0]])
    assert bool(cell_valid[0, 0])


def test_prepare_guide_pads_partial_patch():
    config = HeadRefineConfig(blend="guided", guide_stride=4)
    guide = np.full((3, 20, 32), 0.5, dtype=np.float32)

    prepared = prepare_guide(guide, None, grid_shape=(2, 2), patch_size=16, config=config)

    assert prepared.cells.shape == (1, 8, 8)
    # Rows 20..31 are missing, so cell rows 5..7 are invalid.
    np.testing.assert_array_equal(prepared.valid[:, 0], [True] * 5 + [False] * 3)


def test_prepare_guide_rejects_wrong_shape():
    config = HeadRefineConfig(blend="guided")

    with pytest.raises(InvalidInputError, match=r"guide of shape \(3, 40, 32\)"):
        prepare_guide(np.zeros((3, 40, 32)), None, grid_shape=(2, 2), patch_size=16, config=config)


def test_blend_halo_values():
    assert blend_halo(HeadRefineConfig(blend="neighbour"), 16) == 1
    guided = HeadRefineConfig(blend="guided", guided_radius=8, guide_stride=4)
    assert blend_halo(guided, 16) == 1 + math.ceil(16 / 4)
    assert blend_halo(HeadRefineConfig(blend="guided", guided_radius=3, guide_stride=2), 14) == 1 + 1


def test_blend_halo_rejects_stride_not_dividing():
    config = HeadRefineConfig(blend="guided", guide_stride=4)

    with pytest.raises(ConfigurationError, match=r"guide_stride=4.*patch size 14.*\[1, 2, 7, 14\]"):
        blend_halo(config, 14)
