"""Typed registries of the things plugins register: names, aliases, owners."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import plugins
from .errors import DuplicateNameError, PluginError, UnknownNameError

T = TypeVar("T")

#: kind -> (registration hook, label used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "model_source": ("register_model_sources", "model source"),
    "dataset": ("register_datasets", "dataset"),
    "drafter": ("register_drafters", "drafter"),
    "draft_policy": ("register_draft_policies", "draft-length policy"),
    "quantizer": ("register_quantizers", "quantizer"),
    "backend": ("register_backends", "backend"),
    "domain_model": ("register_domain_models", "domain model"),
    "benchmark": ("register_benchmarks", "benchmark"),
}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with the plugin that registered it."""

    name: str
    obj: T
    plugin: str
    aliases: tuple[str, ...] = ()


class Registry(Generic[T]):
    """Names and aliases of one kind of plugin object; duplicates are rejected."""

    def __init__(self, kind: str, label: str | None = None):
        self.kind = kind
        self.label = label or KINDS.get(kind, (None, kind))[1]
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def add(self, obj: T, *, plugin: str, aliases: Iterable[str] = (), name: str | None = None) -> Entry[T]:
        """Add ``obj`` under ``name`` (default ``obj.name``) and its aliases."""
        primary = name if name is not None else getattr(obj, "name", None)
        if not isinstance(primary, str) or not primary:
            raise PluginError(
                f"plugin {plugin!r} registered a {self.label} without a name: "
                f"give {obj!r} a non-empty string attribute 'name'"
            )
        aliases = tuple(aliases)
        for key in (primary, *aliases):
            owner = self._owner(key)
            if owner is not None:
                raise DuplicateNameError(
                    f"{self.label} name {key!r} is registered by both plugin {owner.plugin!r} "
                    f"and plugin {plugin!r}; uninstall one of them or rename one registration"
                )
        entry = Entry(primary, obj, plugin, aliases)
        self._entries[primary] = entry
        for alias in aliases:
            self._aliases[alias] = primary
        return entry

    def _owner(self, key: str) -> Entry[T] | None:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def entry(self, name: str) -> Entry[T]:
        """The entry for a name or alias; unknown names get close matches in the error."""
        found = self._owner(name)
        if found is None:
            raise UnknownNameError(self.label, name, [*self._entries, *self._aliases])
        return found

    def get(self, name: str) -> T:
        """The object registered under a name or alias."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Primary names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


_cache: dict[str, tuple[int, Registry[Any]]] = {}
_cache_lock = threading.RLock()


def build_registry(kind: str) -> Registry[Any]:
    """Collect one kind from every plugin's registration hook.

    A plugin whose hook raises is skipped with a warning; a duplicate name between
    two plugins is an error naming both, because silently picking one would make
    results depend on install order.
    """
    if kind not in KINDS:
        raise UnknownNameError("plugin kind", kind, KINDS)
    hook_name, label = KINDS[kind]
    registry: Registry[Any] = Registry(kind, label)
    per_plugin: dict[str, list[tuple[Any, tuple[str, ...]]]] = {}

    def kwargs_for(plugin_name: str) -> dict[str, Any]:
        bucket = per_plugin[plugin_name] = []

        def register(obj: Any, aliases: Iterable[str] = ()) -> None:
            bucket.append((obj, (aliases,) if isinstance(aliases, str) else tuple(aliases)))

        return {"register": register}

    # Only plugins whose hook returned normally contribute: a half-registered
    # broken plugin would otherwise leave some of its names behind.
    for plugin_name, _ in plugins.call_each(hook_name, kwargs_for=kwargs_for):
        for obj, aliases in per_plugin[plugin_name]:
            registry.add(obj, plugin=plugin_name, aliases=aliases)
    return registry


def get_registry(kind: str) -> Registry[Any]:
    """The registry of one kind, rebuilt when plugins were added or removed."""
    generation = plugins.registry_generation()
    with _cache_lock:
        cached = _cache.get(kind)
        if cached is not None and cached[0] == generation:
            return cached[1]
        registry = build_registry(kind)
        _cache[kind] = (generation, registry)
        return registry


def names_by_plugin(plugin_name: str) -> dict[str, list[str]]:
    """For ``crossedge plugins``: kind -> names that one plugin registered."""
    result: dict[str, list[str]] = {}
    for kind in KINDS:
        names = [e.name for e in get_registry(kind).entries() if e.plugin == plugin_name]
        if names:
            result[kind] = names
    return result
