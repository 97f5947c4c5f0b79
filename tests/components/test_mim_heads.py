import torch
import torch.nn.functional as F

from graphssl.component import BuildContext
from graphssl.components.head.features import FeatureHead
from graphssl.components.head.pixels import PixelHead
from graphssl.components.head.vocab import VocabHead
from graphssl.ops.patches import patchify

CTX = BuildContext(image_size=32, channels=3)


def test_pixel_head_is_simmims_conv1x1_and_pixel_shuffle():
    torch.manual_seed(0)
    p, c, d, gh = 4, 3, 16, 5
    head = PixelHead(PixelHead.Config(in_dim=d, patch_size=p), CTX)
    tokens = torch.randn(2, gh * gh, d)
    pred = head(tokens=tokens)["pred"]
    assert pred.shape == (2, gh * gh, p * p * c)
    # SimMIM: Conv2d(D, p*p*C, 1) + PixelShuffle(p); its channel c*p*p + i*p + j is our unit (i*p + j)*C + c.
    order = torch.tensor([(i * p + j) * c + ch for ch in range(c) for i in range(p) for j in range(p)])
    conv = torch.nn.Conv2d(d, p * p * c, 1)
    conv.weight.data = head.proj.weight.data[order].view(p * p * c, d, 1, 1)
    conv.bias.data = head.proj.bias.data[order]
    fmap = tokens.transpose(1, 2).reshape(2, d, gh, gh)
    image = F.pixel_shuffle(conv(fmap), p)  # [2, C, gh*p, gh*p]
    torch.testing.assert_close(patchify(image, p), pred)


def test_vocab_and_feature_heads():
    torch.manual_seed(0)
    vocab = VocabHead(VocabHead.Config(in_dim=64, num_codes=512), CTX)
    logits = vocab(tokens=torch.randn(2, 3, 10, 64))["logits"]
    assert logits.shape == (2, 3, 10, 512)
    assert abs(vocab.proj.weight.std().item() - 0.02) < 0.003 and not vocab.proj.bias.any()
    feats = FeatureHead(FeatureHead.Config(in_dim=64, out_dim=48), CTX)
    pred = feats(tokens=torch.randn(4, 10, 64))["pred"]
    assert pred.shape == (4, 10, 48)
    x = torch.randn(4, 10, 64)
    torch.testing.assert_close(feats(tokens=x)["pred"], x @ feats.proj.weight.t() + feats.proj.bias)
