import math

import pytest
import torch
import torch.nn.functional as F

from graphssl.component import BuildContext
from graphssl.components.loss.cosine_masked import CosineMaskedLoss
from graphssl.components.loss.cross_entropy_masked import CrossEntropyMaskedLoss
from graphssl.components.loss.l1_masked import L1MaskedLoss
from graphssl.components.target.patch_pixels import PatchPixels
from graphssl.ops.patches import patchify

CTX = BuildContext(image_size=8, channels=3)


def test_l1_masked_equals_simmims_image_space_formula():
    torch.manual_seed(0)
    b, c, size, p = 2, 3, 8, 2
    x, x_rec = torch.randn(b, c, size, size), torch.randn(b, c, size, size)
    mask = torch.rand(b, (size // p) ** 2) < 0.5
    # SimMIM's forward: the token mask upsampled to pixels
    pix = mask.view(b, size // p, size // p).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).float()
    expected = (F.l1_loss(x, x_rec, reduction="none") * pix).sum() / (pix.sum() + 1e-5) / c
    target = PatchPixels(PatchPixels.Config(patch_size=p, norm_pix=False), CTX)(images=x)["target"]
    torch.testing.assert_close(target, patchify(x, p))
    loss = L1MaskedLoss(L1MaskedLoss.Config(), CTX)(pred=patchify(x_rec, p), target=target, mask=mask)["loss"]
    torch.testing.assert_close(loss, expected)


def test_l1_masked_by_hand():
    pred = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # p = 1, C = 3: one pixel per token
    target = torch.zeros(1, 2, 3)
    mask = torch.tensor([[True, False]])
    ctx = BuildContext(image_size=1, channels=3)
    loss = L1MaskedLoss(L1MaskedLoss.Config(), ctx)(pred=pred, target=target, mask=mask)["loss"]
    assert loss.item() == pytest.approx(6.0 / (1 + 1e-5) / 3)


def test_cross_entropy_masked_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    target = torch.randint(0, 5, (2, 3))
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss_fn = CrossEntropyMaskedLoss(CrossEntropyMaskedLoss.Config(), CTX)
    loss = loss_fn(logits=logits, target=target, mask=mask)["loss"]
    terms = [-torch.log_softmax(logits[b, i], -1)[target[b, i]] for b, i in [(0, 0), (0, 2), (1, 2)]]
    torch.testing.assert_close(loss, sum(terms) / 3)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0
    hits = sum(int(logits[b, i].argmax() == target[b, i]) for b, i in [(0, 0), (0, 2), (1, 2)])
    assert loss_fn.pop_metrics()["accuracy"] == pytest.approx(hits / 3)


def test_cross_entropy_masked_empty_mask_is_zero():
    logits = torch.randn(1, 4, 3, requires_grad=True)
    loss = CrossEntropyMaskedLoss(CrossEntropyMaskedLoss.Config(), CTX)(
        logits=logits, target=torch.zeros(1, 4, dtype=torch.long), mask=torch.zeros(1, 4, dtype=torch.bool))["loss"]
    assert loss.item() == 0.0
    loss.backward()


def test_cosine_masked_by_hand_and_sign():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]]])
    target = torch.tensor([[[0.0, 2.0], [2.0, 2.0], [-3.0, -4.0]]])
    mask = torch.tensor([[True, True, False]])
    loss_fn = CosineMaskedLoss(CosineMaskedLoss.Config(), CTX)
    loss = loss_fn(pred=pred, target=target, mask=mask)["loss"]
    assert loss.item() == pytest.approx(-(0.0 + 1.0) / 2)  # cos = 0 and 1 on the masked tokens
    assert loss_fn.pop_metrics()["cosine"] == pytest.approx(0.5)
    # agrees with EVA's -nn.CosineSimilarity(dim=-1)(output[mask], label[mask]).mean() on random inputs
    torch.manual_seed(0)
    p, t, m = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.rand(2, 6) < 0.5
    expected = -torch.nn.CosineSimilarity(dim=-1)(p[m], t[m]).mean()
    torch.testing.assert_close(loss_fn(pred=p, target=t, mask=m)["loss"], expected)


def test_cosine_loss_decreases_as_features_align():
    torch.manual_seed(0)
    target = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    pred = torch.randn(2, 6, 8, requires_grad=True)
    loss_fn = CosineMaskedLoss(CosineMaskedLoss.Config(), CTX)
    first = loss_fn(pred=pred, target=target, mask=mask)["loss"]
    opt = torch.optim.Adam([pred], lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        loss = loss_fn(pred=pred, target=target, mask=mask)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < first.item() and loss.item() < -0.95
    aligned = loss_fn(pred=target, target=target, mask=mask)["loss"]
    assert aligned.item() == pytest.approx(-1.0, abs=1e-6)
