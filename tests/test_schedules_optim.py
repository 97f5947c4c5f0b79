import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from graphssl.component import BuildContext, Progress
from graphssl.config import PipelineConfig, TrainConfig
from graphssl.optim import clip_gradients, param_groups
from graphssl.schedules import Schedule, cosine_ramp, linear_ramp, scaled_lr, value_at, warmup_cosine_lr


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


# --------------------------------------------------------------------------- DINO's schedule convention

def dino_cosine_scheduler(base, final, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0.0):
    """DINO's utils.cosine_scheduler, from its formula: linspace(start_warmup_value, base, W) over the W warm-up
    iterations (end point included), then final + (base - final) (1 + cos(pi i / n)) / 2 for i < n remaining."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def dino_teacher_temp(warmup_temp, temp, warmup_epochs, epochs):
    """DINOLoss.teacher_temp_schedule: linspace(warmup_temp, temp, W) per epoch, then temp; indexed by epoch."""
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.ones(epochs - warmup_epochs) * temp))


SETTINGS = [(0.996, 1.0, 3, 5, 0), (0.04, 0.4, 4, 3, 0), (5e-4, 1e-6, 5, 4, 2), (1.0, 0.0, 2, 1, 1),
            (2.0, 0.1, 6, 7, 3), (1e-3, 1e-5, 3, 2, 1)]


def assert_same_values(got, expected):
    # Value for value: the same float operations in the same order as the official numpy code.
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-15, atol=0)


class TinyExecutor(nn.Module):
    """The executor's interface to the trainer: real components (their per-step hooks), one trained weight."""

    def __init__(self, nodes: dict[str, nn.Module]):
        super().__init__()
        self.nodes = nn.ModuleDict(nodes)
        self.weight = nn.Parameter(torch.ones(2))

    def components(self) -> dict[str, nn.Module]:
        return dict(self.nodes.items())

    def forward(self, batch):
        return {("loss", "loss"): (self.weight * batch["images"].mean()).sum()}

    def total_loss(self, losses):
        return sum(losses.values())


class TinyData:
    device = torch.device("cpu")

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch

    def batch(self, step: int):
        return {"images": torch.ones(2, 1, 4, 4)}

    def batches(self, start_step: int):
        while True:
            yield self.batch(start_step)


def trainer_values(epochs: int, niter: int, train: dict, momentum=0.996, teacher_temp=0.04) -> dict[str, list[float]]:
    """Per-step lr, weight decay, EMA momentum and teacher temperature as a training run sets them: the
    Trainer's own train_step on validated config sections, with real teacher.ema and post.center_sharpen."""
    from graphssl.registry import get
    from graphssl.train import Trainer

    total = epochs * niter
    cfg = PipelineConfig(name="s", data={"batch_size": 2}, train={"steps": total, **train}, nodes={}, objective={})
    ctx = BuildContext(image_size=4, channels=1, total_steps=total, steps_per_epoch=niter,
                       modules={"student": nn.Linear(2, 2)})
    EMA, Post = get("teacher.ema"), get("post.center_sharpen")
    teacher = EMA(EMA.Config(of=["student"], momentum=momentum), ctx)
    post = Post(Post.Config(teacher_temp=teacher_temp), ctx)
    executor = TinyExecutor({"teacher": teacher, "teacher_probs": post})
    optimizer = torch.optim.AdamW([{"params": [executor.weight], "lr_scale": 1.0, "wd_scale": 1.0}])
    trainer = Trainer(cfg, executor, optimizer, TinyData(niter))
    out = {"lr": [], "weight_decay": [], "momentum": [], "teacher_temp": []}
    for step in range(total):
        metrics = trainer.train_step(step)
        assert optimizer.param_groups[0]["lr"] == metrics["lr"]
        out["lr"].append(metrics["lr"])
        out["weight_decay"].append(metrics["weight_decay"])
        out["momentum"].append(teacher.momentum)
        out["teacher_temp"].append(post.temperature)
    return out


@pytest.mark.parametrize("base,final,epochs,niter,warmup", SETTINGS)
def test_dino_convention_reproduces_cosine_scheduler_for_lr_weight_decay_and_momentum(base, final, epochs, niter, warmup):
    m_base, m_final = min(base, 1.0), min(final, 1.0)
    got = trainer_values(epochs, niter, {"lr": base, "min_lr": final, "warmup": warmup * niter, "lr_convention": "dino",
                                         "weight_decay": {"start": base, "end": final, "convention": "dino"}},
                         momentum={"start": m_base, "end": m_final, "convention": "dino"})
    assert_same_values(got["lr"], dino_cosine_scheduler(base, final, epochs, niter, warmup_epochs=warmup))
    assert_same_values(got["weight_decay"], dino_cosine_scheduler(base, final, epochs, niter))
    assert_same_values(got["momentum"], dino_cosine_scheduler(m_base, m_final, epochs, niter))
    if warmup * niter > 1:
        assert got["lr"][warmup * niter - 1] == got["lr"][warmup * niter] == base  # the peak is repeated


@pytest.mark.parametrize("warmup_temp,temp,warmup_epochs,epochs,niter", [(0.04, 0.07, 30, 100, 2), (0.04, 0.07, 3, 10, 4),
                                                                         (0.04, 0.07, 1, 4, 3), (0.02, 0.05, 5, 5, 2)])
def test_per_epoch_linear_reproduces_dino_teacher_temperature(warmup_temp, temp, warmup_epochs, epochs, niter):
    schedule = {"start": warmup_temp, "end": temp, "shape": "linear", "over": warmup_epochs / epochs,
                "convention": "dino", "per": "epoch"}
    got = trainer_values(epochs, niter, {"lr": 1e-3}, teacher_temp=schedule)["teacher_temp"]
    expected = dino_teacher_temp(warmup_temp, temp, warmup_epochs, epochs)
    assert_same_values(got, np.repeat(expected, niter))  # the epoch's value at each of its steps


def test_dino_linear_per_step_reproduces_dinov2_teacher_temperature():
    # DINOv2: CosineScheduler(temp, temp, total_iters=W * L, warmup_iters=W * L, start_warmup_value=0.04): a
    # per-iteration linspace over the warm-up, then final_value for every later iteration.
    W, L, epochs = 3, 4, 10
    expected = np.concatenate((np.linspace(0.04, 0.07, W * L), np.full((epochs - W) * L, 0.07)))
    schedule = {"start": 0.04, "end": 0.07, "shape": "linear", "over": W / epochs, "convention": "dino"}
    assert_same_values(trainer_values(epochs, L, {"lr": 1e-3}, teacher_temp=schedule)["teacher_temp"], expected)


def test_default_convention_is_unchanged():
    # graphssl's own: t = step / (steps - 1) / over, ends exactly at end; the same floats as before the option.
    for s in (Schedule(start=0.996, end=1.0), Schedule(start=0.04, end=0.07, shape="linear", over=0.3),
              Schedule.model_validate({"start": 0.04, "end": 0.4, "convention": "graphssl", "per": "step"})):
        ramp = cosine_ramp if s.shape == "cosine" else linear_ramp
        for total in (1, 2, 17, 100):
            got = [value_at(s, Progress(i, total, 7)) for i in range(total)]
            assert got == [ramp(s.start, s.end, i / max(1, total - 1) / s.over) for i in range(total)]
        assert value_at(s, Progress(99, 100)) == s.end
    assert TrainConfig(steps=1, lr=1.0).lr_convention == "graphssl"
    assert [warmup_cosine_lr(i, 20, 1.0, 5) for i in range(5)] == [i / 5 for i in range(5)]


def test_per_epoch_holds_the_value_through_each_epoch_in_either_convention():
    for convention in ("graphssl", "dino"):
        s = Schedule(start=0.0, end=1.0, shape="linear", convention=convention, per="epoch")
        values = [value_at(s, Progress(i, 21, 4)) for i in range(21)]  # 6 epochs, the last one partial
        epochs = [values[i:i + 4] for i in range(0, 21, 4)]
        assert all(len(set(e)) == 1 for e in epochs)
        assert [e[0] for e in epochs] == pytest.approx([k / 5 for k in range(6)])  # both end at 1 on the last epoch
    s = Schedule(start=0.996, end=1.0, per="epoch")
    assert value_at(s, Progress(5, 10, 0)) == value_at(s, Progress(5, 10, 1))  # no epoch length known: per step


@pytest.mark.parametrize("value,where", [({"start": 0.9, "end": 1.0, "convention": "DINO"}, "convention"),
                                         ({"start": 0.9, "end": 1.0, "per": "epochs"}, "per")])
def test_schedule_rejects_unknown_conventions(value, where):
    with pytest.raises(ValidationError) as info:
        Schedule.model_validate(value)
    [error] = info.value.errors()
    assert error["loc"] == (where,) and error["type"] == "literal_error"
    with pytest.raises(ValidationError, match="lr_convention"):
        TrainConfig(steps=1, lr=1.0, lr_convention="mae")
