"""Registry of components by short name (``mask.block``, ``loss.dino``).

Built-in components live in the ``graphssl.components`` package and register
on import. Other packages add theirs through the ``graphssl.components``
entry-point group: each entry point names a module (imported, so its
``@register`` calls run) or a Component class (registered under the entry
point's name).
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from graphssl.component import Component

ENTRY_POINT_GROUP = "graphssl.components"
_REGISTRY: dict[str, type[Component]] = {}
_loaded = False


class RegistryError(Exception):
    pass


def register(name: str):
    """Class decorator: register a Component under ``name``; duplicates are errors."""

    def decorate(cls: type[Component]) -> type[Component]:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise RegistryError(f"@register({name!r}) expects a Component subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"component name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; "
                f"cannot register {cls.__module__}.{cls.__qualname__} under it"
            )
        cls.type_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def load_components() -> dict[str, type[Component]]:
    """Import the built-in components and the entry-point plug-ins (once)."""
    global _loaded
    if _loaded:
        return _REGISTRY
    _loaded = True
    import graphssl.components as builtin

    for info in pkgutil.walk_packages(builtin.__path__, builtin.__name__ + "."):
        importlib.import_module(info.name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, Component):
            register(ep.name)(obj)
    return _REGISTRY


def get(name: str) -> type[Component] | None:
    return load_components().get(name)


def names() -> list[str]:
    return sorted(load_components())
