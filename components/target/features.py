"""EVA's target: patch features of a frozen encoder, one per student patch.

``source`` names the encoder:
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=...)``, e.g.
  ``timm:vit_large_patch14_clip_224.openai`` (EVA-01's CLIP-L/14) or
  ``timm:vit_base_patch16_clip_224.openai``. The target is the last layer's
  patch tokens after the final norm (CLIP's ``ln_post``), [CLS] and other
  prefix tokens dropped, then (``project: true``) the model's linear head
  applied per token: for timm's CLIP towers that is the visual projection
  (EVA-01: 768-d). ``weights`` loads the weights from a local file or folder
  instead of the hub, in any layout :mod:`graphssl.weights` reads (timm's,
  OpenAI's and open_clip's CLIP, BEiT and EVA through timm's converters),
  every tensor of the teacher checked. When the hub cannot be reached (or
  ``HF_HUB_OFFLINE=1``), only the local cache is tried, and missing weights
  are a one-line ValueError, not a minute of retries and a traceback.
- a timm model folder (``config.json`` and weights, as ``graphssl export`` or
  timm's ``save_for_hf`` write them): its architecture, arguments and weights.
- ``STAGE.NODE`` or a checkpoint path: a module from ``ctx.load_module``
  whose call returns patch tokens, either a tensor [B,N,F] or a dict with
  ``patches`` (``encoder.vit``).

``normalize: instance`` standardises each feature channel over an image's
tokens (data2vec's target normalisation). EVA regresses CLIP's features as
they are; a small self-trained teacher's tokens can instead share one
dominant direction (every token at cosine ~0.99 to every other), which leaves
a cosine loss almost nothing to learn; the instance norm removes it.

The encoder is frozen, kept in eval mode and run without gradients. Its grid
must be the student's (a ValueError names both); ``image_size`` resizes the
images (bicubic) to the teacher's input side first.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from graphssl.component import BuildContext, Component, ComponentConfig, In, Out
from graphssl.ops.grid import check_grid, grid_text
from graphssl.ports import IMAGES, TOKENS
from graphssl.registry import register
from graphssl.weights import WeightsError, announce, load_weights


class TimmPatchFeatures(nn.Module):
    """A timm ViT as a patch-feature extractor: final-normed patch tokens, optionally through its head."""

    def __init__(self, model: nn.Module, project: bool):
        super().__init__()
        self.model = model
        if project and not isinstance(getattr(model, "head", None), nn.Linear):
            raise ValueError(f"project: true needs a timm model whose head is a linear projection, "
                             f"got {type(getattr(model, 'head', None)).__name__}")
        self.project = project
        self.patch_size = model.patch_embed.patch_size[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(images)[:, self.model.num_prefix_tokens:]
        tokens = self.model.fc_norm(tokens)  # identity for CLIP towers (their final norm is in forward_features)
        return self.model.head(tokens) if self.project else tokens


def instance_norm_tokens(feats: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """float[B,N,F] -> float[B,N,F]: (x - mean_n x) / sqrt(var_n x + eps) per image and channel, the
    variance biased, over the N tokens (data2vec's ``F.instance_norm`` on its targets)."""
    mean = feats.mean(dim=1, keepdim=True)
    var = feats.var(dim=1, unbiased=False, keepdim=True)
    return (feats - mean) / torch.sqrt(var + eps)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can the Hugging Face hub (``HF_ENDPOINT``) be reached? False at once when ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (cache only, no retries) while the block runs, when ``offline``."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def create_timm_model(name: str, from_hub: bool, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a one-line ValueError instead of a hang or a traceback.

    ``from_hub``: the pretrained weights come from the hub (no local ``weights`` file). When the hub
    cannot be reached (or ``HF_HUB_OFFLINE=1``), only the local cache is tried, without timm's retries.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}")
    if from_hub and "." in name and name not in timm.list_pretrained(name):
        raise ValueError(f"timm has no pretrained weights named {name!r}")
    offline = from_hub and not hub_reachable()
    try:
        with hub_offline(offline):
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:
        if not pretrained:
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = ("the hub is unreachable (offline?) and they are not in the local cache" if offline else reason)
        raise ValueError(f"could not load pretrained weights for {name} ({where}); set weights: to a local file, "
                         "or run where the hub is reachable") from None


@register("target.features")
class FeatureTarget(Component):
    """images float[*,C,H,W] -> target float[*,N,F]: a frozen encoder's patch features."""

    no_grad = True

    class Config(ComponentConfig):
        source: str = Field(description='"timm:NAME", a timm model folder, "STAGE.NODE" of an earlier stage, or a '
                                        'graphssl checkpoint path')
        patch_size: int = Field(16, ge=1, description="the student's patch size, to check the grids align")
        image_size: Optional[int] = Field(None, ge=8, description="resize the images to this side before the teacher")
        pretrained: bool = Field(True, description="timm: load the pretrained weights")
        weights: Optional[str] = Field(None, description="timm: a local file or folder with the weights (no download): "
                                                         "timm's layout, OpenAI's or open_clip's CLIP, BEiT, EVA")
        model_kwargs: dict[str, Any] = Field(default_factory=dict,
                                             description="timm: overrides for create_model (img_size, patch_size, ...)")
        project: bool = Field(True, description="timm: apply the model's linear head per token (CLIP's visual "
                                                "projection); false: the normed tokens")
        normalize: Literal["none", "instance"] = Field(
            "none", description="none: the features as given (EVA); instance: each channel standardised over "
                                "an image's tokens (data2vec), which removes a direction shared by every token")

    inputs = {
        "images": In(IMAGES, "the teacher's view (EVA: the same crop as the student's)"),
        "like": In(IMAGES, "the student's view, read only for the grid check (default: images)", optional=True,
                   dims=("C", "Hs", "Ws")),
    }
    outputs = {"target": Out(TOKENS, "teacher features per patch")}

    def __init__(self, config: Config, ctx: BuildContext):
        super().__init__(config, ctx)
        folder = Path(config.source).expanduser()
        if config.source.startswith("timm:") or (folder / "config.json").is_file():
            kwargs = dict(config.model_kwargs)
            if not config.project:
                kwargs["num_classes"] = 0
            if config.source.startswith("timm:"):
                name, weights = config.source[len("timm:"):], config.weights
                model = create_timm_model(name, not weights and config.pretrained, config.pretrained and not weights, **kwargs)
            else:  # a timm folder: architecture and arguments from its config.json, its own weights
                name, weights = f"local-dir:{folder}", config.weights or str(folder)
                model = timm.create_model(name, pretrained=False, **kwargs)
            if weights:
                try:
                    report, _ = load_weights(model, weights, fresh_ok=())  # a frozen teacher must be complete
                except WeightsError as e:
                    raise ValueError(str(e)) from None
                announce(f"target.features: {report.summary()}")
            teacher: nn.Module = TimmPatchFeatures(model, config.project)
        else:
            if ctx.load_module is None:
                raise ValueError("target.features needs a module loader (ctx.load_module) to load its source")
            teacher = ctx.load_module(config.source)
        self.teacher = teacher.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FeatureTarget":
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode
        return self

    def forward(self, images: torch.Tensor, like: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:])
        size = self.config.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        with torch.no_grad():
            out = self.teacher(x)
        feats = out["patches"] if isinstance(out, dict) else out
        n = feats.shape[1]
        check_grid(n, "teacher grid " + grid_text(x, getattr(self.teacher, "patch_size", None), n),
                   images if like is None else like, self.config.patch_size)
        if self.config.normalize == "instance":
            feats = instance_norm_tokens(feats)
        return {"target": feats.reshape(*lead, n, feats.shape[-1])}
