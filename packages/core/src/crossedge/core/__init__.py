"""crossedge-core: the plugin hooks, registries, model sources, CLI and benchmark harness."""

from __future__ import annotations

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
from .lazy import lazy_exports
from .plugins import get_plugin_manager, register_plugin, registered, unregister_plugin
from .registry import Registry, get_registry

# Model sources are imported on first use (PEP 562): plugin modules import this package
# just for ``hookimpl``, and ``crossedge --help`` should pay for nothing more.
_LAZY: dict[str, str] = {
    "LoadedModel": ".sources",
    "ModelSource": ".sources",
    "load_model": ".sources",
    "resolve_model": ".sources",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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
