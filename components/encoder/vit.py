"""A timm Vision Transformer with the paths masked image modeling needs.

- ``mask_mode: replace`` (BEiT, SimMIM, EVA, iBOT, DINOv2): a learnable mask
  token replaces masked patch embeddings before [CLS] and position
  information are added; every token goes through the blocks.
- ``mask_mode: drop`` (MAE): position information is added, masked tokens are
  dropped, and only [CLS] plus the visible tokens go through the blocks.
Images may carry leading view dims ``[V,B,...]``; they are folded into the
batch for one encoder call and unfolded in the outputs.

``checkpoint: PATH`` starts from released or exported weights in any layout
:mod:`graphssl.weights` reads (timm folders and files, DINO/iBOT, DINOv2, MAE,
CLIP); the summary of what was loaded is printed and the counts are logged.
"""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

import timm
import torch
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.patches import sincos_2d
from graphssl.ports import IMAGES, TOKEN_MASK, TOKENS, VECTOR
from graphssl.registry import register
from graphssl.weights import LoadReport, WeightsError, announce, load_weights


def mae_init(vit: nn.Module) -> None:
    """MAE's ``initialize_weights``: xavier-uniform linears (zero bias), LayerNorm 1/0, the patch
    embedding as a linear layer (xavier on its flattened weight), [CLS] normal(0.02)."""
    for m in vit.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    weight = vit.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    if getattr(vit, "cls_token", None) is not None:
        nn.init.normal_(vit.cls_token, std=0.02)


def timm_arguments(config: "ViTEncoder.Config", image_size: int, channels: int) -> tuple[str, dict[str, Any]]:
    """The timm architecture and ``create_model`` arguments of an encoder.vit config (its backbone
    without a classifier head; drop path, a training-only rate, is left to the caller)."""
    kwargs: dict[str, Any] = dict(img_size=config.img_size or image_size, patch_size=config.patch_size, num_classes=0,
                                  in_chans=channels, dynamic_img_size=True)
    for key, value in (("depth", config.depth), ("embed_dim", config.embed_dim), ("num_heads", config.num_heads),
                       ("mlp_ratio", config.mlp_ratio), ("init_values", config.layer_scale)):
        if value is not None:
            kwargs[key] = value
    return config.arch, kwargs


@register("encoder.vit")
class ViTEncoder(Component):
    """Any timm ViT by name, with size overrides; outputs final-normed [CLS] and patch tokens."""

    class Config(ComponentConfig):
        arch: str = Field("vit_tiny_patch16_224", description="timm model name")
        img_size: Optional[int] = Field(None, ge=8, description="input side; default: data.image_size")
        patch_size: int = Field(16, ge=1)
        depth: Optional[int] = Field(None, ge=1, description="number of blocks (default: the arch's)")
        embed_dim: Optional[int] = Field(None, ge=8, description="width (default: the arch's)")
        num_heads: Optional[int] = Field(None, ge=1)
        mlp_ratio: Optional[float] = Field(None, gt=0)
        drop_path: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth rate of the last block")
        layer_scale: Optional[float] = Field(None, gt=0, description="LayerScale init (BEiT 0.1, DINOv2 1e-5)")
        pos_embed: Literal["learned", "sincos"] = Field("learned", description="sincos: MAE's fixed 2-D table")
        mask_mode: Literal["replace", "drop"] = "replace"
        pretrained: bool = Field(False, description="load timm's pretrained weights (needs them reachable)")
        checkpoint: Optional[str] = Field(None, description="weights to start from: a timm model folder (graphssl export, "
                                                            "save_for_hf), a .safetensors/.pth file in timm's layout, or an "
                                                            "official DINO/iBOT/DINOv2/MAE/CLIP checkpoint; PATH#student "
                                                            "picks a checkpoint's student, PATH#NODE a modules.pt node")
        init: Literal["timm", "mae"] = Field("timm", description="weight init: timm's, or MAE's (xavier-uniform "
                                                               "linears and patch embedding, [CLS] normal 0.02)")
        grad_checkpointing: bool = Field(False, description="recompute each block in backward (activation "
                                                            "checkpointing): less memory, about a third more compute")

    inputs = {
        "images": In(IMAGES, "images, possibly with leading view dims"),
        "mask": In(TOKEN_MASK, "tokens to mask (True = masked); without it nothing is masked", optional=True),
    }
    outputs = {
        "cls": Out(VECTOR, "final-normed [CLS] token"),
        "patches": Out(TOKENS, "final-normed patch tokens; with mask_mode drop, only the visible ones, in grid order",
                       dims=("Nv", "D")),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        arch, kwargs = timm_arguments(config, ctx.image_size, ctx.channels)
        self.vit = timm.create_model(arch, pretrained=config.pretrained, drop_path_rate=config.drop_path, **kwargs)
        self.embed_dim = self.vit.embed_dim
        if config.pos_embed == "sincos":
            gh, gw = self.vit.patch_embed.grid_size
            table = sincos_2d(self.embed_dim, gh, gw, cls_token=True)[None]
            self.vit.pos_embed = nn.Parameter(table, requires_grad=False)
        if config.init == "mae":
            mae_init(self.vit)
        if config.mask_mode == "replace":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.checkpoint_report: LoadReport | None = None
        if config.checkpoint:
            self.checkpoint_report = self._load_checkpoint(config.checkpoint)

    def _load_checkpoint(self, ref: str) -> LoadReport:
        """Weights of any layout graphssl.weights reads; the file's mask token too, where both have one."""
        try:
            report, mask_token = load_weights(self.vit, ref)
        except WeightsError as e:  # a build error like any other component's: one line, no traceback
            raise ValueError(str(e)) from None
        own = getattr(self, "mask_token", None)
        if own is not None and mask_token is not None:
            if mask_token.numel() != own.numel():
                raise ValueError(f"{ref}: mask_token: checkpoint {list(mask_token.shape)}, model {list(own.shape)}")
            with torch.no_grad():
                own.copy_(mask_token.reshape(own.shape))
            report.loaded.append("mask_token")
        elif own is not None:
            report.fresh.append("mask_token")
        elif mask_token is not None:
            report.dropped.append("mask_token")
        announce(f"encoder.vit: {report.summary()}")
        self.log("checkpoint_loaded_tensors", len(report.loaded))
        self.log("checkpoint_fresh_tensors", len(report.fresh))
        self.log("checkpoint_dropped_tensors", len(report.dropped))
        return report

    # -- for graphssl export: the timm model this encoder's ``vit`` is ----------
    timm_attribute = "vit"

    @classmethod
    def timm_arguments(cls, config: Config, image_size: int, channels: int) -> tuple[str, dict[str, Any]]:
        return timm_arguments(config, image_size, channels)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        lead = images.shape[:-3]
        x = self.vit.patch_embed(images.reshape(-1, *images.shape[-3:]))  # [B', gh, gw, D]
        b, gh, gw, d = x.shape
        if mask is not None:
            if mask.shape != (*lead, gh * gw):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the token grid "
                                 f"{tuple(lead) + (gh * gw,)} ({gh}x{gw} patches)")
            mask = mask.reshape(b, gh, gw)
            if self.config.mask_mode == "replace":
                x = torch.where(mask[..., None], self.mask_token.to(x.dtype).view(1, 1, 1, d), x)
        x = self.vit._pos_embed(x)  # [B', 1 + N, D]: [CLS] prepended, positions added
        if mask is not None and self.config.mask_mode == "drop":
            visible = ~mask.reshape(b, -1)
            counts = visible.sum(1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("mask_mode drop needs the same number of masked tokens in every image")
            patches = x[:, 1:][visible].reshape(b, int(counts[0]), d)
            x = torch.cat([x[:, :1], patches], dim=1)
        x = self.vit.norm_pre(x)
        if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
            for block in self.vit.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.vit.blocks(x)
        x = self.vit.norm(x)
        prefix = self.vit.num_prefix_tokens
        cls, tokens = x[:, 0], x[:, prefix:]
        return {"cls": cls.reshape(*lead, d), "patches": tokens.reshape(*lead, tokens.shape[1], d)}

    # -- for FSDP2, the optimiser's parameter groups (graphssl.component's protocols) ----
    def fsdp_units(self) -> list[nn.Module]:
        """Submodules sharded one by one under FSDP2 (each transformer block)."""
        return list(self.vit.blocks)

    def no_weight_decay(self) -> set[str]:
        """timm's no-decay names (position embedding, [CLS] and register tokens) and the mask token."""
        return {f"vit.{name}" for name in self.vit.no_weight_decay()} | {"mask_token"}

    def num_layers(self) -> int:
        return len(self.vit.blocks) + 1

    def layer_id(self, param_name: str) -> int:
        """From timm's ``group_matcher``, in BEiT's and MAE's numbering: 0 for the embeddings (timm's stem and the
        mask token), i + 1 for block i, num_layers for everything after the blocks (the final norm)."""
        if param_name == "mask_token":
            return 0
        name = param_name.removeprefix("vit.")
        matcher = self.vit.group_matcher(coarse=False)
        if re.match(matcher["stem"], name):
            return 0
        for pattern, suffix in matcher["blocks"]:
            match = re.match(pattern, name)
            if match and suffix is None and match.groups():
                return int(match.group(1)) + 1
        return self.num_layers()

    def is_patch_embed(self, param_name: str) -> bool:
        return param_name.startswith("vit.patch_embed.")
