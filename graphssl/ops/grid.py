"""Grid alignment between a target provider and the student encoder."""
from __future__ import annotations

import torch


def grid_text(images: torch.Tensor, patch_size: int | None, n: int) -> str:
    """'14x14 (196 tokens)' when the patch size is known, else '196 tokens'."""
    if patch_size:
        return f"{images.shape[-2] // patch_size}x{images.shape[-1] // patch_size} ({n} tokens)"
    return f"{n} tokens"


def check_grid(n_target: int, target_grid: str, like: torch.Tensor, patch_size: int) -> None:
    """ValueError unless a target with ``n_target`` tokens has one per student patch.

    ``like`` is the student's view float[*,C,H,W]; its grid is (H / patch_size) x (W / patch_size).
    """
    gh, gw = like.shape[-2] // patch_size, like.shape[-1] // patch_size
    if n_target != gh * gw:
        raise ValueError(f"{target_grid} does not match the student grid {gh}x{gw} ({gh * gw} tokens: "
                         f"{like.shape[-2]}x{like.shape[-1]} px / patch {patch_size})")
