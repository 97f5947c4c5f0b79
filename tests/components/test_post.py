"""post.center_sharpen and post.sinkhorn against the papers' formulas."""
import math

import pytest
import torch
from pydantic import ValidationError

from graphssl.component import BuildContext, Progress
from graphssl.registry import get

CTX = BuildContext(image_size=32, channels=3, total_steps=11)


def make(name, **kw):
    cls = get(name)
    return cls(cls.Config(**kw), CTX)


# ------------------------------------------------------------------ center_sharpen

def test_cls_softmax_uses_old_center_then_updates():
    post = make("post.center_sharpen", teacher_temp=0.05)
    torch.manual_seed(0)
    t1, t2 = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    p1 = post(cls=t1)["cls"]
    assert torch.allclose(p1, torch.softmax(t1 / 0.05, -1))  # center starts at 0
    c1 = 0.1 * t1.reshape(-1, 7).mean(0)  # 0.9 * 0 + 0.1 * batch mean over views and images
    assert torch.allclose(post.cls_center, c1, atol=1e-6)
    p2 = post(cls=t2)["cls"]
    assert torch.allclose(p2, torch.softmax((t2 - c1) / 0.05, -1), atol=1e-6)
    assert torch.allclose(post.cls_center, 0.9 * c1 + 0.1 * t2.reshape(-1, 7).mean(0), atol=1e-6)
    m = post.pop_metrics()
    assert m["temperature"] == 0.05 and m["cls_center_norm"] == pytest.approx(float(post.cls_center.norm()))
    ent = -(p2 * p2.log()).sum(-1).mean()
    assert m["cls_entropy"] == pytest.approx(float(ent), rel=1e-5)


def test_patch_center_all_tokens_and_masked_only():
    torch.manual_seed(1)
    t = torch.randn(2, 3, 5, 4)  # V, B, N, K
    mask = torch.rand(2, 3, 5) < 0.4
    post = make("post.center_sharpen", teacher_temp=0.1, center_momentum=0.5)
    out = post(cls=t[:, :, 0], patches=t)
    assert set(out) == {"cls", "patches"} and out["patches"].shape == t.shape
    # iBOT: mean over the tokens of each image, then over images (= all tokens)
    assert torch.allclose(post.patch_center, 0.5 * t.mean(2).mean((0, 1)), atol=1e-6)
    assert torch.allclose(post.cls_center, 0.5 * t[:, :, 0].mean((0, 1)), atol=1e-6)  # own center
    post2 = make("post.center_sharpen", teacher_temp=0.1, center_momentum=0.5, patch_center="masked")
    post2(patches=t, mask=mask)
    assert torch.allclose(post2.patch_center, 0.5 * t[mask].mean(0), atol=1e-6)  # DINOv2: masked tokens only
    with pytest.raises(ValueError, match="mask"):
        post2(patches=t)
    # no masked tokens at all: the center is kept
    before = post2.patch_center.clone()
    post2(patches=t, mask=torch.zeros_like(mask))
    assert torch.equal(post2.patch_center, before)


def test_temperature_schedule_linear_then_constant():
    post = make("post.center_sharpen")  # 0.04 -> 0.07 over the first 30%
    assert post.temperature == pytest.approx(0.04)
    values = []
    for step in (0, 1, 3, 5, 10):
        post.before_step(Progress(step, 11))
        values.append(post.temperature)
    assert values == pytest.approx([0.04, 0.05, 0.07, 0.07, 0.07])


def test_state_dict_round_trip():
    post = make("post.center_sharpen")
    post(cls=torch.randn(4, 6))
    fresh = make("post.center_sharpen")
    fresh.load_state_dict(post.state_dict())
    assert torch.equal(fresh.cls_center, post.cls_center)


# ------------------------------------------------------------------ sinkhorn

def dinov2_sinkhorn(teacher_output, teacher_temp, n_iterations=3):
    """DINOv2's SinkhornKnopp (dinov2/loss/dino_clstoken_loss.py), single process."""
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_matches_dinov2_and_marginals():
    torch.manual_seed(0)
    t = torch.randn(2, 6, 5).double().float()  # 2 views x 6 images, K = 5
    post = make("post.sinkhorn", teacher_temp=0.5)
    q = post(cls=t)["cls"]
    ref = dinov2_sinkhorn(t.reshape(-1, 5), 0.5).view(2, 6, 5)
    assert torch.allclose(q, ref, atol=1e-6)
    assert torch.allclose(q.sum(-1), torch.ones(2, 6), atol=1e-5)  # every sample: a distribution
    cols = q.reshape(-1, 5).sum(0)
    assert torch.allclose(cols, torch.full((5,), 12 / 5), rtol=0.1)  # about equipartition after 3 rounds
    many = make("post.sinkhorn", teacher_temp=0.5, n_iterations=200)(cls=t)["cls"].reshape(-1, 5).sum(0)
    assert torch.allclose(many, torch.full((5,), 12 / 5), atol=1e-4)  # converges to exact equipartition


def test_sinkhorn_patches_count_masked_tokens_only():
    torch.manual_seed(2)
    t = torch.randn(2, 3, 4, 6)
    mask = torch.rand(2, 3, 4) < 0.5
    q = make("post.sinkhorn", teacher_temp=0.3)(patches=t, mask=mask)["patches"]
    assert torch.equal(q[~mask], torch.zeros_like(q[~mask]))
    assert torch.allclose(q[mask], dinov2_sinkhorn(t[mask], 0.3), atol=1e-6)
    full = make("post.sinkhorn", teacher_temp=0.3)(patches=t)["patches"]
    assert torch.allclose(full.reshape(-1, 6), dinov2_sinkhorn(t.reshape(-1, 6), 0.3), atol=1e-6)


def test_sinkhorn_is_stable_for_large_logits():
    t = torch.randn(8, 10) * 20  # exp(t / 0.04) overflows without the max shift
    q = make("post.sinkhorn", teacher_temp=0.04)(cls=t)["cls"]
    assert torch.isfinite(q).all() and torch.allclose(q.sum(-1), torch.ones(8), atol=1e-5)


def test_mean_entropy_estimate_and_weights():
    from graphssl.ops.stats import mean_entropy
    p = torch.softmax(torch.randn(5000, 8), -1)
    exact = -(p * p.log()).sum(-1).mean()
    assert torch.allclose(mean_entropy(p, max_rows=10**6), exact, atol=1e-5)
    assert abs(float(mean_entropy(p)) - float(exact)) < 0.02  # evenly spaced subsample
    w = torch.zeros(5000, dtype=torch.bool)
    w[:10] = True
    assert torch.allclose(mean_entropy(p[:20], w[:20]), -(p[:10] * p[:10].log()).sum(-1).mean(), atol=1e-5)
    u = torch.full((3, 8), 1 / 8)
    assert torch.allclose(mean_entropy(u), torch.tensor(math.log(8)))


@pytest.mark.parametrize("name", ["post.center_sharpen", "post.sinkhorn"])
@pytest.mark.parametrize("temp", [-0.04, 0.0, {"start": 0.04, "end": -0.07}])
def test_teacher_temperature_must_be_positive(name, temp):
    with pytest.raises(ValidationError, match="must be > 0"):
        get(name).Config(teacher_temp=temp)
