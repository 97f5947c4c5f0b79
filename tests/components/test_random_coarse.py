import math

import numpy as np
import pytest
import torch

from graphssl.component import BuildContext
from graphssl.components.mask.random_coarse import RandomCoarseMask, coarse_grid, random_coarse_mask

CTX = BuildContext(image_size=32, channels=3)


def make(**params):
    return RandomCoarseMask(RandomCoarseMask.Config(**params), CTX)


def test_simmim_default_count():
    # SimMIM at 192 px: 6x6 cells of 32 px, ceil(0.6 * 36) = 22 masked; patch 4 -> 8x8 tokens per cell
    cells_h, cells_w, scale = coarse_grid(192, 192, 32, 4)
    assert (cells_h, cells_w, scale) == (6, 6, 8)
    mask = random_coarse_mask(5, cells_h, cells_w, scale, 0.6)
    assert mask.shape == (5, 48 * 48)
    assert (mask.sum(1) == 22 * 64).all()


def test_component_count_and_alignment():
    torch.manual_seed(0)
    masker = make(ratio=0.6, mask_patch_size=8, patch_size=2)
    mask = masker(images=torch.zeros(2, 7, 3, 32, 32))["mask"]  # 4x4 cells, 16x16 tokens, 4x4 tokens per cell
    assert mask.shape == (2, 7, 256) and mask.dtype == torch.bool
    assert (mask.sum(-1) == math.ceil(0.6 * 16) * 16).all()
    cells = mask.reshape(14, 4, 4, 4, 4)  # [B, cell_row, token_row, cell_col, token_col]
    assert (cells == cells[:, :, :1, :, :1]).all()  # constant within each coarse cell
    assert masker.pop_metrics()["mask_ratio"] == pytest.approx(10 / 16)


def test_cells_are_uniform():
    torch.manual_seed(1)
    mask = random_coarse_mask(4000, 3, 3, 1, 0.3)  # ceil(2.7) = 3 of 9 cells
    assert (mask.sum(1) == 3).all()
    freq = mask.float().mean(0).numpy()
    np.testing.assert_allclose(freq, 1 / 3, atol=0.03)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="multiple of the encoder's patch_size 4"):
        make(mask_patch_size=6, patch_size=4)(images=torch.zeros(1, 3, 24, 24))
    with pytest.raises(ValueError, match="30x30 is not divisible by mask_patch_size 8"):
        make(mask_patch_size=8, patch_size=4)(images=torch.zeros(1, 3, 30, 30))
