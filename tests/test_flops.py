"""Counted FLOPs of a training step (graphssl.flops) against hand counts, per node.

What FlopCounterMode counts, and so what the hand counts below count:
- a matrix product [M,K] @ [K,N]: 2*M*N*K; a Linear layer's backward is two products of the same size
  (input gradient and weight gradient): 2x its forward, so a Linear costs 3x its forward per step;
- the patch embedding (a stride-p convolution, 2*B*N*(C*p*p)*D forward) gets the images as input, which need
  no gradient: its backward is the weight gradient only, 1x its forward;
- fused attention (scaled_dot_product_attention) over T tokens of width D (all heads together): Q K^T and
  P V, 2 * 2*B*T*T*D forward; its backward recomputes the scores and takes four more products: 2.5x forward;
- nothing element-wise (norms, GELU, softmax, masking, losses).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import PIPELINES
from graphssl.build import build_modules, dry_run, load_data, make_context, prepare
from graphssl.cli import main
from graphssl.flops import EXTRA_FORMULAS, peak_flops

CPU = torch.device("cpu")
B, S, P, C, D = 4, 32, 4, 3, 192  # batch, image side, patch, channels, vit_tiny width
N = (S // P) ** 2  # 64 patch tokens


def linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def block_forward(tokens_per_image: int, width: int, mlp_ratio: int = 4) -> tuple[int, int]:
    """(Linear FLOPs, attention FLOPs) of one pre-norm transformer block's forward on B images."""
    bt = B * tokens_per_image
    linears = (linear(bt, width, 3 * width) + linear(bt, width, width)              # qkv, proj
               + linear(bt, width, mlp_ratio * width) + linear(bt, mlp_ratio * width, width))  # fc1, fc2
    attention = 2 * (2 * B * tokens_per_image * tokens_per_image * width)            # Q K^T, P V (all heads)
    return linears, attention


def encoder_flops(tokens_per_image: int, depth: int) -> tuple[int, int]:
    """(forward, backward) of encoder.vit: patch embedding on all N patches, then ``depth`` blocks."""
    patch_embed = 2 * B * N * (C * P * P) * D
    linears, attention = block_forward(tokens_per_image, D)
    forward = patch_embed + depth * (linears + attention)
    backward = patch_embed + depth * (2 * linears + 2.5 * attention)
    return forward, int(backward)


def tiny(name: str, *overrides: str):
    prepared = prepare(PIPELINES / f"{name}.yaml", ["device=cpu", f"data.batch_size={B}", "data.limit=64", *overrides])
    dry_run(prepared, CPU)
    return prepared


def test_mae_step_matches_a_hand_count_of_the_vit_matmuls():
    depth, dec_depth, d = 2, 1, 128
    prepared = tiny("mae", f"nodes.encoder.depth={depth}", f"nodes.decoder.depth={dec_depth}")
    flops = prepared.flops
    visible = N - round(0.75 * N)  # mask.random drops 75% of the 64 tokens: 16 visible (+ [CLS])

    enc_fwd, enc_bwd = encoder_flops(1 + visible, depth)
    # decoder: embed D -> d of [CLS] + visible tokens, blocks over [CLS] + all N, pixel head on the N patches
    embed = linear(B * (1 + visible), D, d)
    dec_linears, dec_attention = block_forward(1 + N, d)
    pred = linear(B * N, d, P * P * C)
    dec_fwd = embed + dec_depth * (dec_linears + dec_attention) + pred
    dec_bwd = 2 * embed + dec_depth * (2 * dec_linears + 2.5 * dec_attention) + 2 * pred
    hand = enc_fwd + enc_bwd + dec_fwd + dec_bwd

    assert flops.total == pytest.approx(hand, rel=0.05)
    assert flops.forward["encoder"] == pytest.approx(enc_fwd, rel=0.05)
    assert flops.backward["encoder"] == pytest.approx(enc_bwd, rel=0.05)
    assert flops.forward["decoder"] == pytest.approx(dec_fwd, rel=0.05)
    assert flops.backward["decoder"] == pytest.approx(dec_bwd, rel=0.05)
    # masking, targets and the loss are element-wise; nothing is left outside the nodes
    assert flops.of_node("mask") == flops.of_node("target") == flops.of_node("loss") == 0
    assert flops.unattributed == 0 and flops.update == {}
    assert flops.batch_size == B and flops.per_image == flops.total / B


def test_mae_step_costs_less_than_simmim_by_the_visible_token_ratio():
    mae = tiny("mae", "nodes.encoder.depth=2", "nodes.decoder.depth=1").flops
    simmim = tiny("simmim", "nodes.encoder.depth=2").flops
    # same encoder: MAE's sees [CLS] + 16 visible tokens, SimMIM's [CLS] + all 64
    ratio = mae.of_node("encoder") / simmim.of_node("encoder")
    assert ratio == pytest.approx(17 / 65, rel=0.1)
    assert mae.total < simmim.total  # the decoder over all tokens costs less than the 48 tokens MAE's encoder skips


def test_the_ema_update_and_shared_modules_are_counted_per_node():
    prepared = tiny("dino", "nodes.student.depth=1", "vars.n_local=2", "vars.prototypes=64", "nodes.head.hidden_dim=64")
    flops = prepared.flops
    # the EMA update: t = m*t (1 FLOP per element) + (1-m)*s (2 FLOPs per element), over every copied parameter
    teacher = prepared.spec.nodes["teacher"]
    assert teacher.role == "owner"
    modules = build_modules(prepared, make_context(prepared, load_data(prepared, CPU, limit=B), CPU))
    copied = sum(p.numel() for p in modules["teacher"].copies.parameters())
    assert flops.update == {"teacher": 3 * copied}
    # the student's module runs at two nodes: each is charged its own call, forward and backward
    assert flops.forward["student_local"] > 0 and flops.backward["student_local"] > 0
    assert flops.forward["student"] > 0 and flops.backward["student"] > 0
    # the teacher's copies run without gradients
    assert flops.forward["teacher_enc"] == pytest.approx(flops.forward["student"], rel=1e-6)
    assert flops.backward.get("teacher_enc", 0) == 0


def test_fused_attention_on_cpu_is_counted_like_the_cuda_kernels():
    q = torch.randn(2, 3, 17, 64, requires_grad=True)
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        out = F.scaled_dot_product_attention(q, q, q)
    forward = counter.get_total_flops()
    assert forward == 2 * (2 * 2 * 3 * 17 * 17 * 64)
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == 2.5 * forward


def test_known_device_peaks():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_flops("NVIDIA H200", "bf16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert peak_flops("cpu", "fp32") is None


def test_check_prints_the_counted_flops_and_the_resolved_steps(workdir, capsys):
    common = [str(PIPELINES / "mae.yaml"), "device=cpu", f"data.batch_size={B}", "data.limit=64",
              "nodes.encoder.depth=1", "nodes.decoder.depth=1"]
    assert main(["check", *common]) == 0
    out = capsys.readouterr().out
    assert "counted FLOPs of one training step (batch 4, one process)" in out
    encoder_line = next(line for line in out.splitlines() if line.strip().startswith("encoder "))
    assert "FLOP" in encoder_line
    assert main(["check", *common, "train.steps=null", "train.budget.images=41"]) == 0
    assert "train.budget.images=41 -> 11 steps" in capsys.readouterr().out  # ceil(41 / 4)
    assert list(workdir.iterdir()) == []  # check writes nothing
