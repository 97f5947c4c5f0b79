"""The finiteness checks: a non-finite loss is found at its step even when checked late, and a
checkpoint is never written from a non-finite state."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import PIPELINES
from graphssl.build import build_trainer
from graphssl.checkpoint import CheckpointHook
from graphssl.plan import plan_pipeline
from graphssl.train import NonFiniteLoss

TINY = ["device=cpu", "train.steps=4", "data.limit=64", "data.batch_size=8", "eval.limit=20", "nodes.encoder.depth=1",
        "nodes.decoder.depth=1", "nodes.encoder.embed_dim=32", "nodes.encoder.num_heads=2", "nodes.decoder.embed_dim=32",
        "nodes.decoder.in_dim=32", "nodes.decoder.num_heads=2"]


@pytest.fixture
def trainer():
    plan = plan_pipeline(PIPELINES / "mae.yaml", TINY)
    return build_trainer(plan.last, plan, torch.device("cpu"))


def test_a_late_check_names_the_first_non_finite_step_and_its_node(trainer):
    trainer._check_every_step = False  # as on a GPU: read the losses only when asked
    for step in range(3):
        trainer.train_step(step)
    trainer._unchecked[1][1]["loss"] = torch.tensor(float("nan"))  # step 1 went bad, unseen so far
    trainer._unchecked[1][1]["loss_node"] = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteLoss) as info:
        trainer.check_finite()
    assert info.value.step == 1 and "loss_node" in info.value.bad and math.isinf(info.value.bad["loss_node"])
    trainer.check_finite()  # reported once; what follows is checked afresh


def test_no_checkpoint_is_written_from_non_finite_parameters(trainer, tmp_path):
    trainer.train_step(0)
    with torch.no_grad():
        next(p for p in trainer.executor.parameters() if p.requires_grad).fill_(float("nan"))
    hook = CheckpointHook(tmp_path, "mae", every=1, keep=2, meta={})
    with pytest.raises(NonFiniteLoss, match="a parameter became non-finite"):
        hook.save(trainer, 1)
    assert list(tmp_path.iterdir()) == []
