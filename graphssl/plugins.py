"""A pipeline's own components without a package: ``plugins: [my_losses.py, my_package.components]``.

Each entry is a Python file (a path ending in ``.py``, relative to the
pipeline file) or a dotted module name. It is imported before the pipeline is
validated, so its ``@register`` calls run; ``graphssl components`` shows where
each component came from. A plugin is code, run like any import: name only
files you trust. The same file imported again (by another pipeline, or a
second validation) is the same module; its components are registered again
when the registry has lost them.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from graphssl import registry
from graphssl.component import Component

_LOADED: dict[str, tuple[ModuleType, dict[str, type[Component]]]] = {}  # file path or module name -> module, its components


class PluginError(Exception):
    """A plugin that cannot be imported; the message names it."""


def _where(error: BaseException, path: Path | None) -> str:
    """' (my_losses.py:12)': the innermost line of the plugin file in the traceback, or of a syntax error."""
    if path is None:
        return ""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename) == path:
        return ""  # its message already says where
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename and Path(f.filename) == path]
    return f" ({path.name}:{frames[-1].lineno})" if frames else ""


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"graphssl_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves the module's annotations through sys.modules
    sys.path.insert(0, str(path.parent))  # so that the file may import its neighbours
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_plugin(entry: str, base: Path) -> None:
    """Import one plugin (a file relative to ``base``, or a module name); PluginError says what went wrong."""
    is_file = entry.endswith(".py") or "/" in entry or "\\" in entry
    path = (base / entry).resolve() if is_file else None
    key = str(path) if path else entry
    origin = registry.Origin("file", str(path)) if path else registry.Origin("module", entry)
    registry.load_components()
    try:
        if key in _LOADED:
            for name, cls in _LOADED[key][1].items():
                with registry.importing(origin):
                    registry.register(name)(cls)
            return
        if path is not None and not path.is_file():
            raise PluginError(f"cannot import plugin {entry!r}: no file {path}")
        with registry.importing(origin) as found:
            try:
                module = _import_file(path) if path else importlib.import_module(entry)
            except BaseException:
                for name in found:  # what it registered before it failed: a fixed file is imported afresh
                    registry.unregister(name)
                raise
        _LOADED[key] = (module, found)
    except PluginError:
        raise
    except Exception as e:  # anything the plugin's code raises, a duplicate component name included
        raise PluginError(f"cannot import plugin {entry!r}: {type(e).__name__}: {e}{_where(e, path)}") from None


def load_plugins(entries: Any, base: str | Path) -> list[tuple[str, str]]:
    """Import a pipeline's ``plugins:``; returns (YAML path, message) for each that cannot be imported."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        return [("plugins", f"plugins is a list of files or modules, e.g. plugins: [my_losses.py], got {entries!r}")]
    problems = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry.strip():
            problems.append((f"plugins.{i}", f"a plugin is a file (my_losses.py) or a module (my_package.components), got {entry!r}"))
            continue
        try:
            load_plugin(entry.strip(), Path(base))
        except PluginError as e:
            problems.append((f"plugins.{i}", str(e)))
    return problems
