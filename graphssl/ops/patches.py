"""Patchify and position tables: pure functions with their own tests."""
from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """float[*,C,H,W] -> float[*,N,p*p*C], patches in row-major grid order.

    Within a patch the layout is (p_row, p_col, C), as MAE's ``patchify``.
    """
    *lead, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(-1, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(*lead, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: float[*,N,p*p*C] -> float[*,C,H,W]."""
    *lead, n, _ = patches.shape
    gh, gw = grid
    p, c = patch_size, channels
    x = patches.reshape(-1, gh, gw, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(*lead, c, gh * p, gw * p)


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """float[M] -> float[M, embed_dim]: [sin(pos * w_k), cos(pos * w_k)], w_k = 1 / 10000^(2k/D)."""
    if embed_dim % 2:
        raise ValueError("sin-cos embedding needs an even dimension")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.double().reshape(-1)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table: float[(1 if cls) + gh*gw, D].

    The first D/2 channels encode the column (x) coordinate, the second D/2 the
    row (y), rows in row-major grid order; the [CLS] row is zeros.
    """
    if embed_dim % 4:
        raise ValueError("2-D sin-cos embedding needs a dimension divisible by 4")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat([sincos_1d(embed_dim // 2, xs), sincos_1d(embed_dim // 2, ys)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=table.dtype), table], dim=0)
    return table.float()
