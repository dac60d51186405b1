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
from .plugins import get_plugin_manager, register_plugin, registered, unregister_plugin
from .registry import Registry, get_registry
from .sources import LoadedModel, ModelSource, load_model, resolve_model

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
