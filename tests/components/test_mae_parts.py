"""MAE's masker, target, decoder and loss against reference/methods.md section 4."""
import torch

from graphssl.component import BuildContext
from graphssl.registry import get
from graphssl.components.head.mae_decoder import restore_positions
from graphssl.components.loss.mse_masked import mse_masked
from graphssl.components.mask.random import random_token_mask
from graphssl.components.target.patch_pixels import normalize_patches

CTX = BuildContext(image_size=16, channels=3)


def test_random_mask_exact_count_per_sample():
    torch.manual_seed(0)
    for n, ratio in [(196, 0.75), (64, 0.75), (10, 0.5), (7, 0.3)]:
        mask = random_token_mask(32, n, ratio)
        keep = int(n * (1 - ratio))
        assert mask.shape == (32, n) and mask.dtype == torch.bool
        assert torch.all((~mask).sum(1) == keep)
    # masks differ between samples (per-sample noise)
    assert not torch.equal(mask[0], mask[1])


def test_random_mask_component_keeps_view_dims():
    M = get("mask.random")
    mask = M(M.Config(ratio=0.75, patch_size=4), CTX)(images=torch.randn(2, 3, 3, 16, 16))["mask"]
    assert mask.shape == (2, 3, 16) and torch.all(mask.sum(-1) == 12)


def test_normalized_pixels_use_unbiased_variance():
    p = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    mean = 3.0
    var = ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3  # unbiased
    expected = (p - mean) / (var + 1e-6) ** 0.5
    assert torch.allclose(normalize_patches(p), expected)


def test_mse_counts_masked_patches_only():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [10.0, 10.0]]])
    mask = torch.tensor([[True, True, False]])
    # patch errors: 1, 2, 100 -> masked mean (1 + 2) / 2
    assert torch.isclose(mse_masked(pred, target, mask), torch.tensor(1.5))


def test_restore_positions_equals_unshuffle():
    torch.manual_seed(0)
    b, n, d = 3, 8, 4
    full = torch.randn(b, n, d)
    mask = random_token_mask(b, n, 0.75)
    visible = full[~mask].view(b, -1, d)
    fill = torch.full((d,), -1.0)
    restored = restore_positions(visible, mask, fill)
    assert torch.equal(restored[~mask], full[~mask])
    assert torch.all(restored[mask] == -1.0)


def test_decoder_predicts_every_patch_and_learns():
    torch.manual_seed(0)
    D, M = get("head.mae_decoder"), get("mask.random")
    dec = D(D.Config(embed_dim=32, depth=1, num_heads=2, patch_size=4, in_dim=16), CTX)
    mask = random_token_mask(2, 16, 0.75)
    out = dec(cls=torch.randn(2, 16), patches=torch.randn(2, 4, 16), mask=mask)["pred"]
    assert out.shape == (2, 16, 48)
    out.sum().backward()
    assert dec.mask_token.grad is not None and dec.mask_token.grad.abs().sum() > 0


def test_encoder_drop_path_sees_visible_tokens_only():
    torch.manual_seed(0)
    E = get("encoder.vit")
    enc = E(E.Config(patch_size=4, depth=1, embed_dim=32, num_heads=2, pos_embed="sincos", mask_mode="drop"), CTX)
    images = torch.randn(2, 3, 16, 16)
    mask = random_token_mask(2, 16, 0.75)
    out = enc(images=images, mask=mask)
    assert out["patches"].shape == (2, 4, 32)
    # the visible tokens do not depend on the content of masked patches
    altered = images.clone()
    row, col = divmod(int(mask[0].nonzero()[0]), 4)
    altered[0, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 5.0
    assert torch.allclose(enc(images=altered, mask=mask)["patches"][0], out["patches"][0], atol=1e-5)
    # fixed sin-cos positions are not trained
    assert not enc.vit.pos_embed.requires_grad


def test_encoder_replace_path_uses_mask_token():
    torch.manual_seed(0)
    E = get("encoder.vit")
    enc = E(E.Config(patch_size=4, depth=1, embed_dim=32, num_heads=2), CTX)
    images = torch.randn(1, 3, 16, 16)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 3] = True
    altered = images.clone()
    altered[0, :, 0:4, 12:16] = 7.0  # patch 3 (row 0, col 3)
    a = enc(images=images, mask=mask)["patches"]
    b = enc(images=altered, mask=mask)["patches"]
    assert a.shape == (1, 16, 32)
    assert torch.allclose(a, b, atol=1e-5)  # the masked patch's content is replaced


def test_mae_init_is_xavier_uniform():
    torch.manual_seed(0)
    E = get("encoder.vit")
    enc = E(E.Config(patch_size=4, depth=1, embed_dim=64, num_heads=2, init="mae"), CTX)
    fc = enc.vit.blocks[0].mlp.fc1.weight
    bound = (6 / (fc.shape[0] + fc.shape[1])) ** 0.5  # xavier-uniform bound
    assert fc.abs().max() <= bound and fc.abs().max() > 0.9 * bound
    assert torch.all(enc.vit.blocks[0].mlp.fc1.bias == 0)
    w = enc.vit.patch_embed.proj.weight.view(64, -1)
    assert w.abs().max() <= (6 / (w.shape[0] + w.shape[1])) ** 0.5
