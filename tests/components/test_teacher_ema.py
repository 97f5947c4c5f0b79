"""teacher.ema: frozen eval-mode copies, the EMA update and the momentum schedule."""
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from graphssl.component import BuildContext, Progress
from graphssl.registry import get
from graphssl.schedules import Schedule


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("count", torch.zeros(2))

    def forward(self, x):
        return self.drop(self.lin(x))


def build(total=11, **kw):
    torch.manual_seed(0)
    mods = {"student": Student(), "head": nn.Linear(3, 2)}
    cls = get("teacher.ema")
    ctx = BuildContext(image_size=32, channels=3, total_steps=total, modules=mods)
    return cls(cls.Config(of=["student", "head"], **kw), ctx), mods


def test_provides_and_frozen_eval_copies():
    teacher, mods = build()
    assert type(teacher).provides(teacher.config) == ["student", "head"]
    assert teacher.copy_of("student") is not mods["student"]
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in mods["student"].parameters())
    teacher.train()
    assert not teacher.copy_of("student").training and not teacher.copy_of("student").drop.training
    x = torch.randn(5, 4)
    assert torch.equal(teacher.copy_of("student")(x), teacher.copy_of("student")(x))  # dropout off
    # the students are not part of the teacher's state
    assert set(teacher.state_dict()) == {"copies.student.lin.weight", "copies.student.lin.bias",
                                         "copies.student.count", "copies.head.weight", "copies.head.bias"}


def test_one_update_is_exact():
    teacher, mods = build(momentum=0.9)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in list(mods["student"].parameters()) + list(mods["head"].parameters()):
            p.add_(torch.randn_like(p))
        mods["student"].count.fill_(3.0)
    teacher.after_step(Progress(0, 11))
    student_state = {f"copies.student.{k}": v for k, v in mods["student"].state_dict().items()}
    student_state.update({f"copies.head.{k}": v for k, v in mods["head"].state_dict().items()})
    for k, t in teacher.state_dict().items():
        if k.endswith("count"):
            assert torch.equal(t, torch.full((2,), 3.0))  # buffers are copied
            continue
        expect = before[k].mul(0.9).add(student_state[k], alpha=0.1)
        assert torch.equal(t, expect), k
        assert torch.allclose(t, 0.9 * before[k] + 0.1 * student_state[k], atol=1e-7)
    assert teacher.pop_metrics() == {"momentum": 0.9}


def test_momentum_schedule_cosine():
    teacher, _ = build(total=11)  # default cosine 0.996 -> 1
    expect = lambda k: 1 - (1 - 0.996) * (math.cos(math.pi * k / 10) + 1) / 2  # DINO's schedule
    for step in (0, 5, 10):
        teacher.after_step(Progress(step, 11))
        assert teacher.momentum == pytest.approx(expect(step), abs=1e-12)
    assert teacher.momentum == pytest.approx(1.0)
    teacher2, _ = build(total=11, momentum=Schedule(start=0.992, end=1.0))
    teacher2.after_step(Progress(5, 11))
    assert teacher2.momentum == pytest.approx(0.996)


def test_momentum_one_keeps_teacher():
    teacher, mods = build(momentum=1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items() if not k.endswith("count")}
    with torch.no_grad():
        mods["head"].weight.add_(1.0)
    teacher.after_step(Progress(3, 11))
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())


def test_unknown_module_is_an_error():
    cls = get("teacher.ema")
    with pytest.raises(ValueError, match="not built"):
        cls(cls.Config(of=["nope"]), BuildContext(image_size=32, channels=3, modules={}))
    with pytest.raises(ValidationError, match=r"of\n  Value error, name at least one module to copy"):
        cls.Config(of=[])
