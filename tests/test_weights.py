"""Released weights come in: every official layout, built from a timm model's state dict renamed as the
official code saves it, loads into encoder.vit (or a frozen target.features teacher) exactly as the timm
folder of the same weights does."""
from __future__ import annotations

import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import save_for_hf

import layouts
from graphssl import registry
from graphssl.component import BuildContext
from graphssl.weights import WeightsError, find_backbone, load_weights, read_checkpoint

IMAGE = 16
TINY = dict(depth=2, embed_dim=32, num_heads=2)


def encoder(checkpoint=None, **overrides):
    cls = registry.get("encoder.vit")
    params = dict(arch="vit_tiny_patch16_224", patch_size=4, **TINY)
    params.update(overrides)
    if checkpoint is not None:
        params["checkpoint"] = str(checkpoint)
    return cls(cls.Config(**params), BuildContext(image_size=IMAGE, channels=3)).eval()


def timm_vit(arch="vit_tiny_patch16_224", seed=0, **kwargs):
    """A randomly initialised timm ViT with the encoder's sizes (what the official code would have trained)."""
    torch.manual_seed(seed)
    args = dict(img_size=IMAGE, patch_size=4, num_classes=0, **TINY)
    args.update(kwargs)
    model = timm.create_model(arch, pretrained=False, **args)
    with torch.no_grad():  # non-trivial values everywhere, norms and LayerScale included
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def folder_of(model, path):
    save_for_hf(model, str(path), safe_serialization=True)
    return path


def same_encoders(a, b):
    sa, sb = a.vit.state_dict(), b.vit.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    x = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        oa, ob = a(images=x), b(images=x)
    torch.testing.assert_close(oa["patches"], ob["patches"], rtol=0, atol=1e-5)
    torch.testing.assert_close(oa["cls"], ob["cls"], rtol=0, atol=1e-5)


def test_timm_folder_safetensors_and_pth_load_the_same_weights(tmp_path):
    model = timm_vit()
    reference = encoder(folder_of(model, tmp_path / "folder"))
    torch.testing.assert_close(reference.vit.state_dict()["blocks.1.mlp.fc2.weight"], model.state_dict()["blocks.1.mlp.fc2.weight"])
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    same_encoders(reference, encoder(tmp_path / "model.safetensors"))
    # timm's train.py checkpoint: state_dict beside its EMA, the optimiser and argparse args
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "state_dict_ema": timm_vit(seed=5).state_dict(),
                "optimizer": {}, "args": __import__("argparse").Namespace(lr=0.1)}, tmp_path / "train.pth.tar")
    same_encoders(reference, encoder(tmp_path / "train.pth.tar"))


def test_dino_checkpoint_loads_the_teacher_and_on_request_the_student(tmp_path):
    teacher, student = timm_vit(seed=1), timm_vit(seed=2)
    torch.save(layouts.dino(teacher.state_dict(), student.state_dict()), tmp_path / "checkpoint.pth")
    loaded = encoder(tmp_path / "checkpoint.pth")
    same_encoders(loaded, encoder(folder_of(teacher, tmp_path / "teacher")))
    assert loaded.checkpoint_report.layout.startswith("DINO/iBOT")
    assert any(k.startswith("head.") for k in loaded.checkpoint_report.dropped)  # the DINO head starts fresh
    same_encoders(encoder(f"{tmp_path / 'checkpoint.pth'}#student"), encoder(folder_of(student, tmp_path / "student")))


def test_ibot_student_brings_its_mask_token(tmp_path):
    teacher, student = timm_vit(seed=1), timm_vit(seed=2)
    masked_embed = torch.randn(1, TINY["embed_dim"])
    torch.save(layouts.dino(teacher.state_dict(), student.state_dict(), masked_embed), tmp_path / "ibot.pth")
    loaded = encoder(f"{tmp_path / 'ibot.pth'}#student", mask_mode="replace")
    same_encoders(loaded, encoder(folder_of(student, tmp_path / "student")))
    torch.testing.assert_close(loaded.mask_token.reshape(-1), masked_embed.reshape(-1))
    assert "mask_token" in loaded.checkpoint_report.loaded


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_teacher_checkpoint_with_layerscale_registers_and_chunks(tmp_path, arch):
    extra = {}
    teacher = timm_vit(arch, seed=3)
    assert teacher.num_reg_tokens == (4 if "reg4" in arch else 0)
    assert any(".ls1.gamma" in k for k in teacher.state_dict())  # LayerScale, as DINOv2
    mask_token = torch.randn(1, TINY["embed_dim"])
    backbone = layouts.dinov2_backbone(teacher.state_dict(), mask_token, chunks=2)
    assert any(k.startswith("blocks.1.1.") for k in backbone)
    torch.save(layouts.dinov2_teacher_checkpoint(backbone), tmp_path / "teacher_checkpoint.pth")
    loaded = encoder(tmp_path / "teacher_checkpoint.pth", arch=arch, mask_mode="replace", **extra)
    same_encoders(loaded, encoder(folder_of(teacher, tmp_path / "timm"), arch=arch, **extra))
    torch.testing.assert_close(loaded.mask_token.reshape(-1), mask_token.reshape(-1))
    assert loaded.checkpoint_report.layout.startswith("DINOv2")
    # the training checkpoint (fvcore) holds teacher and student under "model"
    student = layouts.dinov2_backbone(timm_vit(arch, seed=4).state_dict(), mask_token)
    torch.save(layouts.dinov2_training_checkpoint(backbone, student), tmp_path / "model_0000099.pth")
    same_encoders(encoder(tmp_path / "model_0000099.pth", arch=arch, **extra), loaded)


def test_mae_checkpoint_drops_the_decoder_and_its_mask_token(tmp_path):
    model = timm_vit(seed=6)
    torch.save(layouts.mae(model.state_dict()), tmp_path / "checkpoint-799.pth")
    loaded = encoder(tmp_path / "checkpoint-799.pth", mask_mode="replace", pos_embed="sincos")
    same_encoders(loaded, encoder(folder_of(model, tmp_path / "timm"), pos_embed="sincos"))
    report = loaded.checkpoint_report
    assert report.layout.startswith("MAE")
    assert "mask_token" in report.fresh  # MAE's mask token is the decoder's: the encoder's starts fresh
    assert {"decoder_pred.weight", "mask_token"} <= set(report.dropped)


def test_openai_and_open_clip_layouts_through_timms_converter(tmp_path):
    arch = "vit_base_patch16_clip_224"
    tower = timm_vit(arch, seed=7, num_classes=16)
    with torch.no_grad():
        tower.head.bias.zero_()
    openai = layouts.openai_clip(tower.state_dict())
    torch.save(openai, tmp_path / "ViT-B-16.state_dict.pt")
    torch.save(layouts.open_clip_training(openai), tmp_path / "epoch_2.pt")
    reference = encoder(folder_of(tower, tmp_path / "timm"), arch=arch)
    for name in ("ViT-B-16.state_dict.pt", "epoch_2.pt"):
        loaded = encoder(tmp_path / name, arch=arch)
        same_encoders(loaded, reference)
        assert loaded.checkpoint_report.layout.startswith("CLIP")
        assert "head.weight" in loaded.checkpoint_report.dropped  # the projection: encoder.vit has no head


def test_graphssl_modules_file_by_node(tmp_path):
    source = encoder(mask_mode="replace", layer_scale=0.1)
    payload = {"nodes": {"encoder": {"type": "encoder.vit", "config": source.config.model_dump(mode="json"),
                                     "state_dict": source.state_dict()},
                         "teacher.encoder": {"type": "encoder.vit", "config": source.config.model_dump(mode="json"),
                                             "state_dict": encoder(mask_mode="replace", layer_scale=0.1).state_dict()}},
               "pipeline": "p", "image_size": IMAGE, "channels": 3}
    torch.save(payload, tmp_path / "p.modules.pt")
    loaded = encoder(f"{tmp_path / 'p.modules.pt'}#encoder", mask_mode="replace", layer_scale=0.1)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(ValueError, match="encoder, teacher.encoder"):
        encoder(tmp_path / "p.modules.pt")  # two encoders: name one


def test_frozen_teacher_reads_a_local_clip_tower(tmp_path):
    arch = "vit_base_patch16_clip_224.openai"
    tower = timm_vit(arch, seed=8, num_classes=512, img_size=32, patch_size=16)
    with torch.no_grad():
        tower.head.bias.zero_()
    torch.save(layouts.openai_clip(tower.state_dict()), tmp_path / "clip.bin")
    cls = registry.get("target.features")
    kwargs = dict(TINY, img_size=32)
    ctx = BuildContext(image_size=32, channels=3)
    target = cls(cls.Config(source=f"timm:{arch}", weights=str(tmp_path / "clip.bin"), model_kwargs=kwargs, patch_size=16), ctx)
    x = torch.randn(2, 3, 32, 32)
    tower.eval()
    with torch.no_grad():
        expected = tower.head(tower.forward_features(x)[:, 1:])
    torch.testing.assert_close(target(images=x)["target"], expected, rtol=0, atol=1e-5)
    from_folder = cls(cls.Config(source=str(folder_of(tower, tmp_path / "timm")), patch_size=16), ctx)
    torch.testing.assert_close(from_folder(images=x)["target"], expected, rtol=0, atol=1e-5)


def _teacher_features(source, weights, kwargs, x, patch_size):
    cls = registry.get("target.features")
    config = cls.Config(source=source, weights=weights, model_kwargs=kwargs, project=False, patch_size=patch_size)
    return cls(config, BuildContext(image_size=x.shape[-1], channels=3))(images=x)["target"]


def test_beit_and_eva_checkpoints_through_timms_converters(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    beit_kwargs = dict(TINY, img_size=32, patch_size=16, global_pool="token", num_classes=0)
    beit = timm_vit("beit_base_patch16_224", seed=9, **beit_kwargs)
    window = beit.blocks[0].attn.window_size
    torch.save(layouts.beit(beit.state_dict(), (window[0] * window[1] + 1,) * 2), tmp_path / "beit.pth")
    torch.testing.assert_close(_teacher_features("timm:beit_base_patch16_224", str(tmp_path / "beit.pth"), beit_kwargs, x, 16),
                               _teacher_features(str(folder_of(beit, tmp_path / "beit")), None, {}, x, 16), rtol=0, atol=1e-5)
    eva_kwargs = dict(TINY, img_size=32, patch_size=16, num_classes=0)
    eva = timm_vit("eva02_base_patch16_clip_224", seed=10, **eva_kwargs)
    assert any(".mlp.fc1_g." in k for k in eva.state_dict())  # SwiGLU, renamed from EVA's w1/w2/w3
    torch.save(layouts.eva_clip(eva.state_dict()), tmp_path / "EVA02_CLIP_B_psz16_s8B.pt")
    torch.testing.assert_close(
        _teacher_features("timm:eva02_base_patch16_clip_224", str(tmp_path / "EVA02_CLIP_B_psz16_s8B.pt"), eva_kwargs, x, 16),
        _teacher_features(str(folder_of(eva, tmp_path / "eva")), None, {}, x, 16), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- what is refused, and how

def test_unknown_layout_lists_its_first_keys(tmp_path):
    torch.save({"conv_stem.weight": torch.zeros(8, 3, 3, 3), "layer1.0.bn1.weight": torch.zeros(8)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout.*conv_stem\.weight, layer1\.0\.bn1\.weight"):
        encoder(tmp_path / "resnet.pth")


def test_size_mismatch_names_the_key_and_both_shapes(tmp_path):
    torch.save(timm_vit(embed_dim=64).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"cls_token: checkpoint \[1, 1, 64\], model \[1, 1, 32\]"):
        encoder(tmp_path / "wide.pth")


def test_depth_and_patch_size_mismatches_are_errors(tmp_path):
    torch.save(timm_vit(depth=1).state_dict(), tmp_path / "shallow.pth")
    with pytest.raises(ValueError, match=r"no value for blocks\.1\..*depth"):
        encoder(tmp_path / "shallow.pth")
    torch.save(timm_vit(depth=3).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(ValueError, match=r"no place for blocks\.2\."):
        encoder(tmp_path / "deep.pth")
    torch.save(timm_vit(patch_size=8).state_dict(), tmp_path / "patch8.pth")
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: checkpoint \[32, 3, 8, 8\], model \[32, 3, 4, 4\]"):
        encoder(tmp_path / "patch8.pth")


def test_another_image_size_resamples_positions_and_says_so(tmp_path):
    torch.save(timm_vit(img_size=32).state_dict(), tmp_path / "at32.pth")
    report = encoder(tmp_path / "at32.pth").checkpoint_report
    assert any("pos_embed resampled from the checkpoint's 8x8 grid to the model's 4x4" in n for n in report.notes)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    bomb = RunsCode()
    bomb.marker = marker
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": bomb}, f)
    torch.save({"model": {"x": bomb}}, tmp_path / "evil_zip.pth")
    for name in ("evil.pth", "evil_zip.pth"):
        with pytest.raises(WeightsError, match="cannot read checkpoint"):
            read_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_torchscript_archives_are_refused_with_the_conversion(tmp_path):
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), tmp_path / "ViT-B-16.pt")
    with pytest.raises(WeightsError, match=r"TorchScript archive.*torch\.jit\.load"):
        read_checkpoint(tmp_path / "ViT-B-16.pt")


def test_find_backbone_names_a_missing_key(tmp_path):
    with pytest.raises(WeightsError, match="has no 'ema'"):
        find_backbone({"model": {"cls_token": torch.zeros(1)}}, "ema")


def test_a_teacher_must_be_complete(tmp_path):
    model = timm_vit("vit_base_patch16_clip_224", num_classes=16, img_size=32, patch_size=16)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.save(state, tmp_path / "no_head.pth")
    target = timm.create_model("vit_base_patch16_clip_224", pretrained=False, num_classes=16, img_size=32, patch_size=16, **TINY)
    with pytest.raises(WeightsError, match=r"no value for head\.weight"):
        load_weights(target, tmp_path / "no_head.pth", fresh_ok=())


@pytest.mark.slow
def test_eva_clip_pipeline_runs_offline_on_a_local_clip_tower(workdir, monkeypatch, capsys):
    """pipelines/eva_clip.yaml end to end without the hub: the teacher is a randomly initialised tiny CLIP
    ViT-B/16 tower saved in open_clip's file layout (OpenAI's key names, text tower included)."""
    from conftest import PIPELINES
    from graphssl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sizes = dict(depth=1, embed_dim=64, num_heads=2)
    tower = timm_vit("vit_base_patch16_clip_224.openai", seed=11, num_classes=512, img_size=224, patch_size=16, **sizes)
    with torch.no_grad():
        tower.head.bias.zero_()
    torch.save(layouts.openai_clip(tower.state_dict()), workdir / "open_clip_pytorch_model.bin")
    overrides = [f"nodes.target.weights={workdir / 'open_clip_pytorch_model.bin'}",
                 *[f"nodes.target.model_kwargs.{k}={v}" for k, v in sizes.items()],
                 "nodes.encoder.depth=1", "train.steps=2", "data.limit=16", "data.batch_size=4", "eval.limit=16", "device=cpu"]
    assert main(["run", str(PIPELINES / "eva_clip.yaml"), *overrides]) == 0
    out = capsys.readouterr().out
    assert "target.features: loaded 21 tensors from" in out and "CLIP, OpenAI/open_clip layout" in out
    assert "knn_top1=" in out
