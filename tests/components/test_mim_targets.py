import pytest
import timm
import torch
from torch import nn

from graphssl.component import BuildContext
from graphssl.components.encoder.vit import ViTEncoder
from graphssl.components.target.features import FeatureTarget
from graphssl.components.target.tokenizer import TokenizerTarget
from graphssl.components.tokenizer.vqvae import VQVAE

TINY = dict(img_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=2)


def ctx_with(modules: dict[str, nn.Module]) -> BuildContext:
    return BuildContext(image_size=32, channels=3, load_module=lambda source: modules[source])


def tiny_vqvae(patch_size: int) -> VQVAE:
    cfg = VQVAE.Config(patch_size=patch_size, num_codes=16, code_dim=8, hidden_dim=16, num_res_blocks=1)
    return VQVAE(cfg, BuildContext(image_size=32, channels=3))


def test_tokenizer_target_ids_frozen_and_aligned():
    torch.manual_seed(0)
    vq = tiny_vqvae(4)
    target = TokenizerTarget(TokenizerTarget.Config(source="tok.vq", patch_size=4), ctx_with({"tok.vq": vq}))
    target.train()
    assert not target.tokenizer.training and not any(p.requires_grad for p in target.parameters())
    images = torch.randn(2, 3, 3, 32, 32)
    ids = target(images=images)["target"]
    assert ids.shape == (2, 3, 64) and ids.dtype == torch.long
    torch.testing.assert_close(ids, vq.encode(images))


def test_tokenizer_on_a_half_size_view_like_beit():
    # BEiT: the tokenizer sees a half-size copy (8x downsampling) of the student's crop (patch 16): same grid
    vq = tiny_vqvae(2)
    target = TokenizerTarget(TokenizerTarget.Config(source="p", patch_size=4), ctx_with({"p": vq}))
    ids = target(images=torch.randn(2, 3, 16, 16), like=torch.randn(2, 3, 32, 32))["target"]
    assert ids.shape == (2, 64)


def test_tokenizer_grid_mismatch_names_both_grids():
    target = TokenizerTarget(TokenizerTarget.Config(source="p", patch_size=4), ctx_with({"p": tiny_vqvae(8)}))
    with pytest.raises(ValueError, match=r"tokenizer grid 4x4 \(16 tokens\).*student grid 8x8 \(64 tokens"):
        target(images=torch.randn(1, 3, 32, 32))


def test_tokenizer_without_encode_is_rejected():
    with pytest.raises(TypeError, match="no encode"):
        TokenizerTarget(TokenizerTarget.Config(source="p"), ctx_with({"p": nn.Linear(2, 2)}))


def test_features_from_timm_clip_with_local_weights(tmp_path):
    torch.manual_seed(0)
    name = "vit_base_patch16_clip_224.openai"
    reference = timm.create_model(name, pretrained=False, **TINY).eval()
    path = tmp_path / "clip_tiny.pth"
    torch.save(reference.state_dict(), path)
    cfg = FeatureTarget.Config(source=f"timm:{name}", patch_size=4, weights=str(path), model_kwargs=TINY)
    target = FeatureTarget(cfg, BuildContext(image_size=32, channels=3))  # pretrained=True, from the local file
    target.train()
    assert not target.teacher.training and not any(p.requires_grad for p in target.parameters())
    images = torch.randn(2, 2, 3, 32, 32)
    feats = target(images=images)["target"]
    assert feats.shape == (2, 2, 64, 512)  # 8x8 patches, CLIP's projection to 512
    with torch.no_grad():
        x = reference.forward_features(images.reshape(4, 3, 32, 32))  # after the final norm (ln_post)
        expected = x[:, 1:] @ reference.head.weight.t() + reference.head.bias  # [CLS] dropped, projected
    torch.testing.assert_close(feats.reshape(4, 64, 512), expected)
    assert feats.grad_fn is None


def test_features_without_projection_and_resize(tmp_path):
    cfg = FeatureTarget.Config(source="timm:vit_base_patch16_clip_224", patch_size=4, pretrained=False,
                               model_kwargs=TINY, project=False, image_size=32)
    target = FeatureTarget(cfg, BuildContext(image_size=32, channels=3))
    feats = target(images=torch.randn(2, 3, 16, 16), like=torch.randn(2, 3, 32, 32))["target"]
    assert feats.shape == (2, 64, 64)  # resized to 32 px for the teacher: 8x8 tokens of width 64


def test_features_from_an_earlier_stage_encoder_and_grid_check():
    torch.manual_seed(0)
    ctx = BuildContext(image_size=32, channels=3)
    encoder = ViTEncoder(ViTEncoder.Config(patch_size=8, depth=1, embed_dim=64, num_heads=2), ctx).eval()
    target = FeatureTarget(FeatureTarget.Config(source="teacher.encoder", patch_size=8),
                           ctx_with({"teacher.encoder": encoder}))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(images=images)["target"], encoder(images=images)["patches"])
    wrong = FeatureTarget(FeatureTarget.Config(source="teacher.encoder", patch_size=4),
                          ctx_with({"teacher.encoder": encoder}))
    with pytest.raises(ValueError, match=r"teacher grid 4x4 \(16 tokens\).*student grid 8x8"):
        wrong(images=images)


def test_features_offline_without_cached_weights_is_one_clear_error(tmp_path, monkeypatch):
    import socket

    from huggingface_hub import constants

    from graphssl.components.target import features

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1: cache only, no retries
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    dialled = []

    def no_network(*args):  # a name lookup or a TCP connection: the first step of every download or retry
        dialled.append(args)
        raise OSError("the test allows no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert not features.hub_reachable()
    name = "vit_tiny_patch16_224.augreg_in21k"
    with pytest.raises(ValueError, match=rf"^could not load pretrained weights for {name} \(.*offline\?"):
        FeatureTarget(FeatureTarget.Config(source=f"timm:{name}", patch_size=16), BuildContext(image_size=224, channels=3))
    assert dialled == []  # offline: not one connection tried, so no minute of download retries
    assert constants.HF_HUB_OFFLINE is True  # the offline switch is restored, not leaked
    with pytest.raises(ValueError, match="unknown timm model 'vit_nope'"):
        FeatureTarget(FeatureTarget.Config(source="timm:vit_nope"), BuildContext(image_size=224, channels=3))
    with pytest.raises(ValueError, match="no pretrained weights named 'vit_tiny_patch16_224.nope'"):
        FeatureTarget(FeatureTarget.Config(source="timm:vit_tiny_patch16_224.nope"), BuildContext(image_size=224, channels=3))


def test_hub_offline_switch_is_scoped(monkeypatch):
    from huggingface_hub import constants

    from graphssl.components.target.features import hub_offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with hub_offline(True):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE is False
    with hub_offline(False):
        assert constants.HF_HUB_OFFLINE is False


def test_instance_norm_of_targets_matches_the_formula_and_removes_the_shared_direction():
    from graphssl.components.target.features import instance_norm_tokens

    feats = torch.tensor([[[1.0, 10.0], [3.0, 10.5], [5.0, 9.5]]])  # [1, 3 tokens, 2 channels]
    # channel 0: mean 3, biased var 8/3; channel 1: mean 10, biased var 1/6
    expected = torch.tensor([[[-2.0, 0.0], [0.0, 0.5], [2.0, -0.5]]]) / torch.sqrt(torch.tensor([8 / 3, 1 / 6]) + 1e-5)
    torch.testing.assert_close(instance_norm_tokens(feats), expected)
    torch.testing.assert_close(instance_norm_tokens(feats), torch.nn.functional.instance_norm(
        feats.transpose(1, 2)).transpose(1, 2))

    torch.manual_seed(0)
    ctx = BuildContext(image_size=32, channels=3)
    encoder = ViTEncoder(ViTEncoder.Config(patch_size=8, depth=1, embed_dim=64, num_heads=2), ctx).eval()
    shared = torch.zeros(64)
    shared[0] = 100.0  # one dominant channel shared by every token, as a briefly trained MAE teacher's

    class Shifted(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, images):
            return {"patches": self.encoder(images=images)["patches"] + shared}

    teacher = Shifted()
    plain = FeatureTarget(FeatureTarget.Config(source="t", patch_size=8), ctx_with({"t": teacher}))
    normed = FeatureTarget(FeatureTarget.Config(source="t", patch_size=8, normalize="instance"), ctx_with({"t": teacher}))
    images = torch.randn(2, 2, 3, 32, 32)
    a, b = plain(images=images)["target"], normed(images=images)["target"]
    assert b.shape == a.shape == (2, 2, 16, 64)
    cos = lambda t: torch.nn.functional.cosine_similarity(t[..., :1, :], t[..., 1:, :], dim=-1).mean()  # noqa: E731
    assert cos(a) > 0.99 and abs(cos(b)) < 0.5
    torch.testing.assert_close(b.mean(dim=-2), torch.zeros(2, 2, 64), atol=1e-5, rtol=0)
