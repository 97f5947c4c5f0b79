"""Where a backbone's tensors are in a checkpoint: the official training layouts (DINO, iBOT, DINOv2, MAE,
CLIP, BEiT, EVA, graphssl's own), unwrapped to one state dict before timm renames it (graphssl.weights)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

WRAPPERS = ("model", "state_dict", "module")  # single-level wrappers of a state dict
SHOWN = 8  # keys listed in a message


class WeightsError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def _first(keys, n: int = SHOWN) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _tensors(obj: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    """The tensors under ``prefix`` with it removed, or None when no key has it."""
    inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return inner or None


@dataclass
class Found:
    """A backbone state dict found in a checkpoint, before timm's renaming."""

    state: dict[str, torch.Tensor]
    layout: str
    dropped: list[str] = field(default_factory=list)
    mask_token: torch.Tensor | None = None


def _graphssl_node(payload: dict, key: str | None, source: str) -> tuple[dict, str]:
    entries = payload["nodes"]
    if key is None:
        encoders = [n for n, e in entries.items() if e.get("type") == "encoder.vit"]
        if len(encoders) != 1:
            raise WeightsError(f"{source} holds {len(encoders) or 'no'} encoder.vit modules "
                               f"({', '.join(encoders) or ', '.join(entries)}); name one as {source}#NODE")
        key = encoders[0]
    if key not in entries:
        raise WeightsError(f"{source} has no module {key!r} (it has: {', '.join(entries)})")
    return entries[key]["state_dict"], f"graphssl modules.pt, node {key}"


def find_backbone(obj: Any, key: str | None = None, source: str = "checkpoint") -> Found:
    """Unwrap a checkpoint to the backbone's tensors (see the module docstring for the layouts)."""
    layout: list[str] = []
    dropped: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("nodes"), dict):
        obj, name = _graphssl_node(obj, key, source)
        layout.append(name)
        key = None
    # nested dicts: a chosen key, the EMA teacher (DINO, iBOT, DINOv2), or a plain wrapper
    while isinstance(obj, dict) and not _is_state(obj):
        if key is not None and isinstance(obj.get(key), dict):
            obj, picked, key = obj[key], key, None
        elif isinstance(obj.get("teacher"), dict):
            obj, picked = obj["teacher"], "teacher"
        else:
            picked = next((w for w in WRAPPERS if isinstance(obj.get(w), dict)), None)
            if picked is None:
                break
            obj = obj[picked]
        layout.append(picked)
    if not isinstance(obj, dict) or not _tensors(obj):
        what = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{source}: no tensors found (its top level has: {what[:300]})")
    state = _tensors(obj)
    # flat prefixes: DINOv2's training checkpoint ("teacher.backbone.*"), DDP and torch.compile wrappers
    for prefix in ([f"{key}."] if key else []) + ["teacher."]:
        inner = _strip(state, prefix)
        if inner is not None:
            dropped += [k for k in state if not k.startswith(prefix)]
            state, key = inner, None
            layout.append(prefix.rstrip("."))
            break
    if key is not None:
        raise WeightsError(f"{source} has no {key!r} (its keys start with: {_first(sorted({k.split('.')[0] for k in state}))})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    for prefix in ("backbone.", "vit."):
        inner = _strip(state, prefix)
        if inner is not None:
            mask = state.get("mask_token") if prefix == "vit." else None
            dropped += [k for k in state if not k.startswith(prefix) and not (prefix == "vit." and k == "mask_token")]
            state = inner
            layout.append(prefix.rstrip("."))
            return _finish(Found(state, _layout_name(layout, state), dropped, mask))
    return _finish(Found(state, _layout_name(layout, state), dropped))


def _finish(found: Found) -> Found:
    state = found.state
    if any(k.startswith("decoder") for k in state):  # MAE: the decoder and its mask token are not the encoder's
        found.dropped += [k for k in state if k.startswith("decoder") or k == "mask_token"]
        state = {k: v for k, v in state.items() if not (k.startswith("decoder") or k == "mask_token")}
    if "masked_embed" in state:  # iBOT's mask token [1, D]
        found.mask_token = state["masked_embed"]
        state = {k: v for k, v in state.items() if k != "masked_embed"}
    elif "mask_token" in state and found.mask_token is None:  # DINOv2's [1, D] (timm's converter drops it)
        found.mask_token = state["mask_token"]
    # DINOv2 with block_chunks > 0: blocks.CHUNK.INDEX.* (INDEX counts over all blocks)
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    found.state = state
    return found


def _layout_name(path: list[str], state: dict[str, torch.Tensor]) -> str:
    """A name for the report: what the keys look like, and where in the file they were."""
    if path and path[0].startswith("graphssl"):
        return path[0]
    keys = set(state)
    if "vit" in path:
        name = "graphssl encoder"
    elif any(k.startswith("decoder") for k in keys):
        name = "MAE"
    elif any(".inner_attn_ln." in k or ".mlp.w12." in k or ".mlp.w3." in k for k in keys):
        name = "EVA"
    elif any(".gamma_1" in k or "relative_position_index" in k for k in keys):
        name = "BEiT"
    elif any(k.startswith(("visual.", "module.visual.")) for k in keys):
        name = "CLIP, OpenAI/open_clip layout"
    elif "register_tokens" in keys or ("mask_token" in keys and state["mask_token"].ndim == 2) or \
            ("backbone" in path and any(".ls1.gamma" in k for k in keys)):
        name = "DINOv2"
    elif "backbone" in path:
        name = "DINO/iBOT"
    else:
        name = "timm"
    return f"{name}, {'/'.join(path)}" if path else name
