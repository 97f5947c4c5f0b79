"""loss.dino, loss.ibot_patch and loss.koleo against brute-force formulas."""

import pytest
import torch
import torch.nn.functional as F

from graphssl.component import BuildContext
from graphssl.registry import get

CTX = BuildContext(image_size=32, channels=3)


def make(name, **kw):
    cls = get(name)
    return cls(cls.Config(**kw), CTX)


def test_dino_loss_pairs_and_value():
    torch.manual_seed(0)
    b, k = 4, 6
    g, l = torch.randn(2, b, k), torch.randn(3, b, k)  # 2 global + 3 local student views
    teacher = torch.softmax(torch.randn(2, b, k), -1)
    loss = make("loss.dino")(student=[g, l], teacher=teacher)["loss"]
    views = list(g) + list(l)
    total, pairs = 0.0, 0
    for a in range(2):  # as DINO's DINOLoss
        for v in range(5):
            if v == a:
                continue
            total += torch.sum(-teacher[a] * F.log_softmax(views[v] / 0.1, dim=-1), dim=-1).mean()
            pairs += 1
    assert pairs == 8  # 2 * (5 - 1)
    assert torch.allclose(loss, total / pairs, atol=1e-5)


def test_dino_loss_student_temperature_and_gradient():
    torch.manual_seed(1)
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.softmax(torch.randn(2, 3, 5), -1)
    loss = make("loss.dino", student_temp=0.2)(student=[s], teacher=t)["loss"]
    expect = 0.5 * (-(t[0] * F.log_softmax(s[1] / 0.2, -1)).sum(-1).mean()
                    - (t[1] * F.log_softmax(s[0] / 0.2, -1)).sum(-1).mean())
    assert torch.allclose(loss, expect, atol=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no cross-view pairs"):
        make("loss.dino")(student=[s[:1]], teacher=t[:1])


def test_ibot_patch_loss_masked_per_image_mean():
    torch.manual_seed(2)
    v, b, n, k = 2, 3, 4, 5
    s = torch.randn(v, b, n, k)
    t = torch.softmax(torch.randn(v, b, n, k), -1)
    mask = torch.tensor([[[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
                         [[0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    loss = make("loss.ibot_patch")(student=s, teacher=t, mask=mask)["loss"]
    per_image = []
    for vi in range(v):
        for bi in range(b):
            idx = mask[vi, bi].nonzero().flatten().tolist()
            terms = [-(t[vi, bi, i] * F.log_softmax(s[vi, bi, i] / 0.1, -1)).sum() for i in idx]
            per_image.append(sum(terms) / len(idx) if idx else torch.tensor(0.0))  # no masked patch: 0
    assert torch.allclose(loss, torch.stack(per_image).mean(), atol=1e-5)
    # DINOv2's form: weight 1/n_masked per token, summed, divided by the number of images
    flat_mask = mask.reshape(-1, n)
    w = (1 / flat_mask.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(flat_mask)[flat_mask]
    tok = (t.reshape(-1, n, k)[flat_mask] * F.log_softmax(s.reshape(-1, n, k)[flat_mask] / 0.1, -1)).sum(-1)
    assert torch.allclose(loss, -(tok * w).sum() / flat_mask.shape[0], atol=1e-5)
    pooled = make("loss.ibot_patch", normalize="per_token")(student=s, teacher=t, mask=mask)["loss"]
    assert torch.allclose(pooled, -tok.mean(), atol=1e-5)


def test_ibot_patch_loss_ignores_unmasked_tokens():
    torch.manual_seed(3)
    s = torch.randn(1, 2, 4, 3)
    t = torch.softmax(torch.randn(1, 2, 4, 3), -1)
    mask = torch.tensor([[[True, False, False, False], [False, True, True, False]]])
    base = make("loss.ibot_patch")(student=s, teacher=t, mask=mask)["loss"]
    s2 = s.clone()
    s2[~mask] = 100.0  # changing visible tokens changes nothing
    assert torch.allclose(make("loss.ibot_patch")(student=s2, teacher=t, mask=mask)["loss"], base)


def koleo_brute(x):
    z = x / x.norm(dim=-1, keepdim=True)
    terms = []
    for i in range(z.shape[0]):
        d = [(z[i] - z[j]).norm() for j in range(z.shape[0]) if j != i]
        terms.append(torch.log(min(d) + 1e-8))
    return -torch.stack(terms).mean()


def test_koleo_against_brute_force_nearest_neighbour():
    torch.manual_seed(4)
    x = torch.randn(2, 7, 5) * 3
    loss = make("loss.koleo")(features=x)["loss"]
    per_view = [koleo_brute(x[0]), koleo_brute(x[1])]
    assert torch.allclose(loss, per_view[0] + per_view[1], atol=1e-4)  # DINOv2: summed over global crops
    mean = make("loss.koleo", reduction="mean")(features=x)["loss"]
    assert torch.allclose(mean, (per_view[0] + per_view[1]) / 2, atol=1e-4)
    single = make("loss.koleo")(features=x[0])["loss"]
    assert torch.allclose(single, per_view[0], atol=1e-4)


def test_koleo_gradient_pushes_neighbours_apart():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [-1.0, 0.0]], requires_grad=True)
    loss = make("loss.koleo")(features=x)["loss"]
    loss.backward()
    with torch.no_grad():
        y = x - 0.01 * x.grad
    assert make("loss.koleo")(features=y)["loss"] < loss
