"""augment.multicrop and the colour/blur/solarize ops of graphssl/ops/augment.py."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from pydantic import ValidationError

from graphssl.component import BuildContext
from graphssl.ops.augment import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur,
                                  gaussian_kernels, rgb_to_grayscale, solarize)
from graphssl.ops.jitter import color_jitter
from graphssl.registry import get

CTX = BuildContext(image_size=32, channels=3)


def make(**kw):
    cls = get("augment.multicrop")
    return cls(cls.Config(**kw), CTX)


def plain(**kw):
    """Identity crops, no colour ops, no flip; mean 0 / std 1 so pixels pass through."""
    base = dict(n_global=2, n_local=2, global_size=32, local_size=32, global_scale=(1.0, 1.0), local_scale=(1.0, 1.0),
                ratio=(1.0, 1.0), interpolation="bilinear", flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                blur_prob=[0.0, 0.0, 0.0], solarize_prob=[0.0, 0.0, 0.0], mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    base.update(kw)
    return make(**base)


def test_shapes_and_default_sizes():
    out = make(n_local=3, local_size=16)(images=torch.randn(4, 3, 32, 32))
    assert out["global"].shape == (2, 4, 3, 32, 32) and out["local"].shape == (3, 4, 3, 16, 16)
    m = make(n_local=0, blur_prob=[1.0, 0.1, 0.5])
    assert m.local_size == round(32 * 96 / 224)
    assert set(m(images=torch.randn(2, 3, 32, 32))) == {"global"}


def test_plain_views_are_the_input():
    x = torch.rand(3, 3, 32, 32)
    out = plain()(images=x)
    assert torch.allclose(out["global"], x.expand(2, -1, -1, -1, -1), atol=1e-5)


def test_determinism_under_manual_seed():
    m = make(n_local=2, local_size=16)
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(7)
    a = m(images=x)
    torch.manual_seed(7)
    b = m(images=x)
    torch.manual_seed(8)
    c = m(images=x)
    assert torch.equal(a["global"], b["global"]) and torch.equal(a["local"], b["local"])
    assert not torch.equal(a["global"], c["global"])


def test_local_crop_area_within_scale():
    s = 32
    ys, xs = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    coords = torch.stack([xs / s, ys / s, torch.zeros_like(xs)])[None].repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    out = plain(n_local=1, local_scale=(0.1, 0.4), ratio=(3 / 4, 4 / 3))(images=coords)["local"][0]
    width = (out[:, 0].amax((1, 2)) - out[:, 0].amin((1, 2))) * s * s / (s - 1)
    height = (out[:, 1].amax((1, 2)) - out[:, 1].amin((1, 2))) * s * s / (s - 1)
    frac = width * height / (s * s)
    assert frac.min() > 0.1 - 0.05 and frac.max() < 0.4 + 0.05


def test_per_view_probabilities():
    """Blur only the second global view; solarize only the locals."""
    x = torch.rand(4, 3, 32, 32)
    out = plain(blur_prob=[0.0, 1.0, 0.0], solarize_prob=[0.0, 0.0, 1.0])(images=x)
    assert torch.allclose(out["global"][0], x, atol=1e-5)
    assert not torch.allclose(out["global"][1], x, atol=1e-2)
    assert torch.allclose(out["local"], solarize(x).expand(2, -1, -1, -1, -1), atol=1e-5)
    # one value per view is accepted too
    plain(blur_prob=[0.0, 1.0, 0.5, 0.5], solarize_prob=[0.0, 0.2, 0.0, 0.0])


def test_blur_removes_high_frequencies():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    out = plain(blur_prob=[1.0, 1.0, 1.0], blur_sigma=(1.0, 2.0))(images=x)["global"][0]

    def high(img):  # energy of the discrete Laplacian
        lap = 4 * img[..., 1:-1, 1:-1] - img[..., :-2, 1:-1] - img[..., 2:, 1:-1] - img[..., 1:-1, :-2] - img[..., 1:-1, 2:]
        return lap.pow(2).mean()

    assert high(out) < 0.2 * high(x)
    assert torch.allclose(out.mean(), x.mean(), atol=0.02)  # low frequencies (the mean) kept


def test_gaussian_blur_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 20, 20)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = gaussian_blur(x, sigma, 9)
    for i, s in enumerate(sigma.tolist()):
        ref = TF.gaussian_blur(x[i], kernel_size=[9, 9], sigma=[s, s])
        assert torch.allclose(out[i], ref, atol=1e-5)
    k = gaussian_kernels(sigma, 9)
    assert torch.allclose(k.sum(1), torch.ones(3)) and torch.allclose(k, k.flip(1))


def test_colour_ops_match_torchvision():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    for ours, ref, f in ((adjust_brightness, TF.adjust_brightness, 1.3), (adjust_contrast, TF.adjust_contrast, 0.7),
                         (adjust_saturation, TF.adjust_saturation, 1.2), (adjust_hue, TF.adjust_hue, 0.08),
                         (adjust_hue, TF.adjust_hue, -0.1)):
        got = ours(x, torch.full((2,), f))
        assert torch.allclose(got, ref(x, f), atol=1e-5), ours.__name__
    assert torch.allclose(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)


def test_color_jitter_neutral_and_active():
    x = torch.rand(16, 3, 8, 8)
    assert torch.allclose(color_jitter(x, prob=0.0), x, atol=1e-5)  # neutral factors: identity (hue round trip)
    out = color_jitter(x, prob=1.0)
    assert (out - x).abs().flatten(1).amax(1).min() > 1e-3  # every image changed
    assert out.min() >= 0 and out.max() <= 1
    fixed = color_jitter(x, 0.4, 0.0, 0.0, 0.0, prob=1.0, random_order=False)
    ratio = fixed.sum((1, 2, 3)) / x.sum((1, 2, 3))  # brightness only, no clamping below 1 / 1.4
    assert ((ratio > 0.6 - 1e-4) & (ratio < 1.4 + 1e-4)).all()


def test_solarize_formula():
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.7, 1.0])
    assert torch.allclose(solarize(x), torch.tensor([0.0, 0.2, 0.49, 0.5, 0.3, 0.0]))
    assert torch.allclose(solarize(x), TF.solarize(x, 0.5))


def test_grayscale_prob_one_gives_grey_views():
    x = torch.rand(2, 3, 32, 32)
    out = plain(grayscale_prob=1.0)(images=x)["global"]
    assert torch.allclose(out[:, :, 0], out[:, :, 1]) and torch.allclose(out[:, :, 1], out[:, :, 2])


def test_normalisation_round_trip():
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    pix = torch.rand(2, 3, 32, 32)
    x = (pix - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    out = plain(mean=mean, std=std, solarize_prob=[1.0, 1.0, 1.0])(images=x)["global"][0]
    expect = (solarize(pix) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(out, expect, atol=1e-4)


def test_config_errors():
    cls = get("augment.multicrop")
    with pytest.raises(ValidationError, match=r"expected 3 values \(one per global view, then one for the local views\) "
                                              r"or 6 \(one per view\), got 2"):
        cls.Config(n_global=2, n_local=4, blur_prob=[1.0, 0.1])
    with pytest.raises(ValidationError, match=r"blur_kernel_size\n  Value error, the blur kernel side must be odd, got 8"):
        cls.Config(blur_kernel_size=8)
    with pytest.raises(ValidationError, match=r"local_scale\n  Value error, expected 0 < low <= high, got \(0.4, 0.05\)"):
        cls.Config(local_scale=(0.4, 0.05))


def test_jitter_in_order_matches_per_image_loop():
    from graphssl.ops.augment import JITTER_OPS
    from graphssl.ops.jitter import jitter_in_order
    torch.manual_seed(5)
    n = 24
    x = torch.rand(n, 3, 6, 6)
    factors = torch.stack([torch.empty(n).uniform_(0.6, 1.4), torch.empty(n).uniform_(0.6, 1.4),
                           torch.empty(n).uniform_(0.8, 1.2), torch.empty(n).uniform_(-0.1, 0.1)], 1)
    import itertools
    order = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders, one per image
    out = jitter_in_order(x, factors, order)
    for i in range(n):
        y = x[i:i + 1]
        for k in order[i].tolist():
            y = JITTER_OPS[k](y, factors[i:i + 1, k])
        assert torch.allclose(out[i:i + 1], y, atol=1e-5), order[i]
    # orders matter: brightness then contrast differs from contrast then brightness after clamping
    assert not torch.allclose(jitter_in_order(x, factors, order[:1].expand(n, 4)),
                              jitter_in_order(x, factors, order[-1:].expand(n, 4)), atol=1e-3)


@pytest.mark.parametrize("channels,active", [(3, (True, True, True, False)), (3, (True, False, True, True)),
                                             (1, (True, True, True, True))])
def test_jitter_in_order_with_inactive_ops_and_grey_images_matches_per_image_loop(channels, active):
    import itertools

    from graphssl.ops.augment import JITTER_OPS
    from graphssl.ops.jitter import jitter_in_order
    torch.manual_seed(6)
    n = 24
    x = torch.rand(n, channels, 6, 6)
    factors = torch.stack([torch.empty(n).uniform_(0.6, 1.4), torch.empty(n).uniform_(0.6, 1.4),
                           torch.empty(n).uniform_(0.8, 1.2), torch.empty(n).uniform_(-0.1, 0.1)], 1)
    order = torch.tensor(list(itertools.permutations(range(4))))
    out = jitter_in_order(x, factors, order, active)
    for i in range(n):
        y = x[i:i + 1]
        for k in order[i].tolist():
            if active[k]:
                y = JITTER_OPS[k](y, factors[i:i + 1, k])
        assert torch.allclose(out[i:i + 1], y, atol=1e-5), order[i]
