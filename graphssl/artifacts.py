"""Trained modules on disk: a stage's product, read back by later stages and by ``source:`` references.

A modules file holds, per node, its component type, its config (JSON values) and its
weights (tensors); an owner's copies are stored as ``OWNER.NODE``. It holds nothing
but strings, numbers and tensors, so it is read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from graphssl import registry
from graphssl.component import BuildContext, Owner
from graphssl.errors import did_you_mean
from graphssl.io import atomic_write

if TYPE_CHECKING:
    from graphssl.build import Prepared

MODULE_SUFFIXES = (".pt", ".pth", ".ckpt")


def module_entries(modules: Mapping[str, nn.Module], prepared: "Prepared",
                   executor_state: dict | None = None) -> dict[str, dict[str, Any]]:
    """Every module-owning node as {type, config, state_dict}; an owner's copies as ``OWNER.NODE``.

    ``executor_state``: the executor's full state dict, when the modules are sharded (FSDP).
    """
    entries = {}
    for name, module in modules.items():
        node = prepared.spec.nodes[name]
        if executor_state is None:
            weights = module.state_dict()
        else:
            prefix = f"nodes.{name}."
            weights = {k[len(prefix):]: v for k, v in executor_state.items() if k.startswith(prefix)}
        entries[name] = {"type": node.type_name, "config": node.config.model_dump(mode="json"), "state_dict": weights}
        if isinstance(module, Owner):
            for target in node.cls.provides(node.config):
                base = prepared.spec.nodes[target]
                entries[f"{name}.{target}"] = {"type": base.type_name, "config": base.config.model_dump(mode="json"),
                                               "state_dict": module.copy_of(target).state_dict()}
    return entries


def save_modules(modules: Mapping[str, nn.Module], prepared: "Prepared", path: Path,
                 executor_state: dict | None = None) -> Path:
    """Write a stage's trained modules to ``path`` atomically."""
    data = prepared.cfg.data
    payload = {"nodes": module_entries(modules, prepared, executor_state), "pipeline": prepared.cfg.name,
               "image_size": data.image_size, "channels": data.channels}
    return atomic_write(path, lambda f: torch.save(payload, f))


def build_entry(entry: Mapping[str, Any], image_size: int, channels: int, device: torch.device | str,
                with_weights: bool) -> nn.Module:
    """A frozen module (eval mode, no gradients) from one entry of a modules file."""
    cls = registry.get(entry["type"])
    if cls is None:
        raise ValueError(f"the checkpoint's component {entry['type']!r} is not registered")
    ctx = BuildContext(image_size=image_size, channels=channels, device=torch.device(device))
    module = cls(cls.Config.model_validate(entry["config"]), ctx)
    if with_weights:
        module.load_state_dict(entry["state_dict"])
    return module.to(device).eval().requires_grad_(False)


def read_modules(path: str | Path) -> dict[str, Any]:
    """The payload of a modules file, read without running any code it might carry."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["nodes"]
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except Exception as e:
        reason = str(e).splitlines()[0] if "weights_only" not in str(e) else "it holds objects other than tensors and plain values"
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}") from None
    return payload


def load_checkpoint_module(path: str | Path, node: str | None, device: torch.device | str) -> nn.Module:
    """A frozen module from a modules file, by node name (optional when the file holds one)."""
    payload = read_modules(path)
    entries = payload["nodes"]
    if node is None:
        if len(entries) != 1:
            raise ValueError(f"checkpoint {path} holds several modules ({', '.join(entries)}); name one as {path}#NODE")
        node = next(iter(entries))
    if node not in entries:
        raise ValueError(f"checkpoint {path} has no module {node!r}{did_you_mean(node, entries)} (it has: {', '.join(entries)})")
    return build_entry(entries[node], payload["image_size"], payload["channels"], device, with_weights=True)


class ModuleLoader:
    """``ctx.load_module`` for one stage: "STAGE.NODE" from an earlier stage, or "PATH[#NODE]".

    ``stages``: every stage of the plan (name -> its Prepared); ``allowed``: the stages this one
    needs, directly or not; ``trained``: modules files of the stages trained so far. Before an
    earlier stage has trained (``graphssl check``, the dry run) its module is built untrained
    from that stage's config, so shapes are checked end to end before anything trains.
    """

    def __init__(self, stage: str | None = None, stages: Mapping[str, "Prepared"] | None = None,
                 allowed: set[str] = frozenset(), trained: Mapping[str, Path] | None = None,
                 device: torch.device | str = "cpu"):
        self.stage, self.stages, self.allowed = stage, dict(stages or {}), set(allowed)
        self.trained, self.device = dict(trained or {}), device

    def __call__(self, ref: str) -> nn.Module:
        head, dot, node = ref.partition(".")
        if dot and head in self.stages:
            if head not in self.allowed:
                raise ValueError(f"{ref!r}: stage {self.stage!r} loads from stage {head!r} but does not list it in needs")
            if head in self.trained:
                return load_checkpoint_module(self.trained[head], node, self.device)
            return self._untrained(self.stages[head], node)
        path, _, node_name = ref.partition("#")
        if Path(path).suffix in MODULE_SUFFIXES or Path(path).exists():
            return load_checkpoint_module(path, node_name or None, self.device)
        choices = [f"{s}.{n}" for s, prepared in self.stages.items() for n in prepared.spec.nodes]
        raise ValueError(f"cannot load {ref!r}: not STAGE.NODE of an earlier stage nor a checkpoint file{did_you_mean(ref, choices)}")

    def _untrained(self, prepared: "Prepared", node: str) -> nn.Module:
        spec = prepared.spec
        owner, _, target = node.partition(".")
        base = spec.nodes.get(target) if target and owner in spec.nodes else spec.nodes.get(node)
        if base is None or base.config is None:
            choices = [n for n, s in spec.nodes.items() if s.config is not None]
            raise ValueError(f"stage {prepared.cfg.name!r} has no module {node!r}{did_you_mean(node, choices)}")
        entry = {"type": base.type_name, "config": base.config.model_dump(mode="json")}
        data = prepared.cfg.data
        return build_entry(entry, data.image_size, data.channels, self.device, with_weights=False)
