"""head.dino: shapes, the weight-normalised last layer and the frozen first epoch."""
import pytest
import torch
import torch.nn.functional as F

from graphssl.component import BuildContext, Progress
from graphssl.registry import get

CTX = BuildContext(image_size=32, channels=3)


def make(**kw):
    cls = get("head.dino")
    base = dict(in_dim=16, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    base.update(kw)
    torch.manual_seed(0)
    return cls(cls.Config(**base), CTX)


def test_shapes_and_optional_outputs():
    head = make()
    cls, patches = torch.randn(2, 3, 16), torch.randn(2, 3, 5, 16)
    out = head(cls=cls, patches=patches)
    assert out["cls"].shape == (2, 3, 50) and out["patches"].shape == (2, 3, 5, 50)
    assert set(head(cls=cls)) == {"cls"} and set(head(patches=patches)) == {"patches"}
    # one call for both equals separate calls (same weights, no batch coupling)
    assert torch.allclose(head(cls=cls)["cls"], out["cls"], atol=1e-6)
    assert torch.allclose(head(patches=patches)["patches"], out["patches"], atol=1e-6)
    with pytest.raises(ValueError):
        head()


def test_formula_mlp_l2norm_weightnorm():
    head = make()
    x = torch.randn(4, 16)
    lin = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(lin) == 3 and lin[0].out_features == 32 and lin[2].out_features == 8
    h = lin[2](F.gelu(lin[1](F.gelu(lin[0](x)))))
    z = h / h.norm(dim=-1, keepdim=True)
    w = head.last_g * head.last_v / head.last_v.norm(dim=1, keepdim=True)
    assert torch.allclose(head(cls=x)["cls"], z @ w.T, atol=1e-5)
    # gain 1: every prototype has unit norm, so |logit| <= 1
    assert torch.allclose(head.last_layer_weight().norm(dim=1), torch.ones(50), atol=1e-5)
    assert head(cls=x)["cls"].abs().max() <= 1 + 1e-5


def test_norm_last_layer_freezes_gain():
    assert not make(norm_last_layer=True).last_g.requires_grad
    head = make(norm_last_layer=False)
    assert head.last_g.requires_grad
    head(cls=torch.randn(4, 16))["cls"].pow(2).sum().backward()
    assert head.last_g.grad is not None and head.last_g.grad.abs().sum() > 0


def _train_step(head, step, steps_per_epoch):
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    head(cls=torch.randn(4, 16), patches=torch.randn(4, 3, 16))["patches"].pow(2).sum().backward()
    head.before_optimizer_step(Progress(step, 100, steps_per_epoch))
    opt.step()
    return {n: not torch.equal(before[n], p) for n, p in head.named_parameters()}


def test_last_layer_frozen_for_first_epoch():
    head = make(norm_last_layer=False, freeze_last_layer_epochs=1)
    changed = _train_step(head, step=9, steps_per_epoch=10)  # still in epoch 0
    assert not changed["last_v"] and not changed["last_g"]
    assert changed["mlp.0.weight"] and changed["mlp.4.weight"]
    changed = _train_step(head, step=10, steps_per_epoch=10)  # epoch 1: trained
    assert changed["last_v"] and changed["last_g"]


def test_freeze_fraction_of_epoch_and_off():
    head = make(freeze_last_layer_epochs=0.5)
    assert head.last_layer_frozen(Progress(4, 100, 10)) and not head.last_layer_frozen(Progress(5, 100, 10))
    assert not make(freeze_last_layer_epochs=0).last_layer_frozen(Progress(0, 100, 10))
