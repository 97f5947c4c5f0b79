"""A VQ-VAE image tokenizer with an EMA codebook: one code per student patch (BEiT's tokenizer stage).

van den Oord et al. 2017 ("Neural Discrete Representation Learning", section
3.2 and appendix A.1): a conv encoder maps images to z_e [B,D,h,w]; each
position takes its nearest code e_k (L2); a conv decoder reconstructs the
image from the codes, with straight-through gradients.

- loss = MSE(x_hat, x) + beta * ||z_e - sg(e)||^2, beta = 0.25;
- the codebook is not learned by gradient but by EMA (decay 0.99), with
  n_k = codes' counts in the batch and s_k = sum of the z_e assigned to k:
      N_k <- decay N_k + (1 - decay) n_k
      m_k <- decay m_k + (1 - decay) s_k
      e_k  = m_k / N~_k,  N~_k = (N_k + eps) / (sum N + K eps) * sum N
  (Laplace smoothing of N as in Sonnet's VectorQuantizerEMA, eps 1e-5);
- dead-code restart: a code unused for ``restart_window`` updates is reset to
  a random encoding of the current batch (N_k = 1, m_k = e_k). Codes start
  "dead", so the first update initialises the codebook from data.

The encoder downsamples by ``patch_size`` (strided convs over its prime
factors: 4x4/2 for each 2, k x k/k for others), so a 32 px image at patch 4
gives 8x8 codes, one per student token. Batch statistics are gathered in
forward (training mode, gradients on) and applied in ``after_step``.

Used as a step component (images -> loss, ids) in a tokenizer stage, and by
``target.tokenizer`` through ``encode(images) -> long[*,N]``; ``decode(ids)``
maps codes back to images.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out, Progress
from graphssl.ops.distributed import all_reduce_sum, is_distributed
from graphssl.ports import IMAGES, LOSS, TOKEN_IDS
from graphssl.registry import register


def nearest_codes(z: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
    """long[M]: index of the nearest code (L2) for each row of z float[M,D]; embed float[K,D]."""
    z = z.float()
    dist_sq = z.pow(2).sum(1, keepdim=True) - 2 * z @ embed.t() + embed.pow(2).sum(1)[None]
    return dist_sq.argmin(1)


def ema_codebook_update(ema_count: torch.Tensor, ema_sum: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor,
                        decay: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA step of the codebook (see the module docstring): returns (N, m, e).

    ema_count float[K], ema_sum float[K,D]: the running N and m; counts
    float[K], sums float[K,D]: this batch's n and s.
    """
    new_count = decay * ema_count + (1 - decay) * counts
    new_sum = decay * ema_sum + (1 - decay) * sums
    total = new_count.sum()
    smoothed = (new_count + eps) / (total + new_count.numel() * eps) * total
    return new_count, new_sum, new_sum / smoothed[:, None]


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code usage distribution counts / sum(counts)."""
    p = counts / counts.sum().clamp(min=1)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-10))).sum())


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


class _ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(f: int, dim: int) -> nn.Module:
    return nn.Conv2d(dim, dim, 4, 2, 1) if f == 2 else nn.Conv2d(dim, dim, f, f)


def _up(f: int, dim: int) -> nn.Module:
    return nn.ConvTranspose2d(dim, dim, 4, 2, 1) if f == 2 else nn.ConvTranspose2d(dim, dim, f, f)


@register("tokenizer.vqvae")
class VQVAE(Component):
    """images float[*,C,H,W] -> loss (recon MSE + commitment), ids long[*,N], N = (H/p)*(W/p).

    Logs recon_loss, commit_loss, perplexity (of the batch's codes), dead_codes
    (unused for restart_window updates) and usage (1 - dead_codes / K).
    """

    class Config(ComponentConfig):
        patch_size: int = Field(16, ge=1, description="downsampling factor: the student's patch size (one code per patch)")
        num_codes: int = Field(8192, ge=2, description="vocabulary size K (BEiT's DALL-E: 8192)")
        code_dim: int = Field(64, ge=1, description="dimension D of a code")
        hidden_dim: int = Field(128, ge=1, description="channels of the conv encoder and decoder")
        num_res_blocks: int = Field(2, ge=0, description="residual blocks in the encoder and in the decoder")
        decay: float = Field(0.99, gt=0.0, lt=1.0, description="EMA decay of the codebook")
        commitment: float = Field(0.25, ge=0.0, description="weight beta of the commitment loss")
        eps: float = Field(1e-5, gt=0.0, description="Laplace smoothing of the EMA code counts")
        restart_window: int = Field(100, ge=1, description="updates a code may stay unused before it is restarted")

    inputs = {"images": In(IMAGES, "images to tokenize and reconstruct")}
    outputs = {
        "loss": Out(LOSS, "reconstruction MSE + commitment * ||z_e - sg(e)||^2"),
        "ids": Out(TOKEN_IDS, "code id per patch"),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        c, h = ctx.channels, config.hidden_dim
        factors = _prime_factors(config.patch_size)
        res = [_ResBlock(h) for _ in range(config.num_res_blocks)]
        downs = [m for f in factors for m in (_down(f, h), nn.ReLU())]
        self.encoder = nn.Sequential(nn.Conv2d(c, h, 3, padding=1), nn.ReLU(), *downs, *res, nn.ReLU(),
                                     nn.Conv2d(h, config.code_dim, 1))
        res = [_ResBlock(h) for _ in range(config.num_res_blocks)]
        ups = [m for f in reversed(factors) for m in (_up(f, h), nn.ReLU())]
        self.decoder = nn.Sequential(nn.Conv2d(config.code_dim, h, 3, padding=1), *res, nn.ReLU(), *ups,
                                     nn.Conv2d(h, c, 3, padding=1))
        k, d = config.num_codes, config.code_dim
        embed = torch.randn(k, d)
        self.register_buffer("embed", embed)
        self.register_buffer("ema_count", torch.ones(k))
        self.register_buffer("ema_sum", embed.clone())
        self.register_buffer("last_used", torch.full((k,), -config.restart_window, dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._pending: dict[str, torch.Tensor] = {}

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    # -- tokenizer API (duck-typed by target.tokenizer) -----------------------
    def _encode_flat(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        z = self.encoder(images.reshape(-1, *images.shape[-3:]))
        b, d, gh, gw = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        return flat, nearest_codes(flat.detach(), self.embed), (gh, gw)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float[*,C,H,W] -> long[*,N]: the nearest code per patch, row-major."""
        _, ids, (gh, gw) = self._encode_flat(images)
        return ids.view(*images.shape[:-3], gh * gw)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """long[*,N] -> float[*,C,H,W]; grid (h, w) defaults to a square."""
        n = ids.shape[-1]
        gh, gw = grid or (math.isqrt(n), math.isqrt(n))
        return self._decode(self.embed[ids.reshape(-1, gh, gw)], ids.shape[:-1])

    def _decode(self, codes: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        out = self.decoder(codes.permute(0, 3, 1, 2))
        return out.reshape(*lead, *out.shape[-3:])

    # -- training step ----------------------------------------------------------
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        lead = images.shape[:-3]
        flat, ids, (gh, gw) = self._encode_flat(images)
        quant = self.embed[ids]
        commit = F.mse_loss(flat.float(), quant)
        straight = flat + (quant - flat).detach()
        recon = self._decode(straight.view(-1, gh, gw, flat.shape[-1]), lead)
        recon_loss = F.mse_loss(recon.float(), images.float())
        counts = torch.bincount(ids, minlength=self.config.num_codes).float()
        if self.training and torch.is_grad_enabled():
            sums = torch.zeros_like(self.embed).index_add_(0, ids, flat.detach().float())
            pending = self._pending
            pending["counts"] = pending["counts"] + counts if "counts" in pending else counts
            pending["sums"] = pending["sums"] + sums if "sums" in pending else sums
            pending["candidates"] = flat.detach().float()
        dead = (self.updates - self.last_used >= self.config.restart_window).sum()
        self.log("recon_loss", recon_loss)
        self.log("commit_loss", commit)
        self.log("perplexity", perplexity(counts))
        self.log("dead_codes", dead)
        self.log("usage", 1 - dead / self.config.num_codes)
        return {"loss": recon_loss + self.config.commitment * commit, "ids": ids.view(*lead, gh * gw)}

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        """Apply the EMA codebook update with the step's statistics, then restart dead codes."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        counts = all_reduce_sum(pending["counts"])  # distributed: all-reduced
        sums = all_reduce_sum(pending["sums"])  # distributed: all-reduced
        cfg = self.config
        count, total, embed = ema_codebook_update(self.ema_count, self.ema_sum, counts, sums, cfg.decay, cfg.eps)
        self.ema_count.copy_(count)
        self.ema_sum.copy_(total)
        self.embed.copy_(embed)
        self.updates += 1
        self.last_used[counts > 0] = self.updates
        dead = (self.updates - self.last_used >= cfg.restart_window).nonzero().squeeze(1)
        if dead.numel():
            self._restart(dead, pending["candidates"])

    def _restart(self, dead: torch.Tensor, candidates: torch.Tensor) -> None:
        """Reset ``dead`` codes to random batch encodings (rank 0's, broadcast when distributed)."""
        m = candidates.shape[0]
        if m >= dead.numel():
            rows = torch.randperm(m, device=candidates.device)[: dead.numel()]
        else:
            rows = torch.randint(0, m, (dead.numel(),), device=candidates.device)
        new = candidates[rows].to(self.embed.dtype)
        self.embed[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        self.last_used[dead] = self.updates
        if is_distributed():
            for buf in (self.embed, self.ema_sum, self.ema_count, self.last_used):
                dist.broadcast(buf, 0)
