"""crossedge-core: the plugin hooks, registries, model sources, CLI and benchmark harness."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    BenchmarkError,
    CacheCorruptedError,
    ChecksumMismatchError,
    CrossedgeError,
    DuplicateNameError,
    ModelSourceError,
    OfflineError,
    PluginError,
    UnknownNameError,
)
from .hookspecs import hookimpl, hookspec
from .plugins import get_plugin_manager, register_plugin, registered, unregister_plugin
from .registry import Registry, get_registry

# Model sources are imported on first use (PEP 562): plugin modules import this package
# just for ``hookimpl``, and ``crossedge --help`` should pay for nothing more.
_LAZY: dict[str, str] = {
    "LoadedModel": "sources",
    "ModelSource": "sources",
    "load_model": "sources",
    "resolve_model": "sources",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BenchmarkError",
    "CacheCorruptedError",
    "ChecksumMismatchError",
    "CrossedgeError",
    "DuplicateNameError",
    "LoadedModel",
    "ModelSource",
    "ModelSourceError",
    "OfflineError",
    "PluginError",
    "Registry",
    "UnknownNameError",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_model",
    "register_plugin",
    "registered",
    "resolve_model",
    "unregister_plugin",
]
