import math

import torch

from graphssl.ops.patches import patchify, sincos_1d, sincos_2d, unpatchify


def test_patchify_round_trip_and_layout():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(unpatchify(patches, 4, 3, (2, 3)), images)
    # patch 1 is row 0, column 1; inside a patch the layout is (row, col, channel)
    assert torch.equal(patches[0, 1].view(4, 4, 3), images[0, :, 0:4, 4:8].permute(1, 2, 0))


def test_patchify_keeps_leading_view_dims():
    images = torch.randn(2, 5, 3, 8, 8)
    assert patchify(images, 4).shape == (2, 5, 4, 48)


def test_sincos_1d_formula():
    pos = torch.tensor([0.0, 3.0])
    table = sincos_1d(8, pos)
    omega = [1 / 10000 ** (k / 4) for k in range(4)]
    expected = [[math.sin(p * w) for w in omega] + [math.cos(p * w) for w in omega] for p in (0.0, 3.0)]
    assert torch.allclose(table.float(), torch.tensor(expected), atol=1e-6)


def test_sincos_2d_mae_convention():
    d, gh, gw = 16, 3, 4
    table = sincos_2d(d, gh, gw, cls_token=True)
    assert table.shape == (1 + gh * gw, d)
    assert torch.all(table[0] == 0)  # [CLS] row is zeros
    row, col = 2, 1
    token = table[1 + row * gw + col]
    # first half encodes the column (x), second half the row (y)
    assert torch.allclose(token[: d // 2], sincos_1d(d // 2, torch.tensor([float(col)]))[0].float())
    assert torch.allclose(token[d // 2:], sincos_1d(d // 2, torch.tensor([float(row)]))[0].float())
