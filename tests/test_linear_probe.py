"""eval.linear: MAE's probe head (BatchNorm without affine + linear) on frozen features."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from graphssl import registry
from graphssl.component import BuildContext, Evaluator
from graphssl.data import ImageSet
from graphssl.components.eval.linear import linear_head, probe_accuracy, train_linear_probe


def blobs(n: int, classes: int, dim: int, seed: int, spread: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around fixed class centres (scaled and shifted, which the BatchNorm must undo)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, dim, generator=g) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x * 50 + 7, y


def test_head_is_batchnorm_without_affine_then_linear():
    head = linear_head(16, 5)
    bn, linear = head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert isinstance(linear, nn.Linear) and linear.out_features == 5
    assert torch.all(linear.bias == 0) and linear.weight.std() < 0.02
    # trainable parameters: only the linear layer
    assert {n for n, p in head.named_parameters()} == {"1.weight", "1.bias"}


def test_separable_features_are_classified_almost_perfectly():
    x, y = blobs(1000, 10, 32, seed=1)
    xt, yt = blobs(1000, 10, 32, seed=2)
    head = train_linear_probe(x, y, 10, epochs=20)
    assert probe_accuracy(head, xt, yt) > 0.97
    assert not head.training  # returned in eval mode: BatchNorm uses running statistics


def test_random_labels_stay_near_chance_on_held_out_data():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1000, 32, generator=g), torch.randint(10, (1000,), generator=g)
    xt, yt = torch.randn(1000, 32, generator=g), torch.randint(10, (1000,), generator=g)
    head = train_linear_probe(x, y, 10, epochs=20)
    assert probe_accuracy(head, xt, yt) < 0.16  # chance is 0.10


def test_recipe_is_seeded_and_leaves_the_global_rng_alone():
    x, y = blobs(300, 4, 8, seed=4, spread=3.0)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = train_linear_probe(x, y, 4, epochs=5, seed=7)
    after = torch.rand(3)
    b = train_linear_probe(x, y, 4, epochs=5, seed=7)
    assert torch.equal(before, after)
    assert torch.equal(a[1].weight, b[1].weight)
    c = train_linear_probe(x, y, 4, epochs=5, seed=8)
    assert not torch.equal(a[1].weight, c[1].weight)


class FakeData:
    """Labelled splits whose images carry their class in a few pixels (what Data.eval_set returns)."""

    def __init__(self, n: int = 400):
        g = torch.Generator().manual_seed(0)
        self.sets = {}
        for split in ("train", "test"):
            labels = torch.randint(4, (n,), generator=g)
            images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
            images[:, :, :4, :4] = (labels * 60).to(torch.uint8)[:, None, None, None]
            self.sets[split] = ImageSet(images, labels)

    def eval_set(self, split: str, limit: int) -> ImageSet:
        s = self.sets[split]
        return ImageSet(s.images[:limit], s.labels[:limit])

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255


class PixelEncoder(nn.Module):
    """A frozen 'encoder': cls = the mean of the top-left 4x4 block, patches = all 4x4 block means."""

    def forward(self, images):
        blocks = images.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten(1)  # [B, 16]
        return {"cls": blocks[:, :1], "patches": blocks[:, :, None].repeat(1, 1, 2)}


def test_evaluator_node_probes_the_resolved_encoder_and_logs_linear_top1():
    cls = registry.get("eval.linear")
    assert issubclass(cls, Evaluator) and cls.module_refs == ("encoder",)
    assert cls.metric_names(cls.Config(encoder="e", metric="probe")) == ("probe",)
    assert cls.every(cls.Config(encoder="e", every=7)) == 7
    ev = cls(cls.Config(encoder="teacher.student", feature="cls", epochs=50), BuildContext(image_size=16, channels=1))
    asked = []
    encoder = PixelEncoder().train()

    def resolve(name):
        asked.append(name)
        return encoder

    result = ev.evaluate(resolve, FakeData(), limit=300)
    assert asked == ["teacher.student"]
    assert set(result) == {"linear_top1"} and result["linear_top1"] > 0.95
    assert encoder.training  # put back in train mode after feature extraction


def test_config_rejects_a_bad_recipe():
    cls = registry.get("eval.linear")
    with pytest.raises(ValidationError, match=r"epochs\n  Input should be greater than or equal to 1"):
        cls.Config(encoder="encoder", epochs=0)
    with pytest.raises(ValidationError, match=r"batch_size\n  Input should be greater than or equal to 2"):
        cls.Config(encoder="encoder", batch_size=1)


def test_probe_trains_on_one_cpu_thread_and_restores_the_thread_count():
    from graphssl.components.eval.linear import one_cpu_thread

    before = torch.get_num_threads()
    with one_cpu_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
