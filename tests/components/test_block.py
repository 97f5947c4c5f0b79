import math
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from graphssl.component import BuildContext
from graphssl.components.mask.block import BlockMask, block_mask, mask_budgets

CTX = BuildContext(image_size=32, channels=3)


class ReferenceMaskingGenerator:
    """BEiT's MaskingGenerator (unilm beit/masking_generator.py), verbatim apart from np.int -> int and the
    count passed per call (DINOv2's signature)."""

    def __init__(self, input_size, min_num_patches=4, max_num_patches=None, min_aspect=0.3, max_aspect=None):
        self.height, self.width = input_size
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for attempt in range(10):
            target_area = random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = random.randint(0, self.height - h)
                left = random.randint(0, self.width - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches):
        mask = np.zeros(shape=(self.height, self.width), dtype=int)
        mask_count = 0
        cap = num_masking_patches if self.max_num_patches is None else self.max_num_patches
        while mask_count < num_masking_patches:
            max_mask_patches = num_masking_patches - mask_count
            max_mask_patches = min(max_mask_patches, cap)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            else:
                mask_count += delta
        return mask


@pytest.mark.parametrize("grid,budget,min_p,cap", [((14, 14), 75, 16, None), ((16, 16), 105, 16, None),
                                                    ((14, 14), 60, 4, 98.0), ((8, 8), 20, 4, 32.0)])
def test_same_masks_as_official_code_for_the_same_seed(grid, budget, min_p, cap):
    ref = ReferenceMaskingGenerator(grid, min_num_patches=min_p, max_num_patches=cap)
    for seed in range(100):
        random.seed(seed)
        expected = ref(budget).astype(bool)
        got = block_mask(*grid, budget, random.Random(seed), min_p, cap)
        np.testing.assert_array_equal(got, expected)


def test_beit_count_never_exceeds_budget_and_is_mostly_exact():
    # The official generator (parity above) stops when the last cells find no block: measured over 5000
    # masks, 67.7% have exactly 75 cells, the mean is 74.49, the minimum 65.
    rng = random.Random(0)
    counts = np.array([block_mask(14, 14, 75, rng).sum() for _ in range(3000)])
    assert counts.max() <= 75
    assert 0.62 <= (counts == 75).mean() <= 0.74
    assert 74.3 <= counts.mean() < 75
    assert (counts >= 70).mean() >= 0.98


def test_blocks_respect_area_aspect_and_budget():
    rng = random.Random(1)
    aspects, n_blocks = [], 0
    for _ in range(300):
        record = []
        mask = block_mask(14, 14, 75, rng, min_num_patches=16, record=record)
        remaining = 75
        for area, aspect, top, left, h, w, added in record:
            lo, hi = sorted((16, remaining))
            assert lo <= area <= hi  # U(min_num_patches, remaining), ends swapped when remaining < 16
            assert h == round(math.sqrt(area * aspect)) and w == round(math.sqrt(area / aspect))
            assert h < 14 and w < 14 and top + h <= 14 and left + w <= 14
            assert 0 < added <= remaining
            remaining -= added
            aspects.append(aspect)
        assert mask.sum() == 75 - remaining == sum(r[-1] for r in record)
        n_blocks += len(record)
    aspects = np.log(aspects)
    assert aspects.min() >= math.log(0.3) - 1e-12 and aspects.max() <= math.log(1 / 0.3) + 1e-12
    assert abs(aspects.mean()) < 0.15  # log-uniform around 1
    assert n_blocks > 300


def test_block_cap_limits_cells_added_per_block():
    rng = random.Random(2)
    for _ in range(200):
        record = []
        block_mask(14, 14, 100, rng, min_num_patches=4, max_num_patches=0.5 * 196 / 4, record=record)
        assert all(added <= 0.5 * 196 / 4 for *_, added in record)


def make(**params):
    return BlockMask(BlockMask.Config(**params), CTX)


def test_component_fixed_count_shapes_and_log():
    torch.manual_seed(0)
    masker = make(patch_size=4, num_masked=75)
    mask = masker(images=torch.zeros(2, 32, 3, 56, 56))["mask"]
    assert mask.shape == (2, 32, 196) and mask.dtype == torch.bool
    counts = mask.sum(-1)
    assert counts.max() <= 75 and counts.float().mean() > 74
    assert masker.pop_metrics()["mask_ratio"] == pytest.approx(mask.float().mean().item())


def test_component_fixed_ratio_budget_and_reproducible():
    masker = make(patch_size=4, ratio=0.4, min_num_patches=4)
    torch.manual_seed(3)
    a = masker(images=torch.zeros(16, 3, 32, 32))["mask"]
    torch.manual_seed(3)
    b = masker(images=torch.zeros(16, 3, 32, 32))["mask"]
    assert torch.equal(a, b)
    assert a.sum(-1).max() <= int(0.4 * 64)


def test_ibot_prob_and_ratio_range():
    rng = random.Random(0)
    budgets = np.array(mask_budgets(4000, 196, rng, ratio=(0.1, 0.5), prob=0.5))
    masked = budgets[budgets > 0]
    assert abs(len(masked) / 4000 - 0.5) < 0.03
    assert masked.min() >= int(0.1 * 196) and masked.max() <= int(0.5 * 196)
    assert abs(masked.mean() / 196 - 0.3) < 0.01
    torch.manual_seed(0)
    mask = make(patch_size=4, ratio=[0.1, 0.5], prob=0.5)(images=torch.zeros(2, 200, 1, 56, 56))["mask"]
    any_masked = mask.any(-1).float().mean().item()
    assert mask.shape == (2, 200, 196) and abs(any_masked - 0.5) < 0.08
    assert mask.sum(-1).max() <= int(0.5 * 196)


def test_dinov2_stratified_ratios_cover_slices():
    rng = random.Random(0)
    n = 10**6  # many tokens: int() flooring is negligible
    budgets = mask_budgets(40, n, rng, ratio=(0.1, 0.5), prob=0.5, stratified=True)
    masked = sorted(b for b in budgets if b > 0)
    assert len(masked) == 20 and budgets.count(0) == 20
    edges = np.linspace(0.1, 0.5, 21)
    for i, b in enumerate(masked):  # exactly one ratio per slice
        assert edges[i] - 1e-6 <= b / n <= edges[i + 1]
    assert budgets != sorted(budgets) and budgets[:20] != masked  # shuffled


def test_dinov2_component():
    torch.manual_seed(0)
    masker = make(patch_size=4, ratio=[0.1, 0.5], prob=0.5, stratified=True, min_num_patches=4, max_num_patches=0.5)
    mask = masker(images=torch.zeros(2, 20, 3, 56, 56))["mask"]
    assert mask.shape == (2, 20, 196)
    assert int(mask.reshape(40, -1).any(-1).sum()) == 20
    assert mask.sum(-1).max() <= int(0.5 * 196)


@pytest.mark.parametrize("params", [
    dict(num_masked=75, ratio=0.4), dict(), dict(ratio=1.0), dict(ratio=0.0), dict(ratio=[0.5, 0.1]),
    dict(ratio=[0.1, 1.2]), dict(num_masked=75, stratified=True), dict(ratio=0.4, max_num_patches=1.5),
    dict(ratio=0.4, max_num_patches=0), dict(ratio=0.4, prob=1.5), dict(ratio=0.4, min_aspect=0.0),
    dict(ratio=0.4, extra_key=1),
])
def test_config_rejects(params):
    with pytest.raises(ValidationError):
        BlockMask.Config(**params)


def test_config_accepts_the_papers_settings():
    BlockMask.Config(num_masked=75)
    BlockMask.Config(ratio=[0.1, 0.5], prob=0.5)
    cfg = BlockMask.Config(ratio=[0.1, 0.5], prob=0.5, stratified=True, min_num_patches=4, max_num_patches=0.5)
    assert isinstance(cfg.max_num_patches, float)
    assert isinstance(BlockMask.Config(ratio=0.4, max_num_patches=50).max_num_patches, int)


def test_count_larger_than_grid_is_an_error():
    with pytest.raises(ValueError, match="num_masked 75"):
        make(patch_size=4, num_masked=75)(images=torch.zeros(1, 3, 32, 32))


def ibot_reference_mask(H, W, pred_ratio, log_aspect_ratio=(math.log(0.3), math.log(1 / 0.3))):
    """iBOT's block mask for one crop (ibot loader.py ImageFolderMask.__getitem__, pred_shape 'block'), written
    from its loop: the budget ``high = pred_ratio * H * W`` stays a float, it bounds the loop and caps each
    block; the smallest area is (min(H, W) // 3) ** 2; draws come from the ``random`` module."""
    high = pred_ratio * H * W
    mask = np.zeros((H, W), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _ in range(10):
            low = (min(H, W) // 3) ** 2
            target_area = random.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(random.uniform(*log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < W and h < H:
                top = random.randint(0, H - h)
                left = random.randint(0, W - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i, j]:
                                mask[i, j] = True
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return mask


@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (6, 10)])
def test_unrounded_budget_gives_ibots_masks_for_the_same_stream(grid):
    H, W = grid
    low = (min(H, W) // 3) ** 2
    differs_from_rounded = 0
    for seed in range(60):
        ratio = random.Random(1000 + seed).uniform(0.1, 0.5)
        random.seed(seed)
        expected = ibot_reference_mask(H, W, ratio)
        after_reference = random.random()
        rng = random.Random(seed)
        [budget] = mask_budgets(1, H * W, random.Random(), ratio=ratio, grid=grid)
        got = block_mask(H, W, budget, rng, min_num_patches=low)
        np.testing.assert_array_equal(got, expected)
        assert rng.random() == after_reference  # the same draws, not only the same mask
        differs_from_rounded += not np.array_equal(got, block_mask(H, W, int(budget), random.Random(seed), low))
    assert differs_from_rounded > 0  # the rounding is visible: the test can tell the two apart


@pytest.mark.parametrize("params", [dict(ratio=0.3), dict(ratio=[0.1, 0.5], prob=0.5), dict(ratio=[0.2, 0.4])])
def test_component_in_ibot_ratio_modes_masks_as_ibot(params):
    # 8x8 grid (32 px, patch 4): iBOT's smallest block (8 // 3) ** 2 = 4. The per-image ratios are drawn as the
    # module docstring says (all images first); each mask then follows iBOT's loop on the same stream.
    masker = make(patch_size=4, min_num_patches=4, **params)
    ratio, prob = params["ratio"], params.get("prob", 1.0)
    for seed in range(8):
        torch.manual_seed(seed)
        got = masker(images=torch.zeros(2, 5, 3, 32, 32))["mask"]
        torch.manual_seed(seed)
        random.seed(int(torch.randint(0, 2**62, (1,))))
        ratios = []
        for _ in range(10):
            if prob < 1.0 and random.random() >= prob:
                ratios.append(0.0)
            else:
                ratios.append(random.uniform(*ratio) if isinstance(ratio, list) else ratio)
        expected = np.stack([ibot_reference_mask(8, 8, r) for r in ratios]).reshape(2, 5, 64)
        np.testing.assert_array_equal(got.numpy(), expected)


def test_counts_stay_whole_numbers_outside_ibots_modes():
    rng = random.Random(0)
    assert all(type(b) is int for b in mask_budgets(8, 196, rng, num_masked=75))
    stratified = mask_budgets(8, 196, rng, ratio=(0.1, 0.5), prob=0.5, stratified=True, grid=(14, 14))
    assert all(type(b) is int for b in stratified)
    assert mask_budgets(2, 64, rng, ratio=0.3, grid=(8, 8)) == [0.3 * 8 * 8] * 2  # iBOT: 19.2, not 19
