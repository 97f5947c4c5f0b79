"""Checkpoints in the official training codes' layouts, made from a timm model's state dict.

Each function renames a timm state dict the way the official code names and
wraps it when it saves (facebookresearch/dino main_dino.py, bytedance/ibot
main_ibot.py, facebookresearch/dinov2 train/train.py and eval, facebookresearch/mae
main_pretrain.py, OpenAI CLIP and open_clip, microsoft/unilm beit, baaivision EVA-CLIP).
"""
from __future__ import annotations

import argparse
import re

import torch

Tensors = dict[str, torch.Tensor]


def head_tensors(prefix: str, dim: int, out: int = 16) -> Tensors:
    """A projection head's tensors (DINO's MLP and weight-normed last layer), to be dropped on load."""
    return {f"{prefix}mlp.0.weight": torch.randn(32, dim), f"{prefix}mlp.0.bias": torch.randn(32),
            f"{prefix}last_layer.weight_g": torch.randn(out, 1), f"{prefix}last_layer.weight_v": torch.randn(out, 32)}


def dino(teacher: Tensors, student: Tensors, masked_embed: torch.Tensor | None = None) -> dict:
    """main_dino.py / main_ibot.py: save_dict with the DDP student (module.backbone., module.head.), the
    teacher (backbone., head.), the optimiser, epoch, argparse args and the loss's center."""
    dim = teacher["cls_token"].shape[-1]
    student_state = {f"module.backbone.{k}": v for k, v in student.items()}
    if masked_embed is not None:  # iBOT's student: masked_im_modeling=True
        student_state["module.backbone.masked_embed"] = masked_embed
    student_state.update(head_tensors("module.head.", dim))
    teacher_state = {f"backbone.{k}": v for k, v in teacher.items()}
    teacher_state.update(head_tensors("head.", dim))
    return {"student": student_state, "teacher": teacher_state, "optimizer": {"state": {}, "param_groups": []},
            "epoch": 3, "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=16),
            "dino_loss": {"center": torch.zeros(1, 16)}}


def dinov2_backbone(timm_state: Tensors, mask_token: torch.Tensor, chunks: int = 0) -> Tensors:
    """DinoVisionTransformer's state dict from a timm dinov2 model's: register_tokens, mask_token [1, D],
    the [CLS] position inside pos_embed (timm folds it into cls_token for register models), and, with
    ``chunks``, blocks.CHUNK.INDEX.* (BlockChunk)."""
    out = dict(timm_state)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = torch.randn(1, 1, out["cls_token"].shape[-1]) * 0.02
        out["cls_token"] = out["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, out["pos_embed"]], dim=1)
    out["mask_token"] = mask_token
    if chunks:
        depth = 1 + max(int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k)))
        per_chunk = -(-depth // chunks)
        out = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // per_chunk}.{m.group(1)}.", k): v
               for k, v in out.items()}
    return out


def dinov2_teacher_checkpoint(backbone: Tensors) -> dict:
    """do_test's teacher_checkpoint.pth: {"teacher": model.teacher.state_dict()} (backbone, dino_head, ibot_head)."""
    dim = backbone["cls_token"].shape[-1]
    return {"teacher": {**{f"backbone.{k}": v for k, v in backbone.items()},
                        **head_tensors("dino_head.", dim), **head_tensors("ibot_head.", dim)}}


def dinov2_training_checkpoint(teacher: Tensors, student: Tensors) -> dict:
    """fvcore's model_NNN.pth: {"model": SSLMetaArch.state_dict(), "optimizer", "iteration"}."""
    dim = teacher["cls_token"].shape[-1]
    model = {**{f"student.backbone.{k}": v for k, v in student.items()},
             **{f"teacher.backbone.{k}": v for k, v in teacher.items()},
             **head_tensors("student.dino_head.", dim), **head_tensors("teacher.dino_head.", dim)}
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "iteration": 10}


def mae(encoder: Tensors, decoder_dim: int = 32) -> dict:
    """main_pretrain.py: {"model": MaskedAutoencoderViT.state_dict(), "optimizer", "epoch", "scaler", "args"};
    the decoder's tensors and its mask token sit beside the encoder's."""
    n = encoder["pos_embed"].shape[1]
    dim = encoder["cls_token"].shape[-1]
    decoder = {"mask_token": torch.randn(1, 1, decoder_dim), "decoder_pos_embed": torch.randn(1, n, decoder_dim),
               "decoder_embed.weight": torch.randn(decoder_dim, dim), "decoder_embed.bias": torch.randn(decoder_dim),
               "decoder_blocks.0.norm1.weight": torch.ones(decoder_dim), "decoder_norm.weight": torch.ones(decoder_dim),
               "decoder_pred.weight": torch.randn(48, decoder_dim), "decoder_pred.bias": torch.randn(48)}
    return {"model": {**encoder, **decoder}, "optimizer": {"state": {}, "param_groups": []}, "epoch": 5,
            "scaler": {"scale": 1.0}, "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}


CLIP_SWAPS = [("norm_pre", "ln_pre"), ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"),
              ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]


def openai_clip(tower: Tensors, text_width: int = 32) -> Tensors:
    """OpenAI CLIP's state dict (model.state_dict() of clip.load): visual.* in OpenAI's names, then the
    text tower and the scalars the JIT archive carries. timm's head is CLIP's visual.proj transposed
    (its bias must be zero: CLIP's projection has none)."""
    out: Tensors = {}
    for k, v in tower.items():
        if k == "head.bias":
            assert not v.any(), "CLIP's projection has no bias"
            continue
        if k == "cls_token":
            k, v = "class_embedding", v[0, 0]
        elif k == "pos_embed":
            k, v = "positional_embedding", v[0]
        elif k == "head.weight":
            k, v = "proj", v.T
        elif k == "norm.weight" or k == "norm.bias":
            k = k.replace("norm", "ln_post")
        elif k.startswith("patch_embed.proj"):
            k = k.replace("patch_embed.proj", "conv1")
        else:
            for timm_name, clip_name in CLIP_SWAPS:
                k = k.replace(timm_name, clip_name)
            k = k.replace("blocks.", "transformer.resblocks.")
        out[f"visual.{k}"] = v
    out.update({"positional_embedding": torch.randn(8, text_width), "token_embedding.weight": torch.randn(50, text_width),
                "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * text_width, text_width),
                "ln_final.weight": torch.ones(text_width), "text_projection": torch.randn(text_width, 16),
                "logit_scale": torch.tensor(4.6), "input_resolution": torch.tensor(224),
                "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)})
    return out


def open_clip_training(state: Tensors) -> dict:
    """open_clip's training checkpoint: {"epoch", "name", "state_dict" (DDP: module.*), "optimizer"}."""
    return {"epoch": 2, "name": "ViT-B-16", "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": []}}


def beit(timm_state: Tensors, index_shape: tuple[int, int]) -> dict:
    """unilm beit's pretraining checkpoint: {"model": ...} with each block's relative_position_index buffer
    (persistent in the official code), the mask token and the MIM head."""
    out = dict(timm_state)
    for k in [k for k in out if k.endswith("attn.relative_position_bias_table")]:
        out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(index_shape, dtype=torch.long)
    dim = out["cls_token"].shape[-1]
    out.update({"mask_token": torch.randn(1, 1, dim), "lm_head.weight": torch.randn(64, dim), "lm_head.bias": torch.zeros(64)})
    return {"model": out, "optimizer": {"state": {}, "param_groups": []}, "epoch": 1}


EVA_SWAPS = [("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"),
             ("attn.norm", "attn.inner_attn_ln")]


def eva_clip(timm_state: Tensors) -> dict:
    """EVA-CLIP's checkpoint: {"module": {"visual.*" in EVA's names (SwiGLU w1/w2/w3, ffn_ln,
    inner_attn_ln), "text.*"}}."""
    out: Tensors = {}
    for k, v in timm_state.items():
        for timm_name, eva_name in EVA_SWAPS:
            k = k.replace(timm_name, eva_name)
        out[f"visual.{k}"] = v
    out.update({"text.token_embedding.weight": torch.randn(50, 32), "text.ln_final.weight": torch.ones(32),
                "logit_scale": torch.tensor(4.6)})
    return {"module": out}
