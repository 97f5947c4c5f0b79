"""The CPU fast path of the colour ops (graphssl/ops/photometric.py, jitter.py): chunked, gathered, in place.

Every CPU shortcut must give what the batched path (the one accelerators run,
``gather=False``: every image computed, ``torch.where`` keeps the picked ones)
and torchvision give on the same draws.
"""
import itertools

import pytest
import torch
import torchvision.transforms.v2.functional as TF

import graphssl.ops.photometric as photometric
from graphssl.ops.augment import JITTER_OPS, blend_, gaussian_blur, on_images_
from graphssl.ops.jitter import jitter_steps, run_steps_
from graphssl.ops.photometric import ColourTable, normalise

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def draws(table: ColourTable, n: int, channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    blur = torch.linspace(0.0, 1.0, n)
    solarize = torch.linspace(1.0, 0.0, n)
    return table.draw(n, channels, blur, solarize)


@pytest.mark.parametrize("channels,size", [(3, 24), (3, 9), (1, 16)])
def test_chunked_cpu_path_equals_the_batched_path(channels, size, monkeypatch):
    """Chunks of 1-3 images, each op on its picked images only == the whole batch with torch.where."""
    table = ColourTable(kernel_size=7)
    n = 40
    pixels = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    d = draws(table, n, channels)
    mean, std = MEAN[:channels], STD[:channels]
    reference = table._ops(pixels.float().div(255), d, gather=False).sub_(mean).div_(std)
    outputs = []
    for chunk_images in (1, 3, n):
        monkeypatch.setattr(photometric, "CHUNK_PIXELS", chunk_images * size * size)
        outputs.append(table.apply(pixels, d, mean, std))
        assert torch.allclose(outputs[-1], reference, atol=1e-5), chunk_images
    assert all(torch.equal(outputs[0], o) for o in outputs[1:])  # how the batch is cut changes no bit
    assert d.jitter.any() and (~d.jitter).any() and d.blur.any() and d.solarize.any()  # every branch was taken


def test_apply_leaves_its_input_and_draws_alone():
    table = ColourTable()
    pixels = torch.rand(6, 3, 16, 16)
    before = pixels.clone()
    d = draws(table, 6)
    a = table.apply(pixels, d, MEAN, STD)
    b = table.apply(pixels, d, MEAN, STD)
    assert torch.equal(pixels, before) and torch.equal(a, b)


def test_normalise_is_the_formula_for_any_chunking(monkeypatch):
    pixels = torch.randint(0, 256, (7, 3, 10, 10), dtype=torch.uint8)
    expect = (pixels.float() / 255 - MEAN) / STD
    for chunk_pixels in (1, 200, 10 ** 6):
        monkeypatch.setattr(photometric, "CHUNK_PIXELS", chunk_pixels)
        assert torch.allclose(normalise(pixels, MEAN, STD), expect, atol=1e-6)
    floats = torch.rand(2, 3, 5, 5)
    assert torch.allclose(normalise(floats, MEAN, STD), (floats - MEAN) / STD, atol=1e-6)


def test_on_images_gathers_only_the_picked_images():
    x = torch.rand(5, 3, 4, 4)
    pick = torch.tensor([True, False, True, False, False])
    seen = []

    def op(sub, index):
        seen.append(sub.shape[0])
        return sub.mul_(2.0)

    expect = torch.where(pick.view(-1, 1, 1, 1), x * 2, x)
    assert torch.equal(on_images_(x.clone(), pick, op, gather=True), expect) and seen == [2]
    assert torch.equal(on_images_(x.clone(), pick, op, gather=False), expect) and seen == [2, 5]
    assert torch.equal(on_images_(x.clone(), torch.zeros(5, dtype=torch.bool), op, gather=True), x) and seen == [2, 5]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("ops", [(0, 0, 0), (1, 1, 1), (2, 2, 2), (0, 1, 2), (2, 0, 0)])
def test_blend_skips_no_term_an_image_needs(channels, ops):
    """The CPU blend leaves out the grey image or the mean when no image asks for them."""
    torch.manual_seed(1)
    x = torch.rand(3, channels, 6, 6)
    factor = torch.tensor([0.6, 1.3, 0.9])
    got = blend_(x.clone(), torch.tensor(ops), factor)
    for i, op in enumerate(ops):
        assert torch.allclose(got[i:i + 1], JITTER_OPS[op](x[i:i + 1], factor[i:i + 1]), atol=1e-6)


def test_jitter_steps_skip_inactive_ops_and_match_the_per_image_loop():
    torch.manual_seed(2)
    n = 24
    x = torch.rand(n, 3, 5, 5)
    factors = torch.stack([torch.empty(n).uniform_(0.6, 1.4), torch.empty(n).uniform_(0.6, 1.4),
                           torch.empty(n).uniform_(0.8, 1.2), torch.empty(n).uniform_(-0.1, 0.1)], 1)
    order = torch.tensor(list(itertools.permutations(range(4))))
    active = (True, False, True, True)  # contrast off: no image blends towards its mean
    steps = jitter_steps(factors, order, active)
    assert sum(s.op is None for s in steps) == 1 and all(not (s.op[s.on] == 1).any() for s in steps if s.on is not None)
    assert sum(int(s.on.sum()) for s in steps if s.on is not None) == 2 * n  # two active blends per image
    for gather in (True, False):
        out = run_steps_(x.clone(), steps, gather)
        for i in range(n):
            y = x[i:i + 1]
            for k in order[i].tolist():
                if active[k]:
                    y = JITTER_OPS[k](y, factors[i:i + 1, k])
            assert torch.allclose(out[i:i + 1], y, atol=1e-5), (gather, order[i])


@pytest.mark.parametrize("sigma", [0.1, 0.3, 0.6, 1.0, 2.0])
def test_blur_with_trimmed_taps_matches_torchvision(sigma):
    """A small sigma weighs few of the 13 taps; dropping the rest changes no pixel beyond float rounding."""
    torch.manual_seed(3)
    x = torch.rand(2, 3, 30, 30)
    out = gaussian_blur(x, torch.full((2,), sigma), 13)
    ref = TF.gaussian_blur(x, kernel_size=[13, 13], sigma=[sigma, sigma])
    assert torch.allclose(out, ref, atol=2e-6)
    mixed = gaussian_blur(x, torch.tensor([0.1, 2.0]), 13)  # one chunk: the widest kernel decides
    assert torch.allclose(mixed[1], ref[1] if sigma == 2.0 else TF.gaussian_blur(x[1], [13, 13], [2.0, 2.0]), atol=2e-6)


def test_crop_jitters_views_the_data_path_cut():
    """augment.crop with color_jitter on uint8 views cut by a streaming data path: ColorJitter(v, v, v) on
    [0, 1] pixels, then normalised; drawn once per batch, so seeded runs repeat."""
    from graphssl.component import BuildContext
    from graphssl.ops.crops import precut_views
    from graphssl.registry import get

    cls = get("augment.crop")
    module = cls(cls.Config(size=16, color_jitter=0.4), BuildContext(image_size=16, channels=3))
    cut = torch.randint(0, 256, (1, 6, 3, 16, 16), dtype=torch.uint8)
    images = torch.zeros(6, 3, 16, 16)
    images.precut = {module.plan: [cut]}
    assert precut_views(images, module.plan)[0] is cut
    torch.manual_seed(4)
    a = module(images=images)["images"]
    torch.manual_seed(4)
    b = module(images=images)["images"]
    plain = (cut[0].float() / 255 - module.mean) / module.std
    assert torch.equal(a, b) and a.shape == (6, 3, 16, 16)
    assert (a - plain).abs().flatten(1).amax(1).min() > 1e-3  # every image jittered
    pixels = a * module.std + module.mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
