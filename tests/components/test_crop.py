"""augment.crop and the shared crop math in graphssl/ops/crops.py."""

import pytest
import torch
from pydantic import ValidationError

from graphssl.component import BuildContext
from graphssl.ops.crops import crop_theta, resized_crops, sample_crop_boxes
from graphssl.registry import get


def coordinate_image(b: int, size: int) -> torch.Tensor:
    """Channel 0 = column index, channel 1 = row index, channel 2 = 0."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)])[None].repeat(b, 1, 1, 1)


def test_boxes_area_ratio_and_bounds():
    torch.manual_seed(0)
    boxes = sample_crop_boxes(4000, 32, 32, (0.2, 1.0))
    top, left, h, w = boxes.unbind(1)
    assert torch.equal(boxes, boxes.round())
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    frac = h * w / 1024
    # rounding h and w to whole pixels moves the area by at most about a pixel row/column
    assert frac.min() >= 0.2 - 0.06 and frac.max() <= 1.0
    assert 0.55 < frac.mean() < 0.65  # U(0.2, 1) has mean 0.6 (draws that do not fit are redrawn)
    r = w / h
    assert r.min() >= 0.75 - 0.1 and r.max() <= 4 / 3 + 0.1


def test_fallback_is_centre_crop():
    boxes = sample_crop_boxes(8, 10, 40, (0.99, 1.0), ratio=(1.0, 1.0))  # a square of area 400 never fits
    assert torch.equal(boxes, torch.tensor([[0.0, 15.0, 10.0, 10.0]]).expand(8, 4))


def test_identity_crop_reproduces_the_image():
    x = torch.randn(3, 3, 16, 16)
    out = resized_crops(x, 2, 16, (1.0, 1.0), (1.0, 1.0), flip_prob=0.0, mode="bilinear")
    assert out.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(out, x.expand(2, -1, -1, -1, -1), atol=1e-5)
    flipped = resized_crops(x, 1, 16, (1.0, 1.0), (1.0, 1.0), flip_prob=1.0, mode="bilinear")[0]
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)


def test_theta_samples_the_box():
    """A coordinate image cropped to a known box returns that box's pixel-centre coordinates."""
    img = coordinate_image(1, 64)
    box = torch.tensor([[8.0, 4.0, 32.0, 48.0]])  # top, left, h, w
    grid = torch.nn.functional.affine_grid(crop_theta(box, 64, 64), [1, 3, 16, 16], align_corners=False)
    out = torch.nn.functional.grid_sample(img, grid, mode="bilinear", align_corners=False)
    u = torch.arange(16, dtype=torch.float32)
    assert torch.allclose(out[0, 0, 0], 4 + (u + 0.5) * 48 / 16 - 0.5, atol=1e-4)
    assert torch.allclose(out[0, 1, :, 0], 8 + (u + 0.5) * 32 / 16 - 0.5, atol=1e-4)


def test_covered_area_fraction_within_scale():
    torch.manual_seed(1)
    s = 64
    out = resized_crops(coordinate_image(200, s), 1, s, (0.3, 0.6), flip_prob=0.0, mode="bilinear")[0]
    width = (out[:, 0].amax((1, 2)) - out[:, 0].amin((1, 2))) * s / (s - 1)
    height = (out[:, 1].amax((1, 2)) - out[:, 1].amin((1, 2))) * s / (s - 1)
    frac = width * height / (s * s)
    assert frac.min() > 0.3 - 0.05 and frac.max() < 0.6 + 0.05


def test_component_shapes_flip_and_determinism():
    cls = get("augment.crop")
    comp = cls(cls.Config(size=16, scale=(0.5, 1.0)), BuildContext(image_size=32, channels=3))
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(3)
    a = comp(images=x)["images"]
    torch.manual_seed(3)
    b = comp(images=x)["images"]
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    flip = cls(cls.Config(flip_prob=1.0, interpolation="bilinear"), BuildContext(image_size=32, channels=3))
    out = flip(images=coordinate_image(2, 32))["images"]
    assert (out[:, 0, :, 1:] <= out[:, 0, :, :-1] + 1e-4).all()  # columns run right to left


def test_component_color_jitter_changes_colours_and_keeps_range():
    cls = get("augment.crop")
    comp = cls(cls.Config(color_jitter=0.4, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], scale=(1.0, 1.0),
                          ratio=(1.0, 1.0), flip_prob=0.0, interpolation="bilinear"),
               BuildContext(image_size=16, channels=3))
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    out = comp(images=x)["images"]
    assert not torch.allclose(out, x, atol=1e-3)
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5


def test_config_rejects_bad_values():
    cls = get("augment.crop")
    with pytest.raises(ValidationError, match=r"flip_prob\n  Input should be less than or equal to 1"):
        cls.Config(flip_prob=1.5)
    with pytest.raises(ValidationError, match=r"scale\n  Value error, expected 0 < low <= high, got \(0.8, 0.2\)"):
        cls.Config(scale=(0.8, 0.2))
