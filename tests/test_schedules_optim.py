import math

import pytest
import torch
from torch import nn

from graphssl.component import Progress
from graphssl.config import TrainConfig
from graphssl.optim import clip_gradients, param_groups
from graphssl.schedules import Schedule, cosine_ramp, scaled_lr, value_at, warmup_cosine_lr


def test_warmup_then_half_cosine():
    peak, total, warm = 1.0, 110, 10
    assert warmup_cosine_lr(0, total, peak, warm) == 0.0
    assert warmup_cosine_lr(5, total, peak, warm) == pytest.approx(0.5)
    assert warmup_cosine_lr(10, total, peak, warm) == pytest.approx(1.0)
    assert warmup_cosine_lr(60, total, peak, warm) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine_lr(60, total, peak, warm, min_lr=0.2) == pytest.approx(0.6)


def test_lr_scaling_rules():
    assert scaled_lr(1.5e-4, 4096, "linear_256") == pytest.approx(2.4e-3)
    assert scaled_lr(1e-4, 2048, "linear_512") == pytest.approx(4e-4)
    assert scaled_lr(4e-3, 256, "sqrt_1024") == pytest.approx(2e-3)
    assert scaled_lr(1e-3, 4096, "none") == 1e-3


def test_momentum_cosine_schedule_dino_formula():
    s = Schedule(start=0.996, end=1.0)
    total = 101
    for k in (0, 50, 100):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / 100) + 1) / 2
        assert value_at(s, Progress(k, total)) == pytest.approx(expected)
    assert value_at(s, Progress(100, total)) == pytest.approx(1.0)


def test_linear_warmup_then_constant():
    s = Schedule(start=0.04, end=0.07, shape="linear", over=0.5)
    total = 101
    assert value_at(s, Progress(0, total)) == pytest.approx(0.04)
    assert value_at(s, Progress(25, total)) == pytest.approx(0.055)
    assert value_at(s, Progress(50, total)) == pytest.approx(0.07)
    assert value_at(s, Progress(90, total)) == pytest.approx(0.07)
    assert cosine_ramp(0.04, 0.4, 0.5) == pytest.approx(0.22)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


class TinyNamed(Tiny):
    def no_weight_decay(self) -> set[str]:  # graphssl.component.NoWeightDecay
        return {"pos_embed"}


def test_no_weight_decay_on_biases_norms_and_what_the_module_names():
    m = TinyNamed()
    groups = param_groups({"m": m, "shared": m}, TrainConfig(steps=1, lr=1.0))
    decayed = {n for g in groups if g["wd_scale"] == 1.0 for n in g["names"]}
    plain = {n for g in groups if g["wd_scale"] == 0.0 for n in g["names"]}
    assert decayed == {"m.proj.weight"}
    assert plain == {"m.pos_embed", "m.proj.bias", "m.norm.weight", "m.norm.bias"}  # shared module counted once
    # the framework does not guess from names: a module that names nothing keeps weight decay on pos_embed
    groups = param_groups({"m": Tiny()}, TrainConfig(steps=1, lr=1.0))
    assert {n for g in groups if g["wd_scale"] == 1.0 for n in g["names"]} == {"m.proj.weight", "m.pos_embed"}


def test_encoder_names_timms_no_decay_parameters_and_its_mask_token():
    from graphssl.component import BuildContext, LayerIds, NoWeightDecay
    from graphssl.registry import get

    E = get("encoder.vit")
    enc = E(E.Config(arch="vit_tiny_patch16_224", patch_size=8, depth=1, embed_dim=32, num_heads=2),
            BuildContext(image_size=16, channels=3))
    assert isinstance(enc, NoWeightDecay) and isinstance(enc, LayerIds)
    groups = param_groups({"enc": enc}, TrainConfig(steps=1, lr=1.0))
    plain = {n for g in groups if g["wd_scale"] == 0.0 for n in g["names"] if n.count(".") <= 2 and "blocks" not in n}
    assert {"enc.vit.cls_token", "enc.vit.pos_embed", "enc.mask_token"} <= plain


def test_layer_decay_groups_from_encoder_layer_ids():
    from graphssl.component import BuildContext
    from graphssl.registry import get

    E = get("encoder.vit")
    enc = E(E.Config(patch_size=8, depth=2, embed_dim=32, num_heads=2), BuildContext(image_size=16, channels=3))
    groups = param_groups({"enc": enc}, TrainConfig(steps=1, lr=1.0, layer_decay=0.5, patch_embed_lr=0.2))
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["enc.vit.blocks.1.mlp.fc1.weight"] == pytest.approx(0.5)  # layer 2 of 3
    assert scale["enc.vit.blocks.0.mlp.fc1.weight"] == pytest.approx(0.25)
    assert scale["enc.vit.cls_token"] == pytest.approx(0.125)
    assert scale["enc.vit.patch_embed.proj.weight"] == pytest.approx(0.125 * 0.2)
    assert scale["enc.vit.norm.weight"] == pytest.approx(1.0)


def test_per_tensor_clipping_clips_each_gradient_alone():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    clip_gradients([a, b], 1.0, "per_tensor")
    assert a.grad.norm() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(b.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched
