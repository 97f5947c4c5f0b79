"""Released and exported weights into timm models: every layout through one safe reader.

``load_weights(model, "PATH[#KEY]")`` reads a checkpoint without running any of
its code (``torch.load(weights_only=True)`` or safetensors), finds the
backbone's tensors in it, renames them through the timm model's own
``checkpoint_filter_fn`` (the converters timm ships for OpenAI and open_clip
CLIP, DINOv2, BEiT, EVA, ...), checks every shape and loads them. Layouts:

- a timm model folder: ``config.json`` beside ``model.safetensors`` (or
  ``pytorch_model.bin``, ``open_clip_pytorch_model.bin``, ...), as written by
  ``graphssl export`` or timm's ``save_for_hf``;
- a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` state dict in timm's
  layout, bare or under ``model``, ``state_dict`` or ``module``;
- DINO and iBOT training checkpoints: ``student``/``teacher`` dicts of
  ``[module.]backbone.*`` and ``[module.]head.*`` (the teacher is read, as the
  official releases; ``#student`` picks the student);
- DINOv2: ``{"teacher": {"backbone.*", "dino_head.*", ...}}`` (its
  ``teacher_checkpoint.pth``), the training checkpoint's
  ``{"model": {"teacher.backbone.*", ...}}``, or a bare backbone; LayerScale
  ``ls1.gamma``, register tokens and chunked blocks (``blocks.C.I.*``);
- MAE: ``{"model": ...}``; the decoder (``decoder_*`` and its ``mask_token``) is dropped;
- OpenAI and open_clip CLIP (``visual.*``, ``module.visual.*``, ``visual.trunk.*``);
- a graphssl component state dict (``vit.*``, ``mask_token``) or ``modules.pt``
  (``#NODE`` names the node).

The masked-image-modelling token (graphssl's ``mask_token``, DINOv2's
``mask_token``, iBOT's ``masked_embed``) is returned beside the report for
encoders that have one. A shape that differs is an error naming the key and
both shapes (a different image size resamples the position table, as timm
does, and says so); tensors the file lacks are an error unless they are a
head or the mask token (those start fresh); tensors the model has no place
for (heads, decoders, a text tower) are dropped. What was loaded and what was
left is in the returned :class:`LoadReport`.
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from graphssl.layouts import SHOWN, WeightsError, _first, find_backbone  # noqa: F401 (WeightsError: re-exported)

# the files a timm folder may hold its weights in, in timm's order of preference
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
                "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
FRESH_OK = ("head.", "fc_norm.", "mask_token")  # may be missing from a file: heads start fresh


@dataclass
class LoadReport:
    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # the model's tensors the file has no value for
    dropped: list[str] = field(default_factory=list)  # the file's tensors the model has no place for
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors from {self.source} ({self.layout})"
        if self.fresh:
            text += f"; starting fresh: {_grouped(self.fresh)}"
        if self.dropped:
            text += f"; dropped (no place in the model): {_grouped(self.dropped)}"
        return "; ".join([text, *self.notes])


def _grouped(keys: list[str]) -> str:
    """'head.0.weight', 'head.0.bias', 'head.last.weight' -> 'head.* (3)'."""
    groups: dict[str, int] = {}
    for key in keys:
        head = key.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(name if n == 1 and name in keys else f"{name}.* ({n})" for name, n in groups.items())


_announced: set[str] = set()


def announce(message: str) -> None:
    """Print a load summary once per process (a run builds its modules for the dry run and again to train)."""
    if message not in _announced:
        _announced.add(message)
        print(message, flush=True)


# ----------------------------------------------------------------------------- reading files

def split_ref(ref: str) -> tuple[str, str | None]:
    """'PATH#KEY' -> (PATH, KEY); a '#' that is part of an existing path stays in it."""
    path, sep, key = ref.rpartition("#")
    if not sep or Path(ref).exists():
        return ref, None
    return path, key or None


def _torch_load(path: Path) -> Any:
    if zipfile.is_zipfile(path):
        names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            raise WeightsError(
                f"{path} is a TorchScript archive (like OpenAI's CLIP .pt files); loading it would run its code. "
                "Where you trust it, convert it once to a state dict: python -c \"import torch; "
                f"torch.save(torch.jit.load('{path}', map_location='cpu').state_dict(), 'state_dict.pt')\"")
    try:
        # DINO and iBOT store their argparse options beside the weights; a Namespace holds plain values
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "empty or truncated"
        raise WeightsError(f"cannot read checkpoint {path}: not a state-dict file ({type(e).__name__}: {first})") from None


def read_checkpoint(path: str | Path) -> Any:
    """The object a checkpoint file or timm folder holds (nested dicts of tensors), read without running code."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / name for name in FOLDER_FILES if (path / name).is_file()), None)
        if found is None:
            have = ", ".join(sorted(p.name for p in path.iterdir())[:SHOWN]) or "nothing"
            raise WeightsError(f"checkpoint folder {path} has no weights file ({' or '.join(FOLDER_FILES[:3])}, ...; "
                               f"it has: {have})")
        path = found
    if not path.exists():
        raise WeightsError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            raise WeightsError(f"cannot read checkpoint {path}: not a safetensors file ({type(e).__name__}: {e})") from None
    return _torch_load(path)


# ----------------------------------------------------------------------------- loading

def timm_filter(model: nn.Module) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the timm module that defines the model's class."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _grid(positions: int) -> str:
    """'37x37' for 1369 or 1370 positions (a square grid, with or without [CLS]'s)."""
    for n in (positions, positions - 1):
        side = round(n ** 0.5)
        if side * side == n:
            return f"{side}x{side}"
    return f"{positions}-position"


def _patch_kernel(state: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    for key, value in state.items():
        if (key.endswith("patch_embed.proj.weight") or key.endswith("visual.conv1.weight")) and value.ndim == 4:
            return key, value
    return None


def load_weights(model: nn.Module, ref: str | Path, fresh_ok: tuple[str, ...] = FRESH_OK) -> tuple[LoadReport, torch.Tensor | None]:
    """Load ``ref`` ('PATH[#KEY]') into a timm model; returns the report and the file's mask token, if any.

    Raises WeightsError for an unreadable file, an unknown layout, a shape that
    differs, or a missing tensor outside ``fresh_ok``.
    """
    path, key = split_ref(str(ref))
    found = find_backbone(read_checkpoint(path), key, path)
    own = model.state_dict()
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    kernel = _patch_kernel(found.state)
    if kernel is not None and isinstance(proj, nn.Conv2d) and tuple(kernel[1].shape[-2:]) != tuple(proj.weight.shape[-2:]):
        raise WeightsError(f"{path}: {kernel[0]}: checkpoint {list(kernel[1].shape)}, model {list(proj.weight.shape)} "
                           f"(patch size {tuple(kernel[1].shape[-2:])} vs {tuple(proj.weight.shape[-2:])}); set the "
                           "encoder's patch_size to the checkpoint's")
    source_pos = found.state.get("pos_embed")
    convert = timm_filter(model)
    state = convert(dict(found.state), model) if convert is not None else dict(found.state)
    report = LoadReport(str(ref), found.layout, dropped=list(found.dropped))
    if len(found.state) - len(state) > 1:  # more than the mask token timm's DINOv2 converter drops
        report.notes.append(f"timm's converter made {len(state)} tensors of the file's {len(found.state)} "
                            "(the rest are not the image tower's)")
    pos = state.get("pos_embed")
    if source_pos is not None and pos is not None and source_pos.shape != pos.shape:
        report.notes.append(f"pos_embed resampled from the checkpoint's {_grid(source_pos.shape[-2])} grid to the "
                            f"model's {_grid(pos.shape[-2])} (another image size; bicubic, as timm)")
    mismatched = [f"{k}: checkpoint {list(v.shape)}, model {list(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise WeightsError(f"{path} ({found.layout}) does not fit the model: {'; '.join(mismatched[:SHOWN])}"
                           + (f" (and {len(mismatched) - SHOWN} more)" if len(mismatched) > SHOWN else ""))
    usable = {k: v for k, v in state.items() if k in own}
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in usable]
    if not usable:
        raise WeightsError(f"{path}: unknown checkpoint layout: none of its {len(state)} tensors fits a "
                           f"{type(model).__name__}; its first keys: {_first(state)}")
    blocking = [k for k in missing if not k.startswith(fresh_ok)]
    extra_blocks = [k for k in unexpected if k.startswith("blocks.")]
    if blocking or extra_blocks:
        parts = []
        if blocking:
            parts.append(f"the file has no value for {_first(blocking)}")
        if unexpected:
            parts.append(f"the model has no place for {_first(unexpected)}")
        raise WeightsError(f"{path} ({found.layout}) does not fit the model: {'; '.join(parts)} "
                           "(the encoder's arch, depth, width, layer_scale and register tokens must match the checkpoint's)")
    model.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    report.fresh = missing
    report.dropped += unexpected
    return report, found.mask_token
