"""DINO's projection head (HEAD.proto): DINO, iBOT, DINOv2.

x [*,D] -> MLP (Linear-GELU-Linear-GELU-Linear; hidden 2048) -> bottleneck 256
-> L2 normalisation -> weight-normalised Linear(256 -> K, no bias) -> logits [*,K].

The last layer is w_k = g_k * v_k / ||v_k|| (an explicit weight-norm: v [K,256],
g [K,1], initialised to 1). ``norm_last_layer: true`` (DINO, iBOT) freezes g
at 1; DINOv2 trains it (``false``). For the first ``freeze_last_layer_epochs``
epochs (Progress.steps_per_epoch steps each) the last layer's gradients are
dropped before the optimiser step (DINO sets them to None; DINOv2 gives the
layer lr 0: both leave it, weight decay included, untouched).

Inputs ``cls`` VECTOR [*,D] and ``patches`` TOKENS [*,N,D] are both optional;
outputs exist only for the inputs given: ``cls`` LOGITS [*,K], ``patches``
TOKEN_LOGITS [*,N,K]. Both go through the same weights in one call. A shared
[CLS]/patch head (iBOT, DINOv2 default) is one node with both inputs; a
separate patch head (DINOv2 L/g) is a second head.dino node.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out, Progress
from graphssl.ports import LOGITS, TOKEN_LOGITS, TOKENS, VECTOR
from graphssl.registry import register


def dino_mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, n_layers: int, use_bn: bool) -> nn.Sequential:
    """DINOHead's MLP: n_layers linear layers with GELU (and optional BatchNorm) between them."""
    if n_layers == 1:
        layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
    else:
        layers = [nn.Linear(in_dim, hidden_dim)]
        for _ in range(n_layers - 2):
            layers += ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
        layers += ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
    mlp = nn.Sequential(*layers)
    for m in mlp.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mlp


def weight_normed(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """w = g * v / ||v|| row-wise: v [K,d], g [K,1] (torch weight_norm with dim=0)."""
    return v * (g / v.norm(dim=1, keepdim=True))


@register("head.dino")
class DINOHead(Component):
    """3-layer MLP -> 256-d bottleneck -> L2 norm -> weight-normalised prototypes (K = 65536)."""

    class Config(ComponentConfig):
        in_dim: int = Field(192, ge=1, description="width of the input features (the encoder's embed_dim)")
        out_dim: int = Field(65536, ge=1, description="number of prototypes K (DINO 65536, iBOT 8192)")
        hidden_dim: int = Field(2048, ge=1, description="MLP hidden width")
        bottleneck_dim: int = Field(256, ge=1, description="bottleneck width before L2 normalisation (L/g: 384)")
        n_layers: int = Field(3, ge=1, description="linear layers in the MLP")
        use_bn: bool = Field(False, description="BatchNorm in the MLP (DINO: off)")
        norm_last_layer: bool = Field(True, description="freeze the weight-norm gain at 1 (DINO, iBOT); "
                                      "DINOv2 trains it (false)")
        freeze_last_layer_epochs: float = Field(1.0, ge=0.0, description="epochs (Progress.steps_per_epoch steps "
                                                "each) during which the last layer gets no update")

    inputs = {
        "cls": In(VECTOR, "[CLS] features [*,D]", optional=True, batch="cls"),
        "patches": In(TOKENS, "patch tokens [*,N,D]", optional=True),
    }
    outputs = {
        "cls": Out(LOGITS, "prototype scores of the [CLS] features [*,K] (only when cls is given)", batch="cls"),
        "patches": Out(TOKEN_LOGITS, "prototype scores per token [*,N,K] (only when patches is given)"),
    }

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        c = config
        self.mlp = dino_mlp(c.in_dim, c.hidden_dim, c.bottleneck_dim, c.n_layers, c.use_bn)
        # nn.Linear's default init for the prototypes, as DINO (the head's trunc_normal init
        # runs before its last layer is created); gain 1.
        last = nn.Linear(c.bottleneck_dim, c.out_dim, bias=False)
        self.last_v = nn.Parameter(last.weight.detach().clone())
        self.last_g = nn.Parameter(torch.ones(c.out_dim, 1), requires_grad=not c.norm_last_layer)

    def last_layer_weight(self) -> torch.Tensor:
        return weight_normed(self.last_v, self.last_g)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """float[M,D] -> float[M,K]."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return F.linear(x, self.last_layer_weight().to(x.dtype))

    def forward(self, cls: torch.Tensor | None = None, patches: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if cls is None and patches is None:
            raise ValueError("head.dino needs cls or patches (or both)")
        parts = []
        if cls is not None:
            parts.append(cls.reshape(-1, cls.shape[-1]))
        if patches is not None:
            parts.append(patches.reshape(-1, patches.shape[-1]))
        out = self.project(torch.cat(parts) if len(parts) > 1 else parts[0])
        result = {}
        k = out.shape[-1]
        if cls is not None:
            n_cls = parts[0].shape[0]
            result["cls"] = out[:n_cls].reshape(*cls.shape[:-1], k)
            out = out[n_cls:]
        if patches is not None:
            result["patches"] = out.reshape(*patches.shape[:-1], k)
        return result

    def last_layer_frozen(self, progress: Progress) -> bool:
        return progress.step < self.config.freeze_last_layer_epochs * progress.steps_per_epoch

    def before_optimizer_step(self, progress: Progress) -> None:
        if self.last_layer_frozen(progress):
            self.last_v.grad = None
            self.last_g.grad = None
