"""Registry of components by short name (``mask.block``, ``loss.dino``), with where each came from.

Built-in components live in the ``graphssl.components`` package and register
on import. Other packages add theirs through the ``graphssl.components``
entry-point group: each entry point names a module (imported, so its
``@register`` calls run) or a Component class (registered under the entry
point's name). A pipeline's ``plugins:`` imports local files or modules
(:mod:`graphssl.plugins`).
"""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Iterator, Mapping

from graphssl.component import Component, Evaluator, Owner

ENTRY_POINT_GROUP = "graphssl.components"
BUILTIN_PACKAGE = "graphssl.components"
_REGISTRY: dict[str, type[Component]] = {}
_loaded = False


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class Origin:
    """Where a component came from: ``built-in``, ``entry point`` (``where``: the entry point and its package),
    ``file`` (a plugin file's path) or ``module`` (a module that registered it on import)."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.where}".strip()


BUILT_IN = Origin("built-in")
_ORIGINS: dict[str, Origin] = {}
_importing: list[tuple[Origin, dict[str, type[Component]]]] = []  # innermost import last


@contextmanager
def importing(origin: Origin) -> Iterator[dict[str, type[Component]]]:
    """Components registered inside the block come from ``origin``; yields them by name as they register."""
    found: dict[str, type[Component]] = {}
    _importing.append((origin, found))
    try:
        yield found
    finally:
        _importing.pop()


def _inherited(cls: type, base: type, method: str) -> bool:
    """True when ``cls`` uses ``base``'s own ``method`` (plain or class method)."""
    def func(owner: type):
        value = getattr(owner, method)
        return getattr(value, "__func__", value)

    return func(cls) is func(base)


def _check_contract(name: str, cls: type[Component]) -> None:
    """The typed roles' duties that a class can be checked for before it is used."""
    if issubclass(cls, Owner):
        missing = [m for m in ("provides", "copy_of") if _inherited(cls, Owner, m)]
        if missing:
            raise RegistryError(f"{name}: an Owner implements {' and '.join(missing)}")
    if issubclass(cls, Evaluator):
        if _inherited(cls, Evaluator, "evaluate"):
            raise RegistryError(f"{name}: an Evaluator implements evaluate(resolve, data, limit)")
        for method, field in (("metric_names", "metric"), ("every", "every")):
            if _inherited(cls, Evaluator, method) and field not in cls.Config.model_fields:
                raise RegistryError(f"{name}: an Evaluator's Config has a {field!r} field, or the class overrides {method}()")


def register(name: str):
    """Class decorator: register a Component under ``name``; duplicates are errors."""

    def decorate(cls: type[Component]) -> type[Component]:
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise RegistryError(f"@register({name!r}) expects a Component subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise RegistryError(
                f"component name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__} ({_ORIGINS.get(name, '?')}); "
                f"cannot register {cls.__module__}.{cls.__qualname__} under it"
            )
        _check_contract(name, cls)
        cls.type_name = name
        _REGISTRY[name] = cls
        if cls.__module__.startswith(BUILTIN_PACKAGE + "."):
            origin = BUILT_IN  # however it came to be imported
        elif _importing:
            origin, found = _importing[-1]
            found[name] = cls
        else:
            origin = Origin("module", cls.__module__)
        if existing is None:
            _ORIGINS[name] = origin
        return cls

    return decorate


def unregister(name: str) -> None:
    """Forget the component ``name`` (a plugin that failed half-way through its import)."""
    _REGISTRY.pop(name, None)
    _ORIGINS.pop(name, None)


def _entry_point_origin(ep) -> Origin:
    dist = getattr(ep, "dist", None)
    package = f" (package {dist.name} {dist.version})" if dist is not None else ""
    return Origin("entry point", f"{ep.name} = {ep.value}{package}")


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
        with importing(_entry_point_origin(ep)):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, Component):
                register(ep.name)(obj)
    return _REGISTRY


def get(name: str) -> type[Component] | None:
    return load_components().get(name)


def names() -> list[str]:
    return sorted(load_components())


def origin(name: str) -> Origin | None:
    """Where the component ``name`` came from."""
    load_components()
    return _ORIGINS.get(name) if name in _REGISTRY else None


def builtin_names() -> list[str]:
    return sorted(n for n in load_components() if _ORIGINS.get(n) == BUILT_IN)


@contextmanager
def scope(components: Mapping[str, type[Component]] = {}, builtins_only: bool = False) -> Iterator[None]:
    """A change to the registry that is undone on exit (for tests): with ``builtins_only`` only the built-in
    components stay visible; ``components`` are registered on top. Whatever registers inside is gone after."""
    load_components()
    saved, saved_origins = dict(_REGISTRY), dict(_ORIGINS)
    if builtins_only:
        for name in [n for n in _REGISTRY if _ORIGINS.get(n) != BUILT_IN]:
            del _REGISTRY[name]
            _ORIGINS.pop(name, None)
    try:
        for name, cls in components.items():
            register(name)(cls)
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)
        _ORIGINS.clear()
        _ORIGINS.update(saved_origins)
