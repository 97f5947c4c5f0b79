"""BEiT's vocabulary head (``lm_head``): one linear layer per token from D to K code logits."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ports import TOKEN_LOGITS, TOKENS
from graphssl.registry import register


@register("head.vocab")
class VocabHead(Component):
    """tokens float[*,N,D] -> logits float[*,N,K] over the tokenizer's K codes.

    Weights trunc-normal (std 0.02), bias 0, as BEiT's ``_init_weights``.
    Applied to every token; the loss reads the masked ones (BEiT applies it to
    masked tokens only, which gives the same values there).
    """

    class Config(ComponentConfig):
        in_dim: int = Field(ge=1, description="width D of the input tokens (the encoder's embed_dim)")
        num_codes: int = Field(8192, ge=2, description="vocabulary size K of the tokenizer (BEiT's DALL-E: 8192)")

    inputs = {"tokens": In(TOKENS, "encoder patch tokens after the final norm")}
    outputs = {"logits": Out(TOKEN_LOGITS, "per-token code logits")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        self.proj = nn.Linear(config.in_dim, config.num_codes)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.proj(tokens)}
