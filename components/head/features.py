"""EVA's feature head (``lm_head``): one linear layer per token from D to the teacher's feature width."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ports import TOKENS
from graphssl.registry import register


@register("head.features")
class FeatureHead(Component):
    """tokens float[*,N,D] -> pred float[*,N,F], regressed onto a frozen teacher's patch features.

    Weights trunc-normal (std 0.02), bias 0, as EVA's ``_init_weights``.
    """

    class Config(ComponentConfig):
        in_dim: int = Field(ge=1, description="width D of the input tokens (the encoder's embed_dim)")
        out_dim: int = Field(768, ge=1, description="feature width F of the target (EVA: CLIP-L/14's 768)")

    inputs = {"tokens": In(TOKENS, "encoder patch tokens after the final norm")}
    outputs = {"pred": Out(TOKENS, "predicted teacher features per token", dims=("N", "F"))}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.proj = nn.Linear(config.in_dim, config.out_dim)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.proj(tokens)}
