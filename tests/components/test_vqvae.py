import math

import pytest
import torch

from graphssl.component import BuildContext, Progress
from graphssl.components.tokenizer.vqvae import VQVAE, ema_codebook_update, nearest_codes, perplexity


def make(channels=3, **params):
    params = dict(dict(patch_size=4, num_codes=16, code_dim=8, hidden_dim=16, num_res_blocks=1), **params)
    return VQVAE(VQVAE.Config(**params), BuildContext(image_size=32, channels=channels))


def test_encode_decode_shapes():
    torch.manual_seed(0)
    vq = make()
    images = torch.randn(2, 3, 3, 32, 32)
    ids = vq.encode(images)
    assert ids.shape == (2, 3, 64) and ids.dtype == torch.long and ids.max() < 16
    assert vq.decode(ids).shape == (2, 3, 3, 32, 32)
    assert vq.decode(ids[..., :32], grid=(4, 8)).shape == (2, 3, 3, 16, 32)
    out = vq(images=images)
    assert out["ids"].shape == (2, 3, 64) and out["loss"].dim() == 0
    vq14 = make(patch_size=14)  # 14 = 2 * 7: one code per 14 px patch
    assert vq14.encode(torch.randn(1, 3, 28, 42)).shape == (1, 6)


def test_nearest_codes_and_perplexity():
    embed = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [5.0, 0.0]])
    assert nearest_codes(z, embed).tolist() == [0, 1, 2, 1]
    assert perplexity(torch.tensor([2.0, 2.0, 0.0, 0.0])).item() == pytest.approx(2.0)
    assert perplexity(torch.tensor([1.0, 0.0])).item() == pytest.approx(1.0)


def test_ema_update_formula_by_hand():
    count = torch.tensor([1.0, 2.0])
    total = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    counts = torch.tensor([3.0, 0.0])
    sums = torch.tensor([[6.0, 3.0], [0.0, 0.0]])
    n, m, e = ema_codebook_update(count, total, counts, sums, decay=0.5, eps=0.0)
    torch.testing.assert_close(n, torch.tensor([2.0, 1.0]))  # 0.5*1 + 0.5*3, 0.5*2 + 0
    torch.testing.assert_close(m, torch.tensor([[3.5, 1.5], [0.0, 2.0]]))
    torch.testing.assert_close(e, torch.tensor([[1.75, 0.75], [0.0, 2.0]]))
    _, _, e_eps = ema_codebook_update(count, total, counts, sums, decay=0.5, eps=0.1)
    smoothed = (torch.tensor([2.0, 1.0]) + 0.1) / (3.0 + 2 * 0.1) * 3.0  # Laplace smoothing
    torch.testing.assert_close(e_eps, m / smoothed[:, None])


def test_component_applies_ema_update_and_restarts_dead_codes():
    torch.manual_seed(0)
    vq = make(decay=0.9, restart_window=1)
    vq.train()
    vq.last_used.zero_()  # all codes alive before the first update
    images = torch.randn(4, 3, 32, 32)
    flat, ids, _ = vq._encode_flat(images)
    flat = flat.detach()
    before_count, before_sum = vq.ema_count.clone(), vq.ema_sum.clone()
    vq(images=images)["loss"].backward()
    vq.after_step(Progress(step=0, total_steps=10))
    used = torch.bincount(ids, minlength=16) > 0
    for k in used.nonzero().flatten().tolist():
        n_k = 0.9 * before_count[k] + 0.1 * (ids == k).sum()
        m_k = 0.9 * before_sum[k] + 0.1 * flat[ids == k].sum(0)
        torch.testing.assert_close(vq.ema_count[k], n_k)
        torch.testing.assert_close(vq.ema_sum[k], m_k)
    n = 0.9 * before_count + 0.1 * torch.bincount(ids, minlength=16)
    smoothed = (n + 1e-5) / (n.sum() + 16e-5) * n.sum()
    torch.testing.assert_close(vq.embed[used], vq.ema_sum[used] / smoothed[used, None])
    assert (~used).any()
    for k in (~used).nonzero().flatten().tolist():  # unused for restart_window=1 update: reset to an encoding
        assert (vq.embed[k] - flat).abs().sum(1).min() < 1e-6
        assert vq.ema_count[k] == 1.0


def test_eval_and_no_grad_do_not_touch_the_codebook():
    torch.manual_seed(0)
    vq = make()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq.eval()
    vq(images=torch.randn(2, 3, 32, 32))
    vq.encode(torch.randn(2, 3, 32, 32))
    vq.after_step(Progress(step=0, total_steps=10))
    assert all(torch.equal(state[k], v) for k, v in vq.state_dict().items())


def blobs(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth images: sums of 4 random Gaussian blobs, one channel, standardised."""
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centres = torch.rand(n, 4, 2, generator=generator) * size
    widths = 1.5 + torch.rand(n, 4, 1, 1, generator=generator) * 3
    amps = torch.randn(n, 4, 1, 1, generator=generator)
    d2 = (ys - centres[..., 0, None, None]) ** 2 + (xs - centres[..., 1, None, None]) ** 2
    images = (amps * torch.exp(-d2 / (2 * widths**2))).sum(1, keepdim=True)
    return (images - images.mean()) / images.std()


def test_training_beats_the_constant_mean():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is fastest, and steady on a busy machine
    try:
        _train_and_check()
    finally:
        torch.set_num_threads(threads)


def _train_and_check():
    torch.manual_seed(0)
    images = blobs(16, 16, torch.Generator().manual_seed(0))
    vq = make(channels=1, num_codes=32, code_dim=16, hidden_dim=32, restart_window=20)
    opt = torch.optim.Adam(vq.parameters(), lr=2e-3)
    vq.train()
    for step in range(100):
        opt.zero_grad()
        vq(images=images)["loss"].backward()
        opt.step()
        vq.after_step(Progress(step=step, total_steps=100))
    metrics = vq.pop_metrics()
    with torch.no_grad():
        recon = vq.decode(vq.encode(images), grid=(4, 4))
    mse = ((recon - images) ** 2).mean().item()
    baseline = ((images - images.mean()) ** 2).mean().item()
    assert mse < 0.25 * baseline, (mse, baseline)  # measured: 0.04 vs 1.0
    assert metrics["perplexity"] > 4 and 0 <= metrics["dead_codes"] <= 32
    assert math.isfinite(metrics["recon_loss"]) and metrics["usage"] == pytest.approx(1 - metrics["dead_codes"] / 32)
