"""BEiT's block-wise mask, and the per-image budgets of BEiT/EVA, iBOT and DINOv2.

The generator (``block_mask``) is BEiT's ``MaskingGenerator`` (unilm
beit/masking_generator.py; EVA's and DINOv2's copies are identical, and iBOT's
loader inlines the same loop), drawing from a ``random.Random`` in the same
order as the official code, so with the same seed and budget it yields the
official masks exactly:

- blocks are placed one at a time while fewer than ``budget`` cells are masked;
- block area ~ U(min_num_patches, min(remaining, max_num_patches)) (Python's
  ``uniform``, so a bound below min_num_patches swaps the ends), aspect ratio
  log-uniform in [min_aspect, 1/min_aspect], h = round(sqrt(area * aspect)),
  w = round(sqrt(area / aspect)), kept only if h < H and w < W;
- a block is accepted only if the new cells it adds are > 0 and fit the
  remaining budget (and the per-block cap); up to 10 tries per block;
- when a block finds no placement, the generator stops.

So a mask never exceeds its budget, but often falls short of it when the
last few cells cannot be placed: the official behaviour, kept (same seed, same
masks as BEiT's code). Measured on a 14x14 grid, 75 cells, min 16 per block:
about 68% of masks have exactly 75 cells, the mean is 74.5, the worst about 65;
EVA's 105 of 256: 65% exact, mean 104.4. Small blocks fill up better (8x8
grid, 26 cells, min 4: 96% exact).

Budgets per image (the component), rounded where the official code rounds:
- ``num_masked: 75`` (BEiT; EVA 105 of 256): a whole count, as BEiT passes it;
- ``ratio: 0.3`` (iBOT with pred_ratio_var 0) or ``ratio: [0.1, 0.5]`` (a
  ratio drawn per image, U(lo, hi), iBOT): the budget is ``ratio * H * W``,
  **not rounded**, as iBOT's loader computes it (in that order) and uses it
  both as the loop bound and as the cap on the remaining cells. 0.3 of an 8x8
  grid is 19.2: a mask still holds at most 19 cells, but each block's area is
  drawn from U(min, 19.2 - masked) and the loop goes on at 19 masked cells,
  so masks differ from those of the rounded budget 19 (measured at 8x8 and
  14x14, U(0.1, 0.5) and 0.3: 5-9% fewer connected regions per mask, slightly
  larger blocks);
- ``prob: 0.5``: each image is masked with probability prob, else empty (iBOT);
- ``stratified: true`` (DINOv2's collate): only int(prob * n_images) images of
  the batch (all leading dims together) are masked; the i-th gets the whole
  count int(N * U(s_i, s_{i+1})) with s = linspace(lo, hi, n + 1) (DINOv2
  rounds down before calling its generator); the list is shuffled.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Union

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ports import IMAGES, TOKEN_MASK
from graphssl.registry import register

MAX_TRIES = 10  # placements tried per block (BEiT)


def block_mask(height: int, width: int, budget: float, rng: random.Random, min_num_patches: int = 16,
               max_num_patches: float | None = None, min_aspect: float = 0.3,
               record: list | None = None) -> np.ndarray:
    """bool[height, width], True = masked, at most ``budget`` cells, placed as BEiT's blocks.

    ``budget`` is a count (BEiT, DINOv2) or iBOT's unrounded ratio * H * W
    (at most its floor is masked). ``max_num_patches`` caps the cells one block
    may add (None: the budget).
    ``record``, when given, receives one (target_area, aspect, top, left, h, w,
    added) tuple per accepted block.
    """
    mask = np.zeros((height, width), dtype=bool)
    cap = budget if max_num_patches is None else max_num_patches
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < budget:
        max_mask_patches = min(budget - count, cap)
        delta = 0
        for _ in range(MAX_TRIES):
            target_area = rng.uniform(min_num_patches, max_mask_patches)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= max_mask_patches:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    if record is not None:
                        record.append((target_area, aspect, top, left, h, w, new))
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def mask_budgets(n_images: int, num_tokens: int, rng: random.Random, num_masked: int | None = None,
                 ratio: float | tuple[float, float] | None = None, prob: float = 1.0,
                 stratified: bool = False, grid: tuple[int, int] | None = None) -> list[float]:
    """Cells to mask in each of ``n_images`` images (0 = not masked); see the module docstring.

    Counts (``num_masked``, ``stratified``) are ints; ``ratio`` alone gives iBOT's
    float ratio * H * W with ``grid`` = (H, W) (default (num_tokens, 1)):
    float products depend on their order, and iBOT multiplies by H, then W.
    """
    height, width = grid or (num_tokens, 1)
    if stratified:
        lo, hi = ratio if isinstance(ratio, tuple) else (ratio, ratio)
        n_masked = int(n_images * prob)
        edges = torch.linspace(lo, hi, n_masked + 1).tolist()
        budgets = [int(num_tokens * rng.uniform(edges[i], edges[i + 1])) for i in range(n_masked)]
        budgets += [0] * (n_images - n_masked)
        rng.shuffle(budgets)
        return budgets
    budgets = []
    for _ in range(n_images):
        if prob < 1.0 and rng.random() >= prob:
            budgets.append(0)
        elif num_masked is not None:
            budgets.append(num_masked)
        elif isinstance(ratio, tuple):
            budgets.append(rng.uniform(*ratio) * height * width)
        else:
            budgets.append(ratio * height * width)
    return budgets


@register("mask.block")
class BlockMask(Component):
    """Block-wise token mask (BEiT, EVA, iBOT, DINOv2): images float[*,C,H,W] -> mask bool[*,N].

    N = (H / patch_size) * (W / patch_size), row-major. The budget per image is
    a whole count with num_masked (BEiT, EVA) or stratified (DINOv2 rounds
    down), and iBOT's unrounded ratio * H * W with ratio alone (the loop bound
    and block cap of iBOT's loader). Drawn on the CPU from a Python RNG seeded
    from torch's global generator (so torch.manual_seed makes it
    reproducible), then moved to the images' device.
    """

    class Config(ComponentConfig):
        patch_size: int = Field(16, ge=1, description="patch size of the encoder the mask is for")
        num_masked: Optional[int] = Field(None, ge=1, description="cells masked per image (BEiT 75 of 196, EVA 105 of 256)")
        ratio: Optional[Union[float, tuple[float, float]]] = Field(
            None, description="fraction of tokens masked: a number, or [lo, hi] drawn per image (iBOT, DINOv2 [0.1, 0.5]); "
                              "the budget ratio * H * W is kept unrounded (iBOT), except with stratified (DINOv2 rounds down)")
        prob: float = Field(1.0, ge=0.0, le=1.0,
                            description="probability that an image is masked at all (iBOT 0.5); with stratified, "
                                        "the fraction of the batch that is masked (DINOv2 0.5)")
        stratified: bool = Field(False, description="DINOv2: mask int(prob * n_images) images, ratios stratified over [lo, hi]")
        min_num_patches: int = Field(16, ge=1, description="smallest block area drawn (BEiT/EVA/iBOT at 14x14: 16, DINOv2: 4)")
        max_num_patches: Optional[Union[int, float]] = Field(
            None, description="largest area one block may add: a count (int), a fraction of the tokens (float in "
                              "(0, 1), DINOv2 0.5), or none (the remaining budget, BEiT)")
        min_aspect: float = Field(0.3, gt=0.0, le=1.0, description="aspect ratio log-uniform in [min_aspect, 1/min_aspect]")

        @field_validator("ratio")
        @classmethod
        def _ratio_in_range(cls, value):
            if value is None:
                return value
            values = value if isinstance(value, tuple) else (value,)
            if not all(0.0 < v < 1.0 for v in values):
                raise ValueError(f"ratio must lie in (0, 1), got {value}")
            if isinstance(value, tuple) and value[0] > value[1]:
                raise ValueError(f"ratio [lo, hi] needs lo <= hi, got {list(value)}")
            return value

        @field_validator("max_num_patches")
        @classmethod
        def _cap(cls, value):
            if isinstance(value, float) and not 0.0 < value < 1.0:
                raise ValueError(f"max_num_patches as a fraction must lie in (0, 1), got {value}; "
                                 "write a count as an integer")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"max_num_patches must be >= 1, got {value}")
            return value

        @model_validator(mode="after")
        def _one_budget(self):
            if (self.num_masked is None) == (self.ratio is None):
                raise ValueError("give exactly one of num_masked (a count) and ratio (a fraction or [lo, hi])")
            if self.stratified and self.ratio is None:
                raise ValueError("stratified needs ratio (a [lo, hi] range to stratify), not num_masked")
            return self

    inputs = {"images": In(IMAGES, "images whose patch grid is masked")}
    outputs = {"mask": Out(TOKEN_MASK, "bool[*,N], True = masked; at most the budget per image")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self._rng = random.Random()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        *lead, _, h, w = images.shape
        gh, gw = h // cfg.patch_size, w // cfg.patch_size
        n = gh * gw
        if cfg.num_masked is not None and cfg.num_masked >= n:
            raise ValueError(f"num_masked {cfg.num_masked} must be below the {n} tokens of the {gh}x{gw} grid")
        cap = cfg.max_num_patches
        if isinstance(cap, float):
            cap = cap * n
        self._rng.seed(int(torch.randint(0, 2**62, (1,))))
        n_images = math.prod(lead)
        budgets = mask_budgets(n_images, n, self._rng, cfg.num_masked, cfg.ratio, cfg.prob, cfg.stratified, (gh, gw))
        masks = np.stack([block_mask(gh, gw, b, self._rng, cfg.min_num_patches, cap, cfg.min_aspect)
                          for b in budgets]) if n_images else np.zeros((0, gh, gw), dtype=bool)
        mask = torch.from_numpy(masks).reshape(*lead, n).to(images.device, non_blocking=True)
        self.log("mask_ratio", mask.float().mean())
        self.log("images_masked", mask.reshape(-1, n).any(dim=1).float().mean())
        return {"mask": mask}
