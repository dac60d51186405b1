"""Typed registries of the things plugins register: names, aliases, owners."""

from __future__ import annotations

import importlib
import re
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
    "unmasking": ("register_unmasking_strategies", "unmasking strategy"),
    "quantizer": ("register_quantizers", "quantizer"),
    "backend": ("register_backends", "backend"),
    "scorer": ("register_scorers", "scorer"),
    "loss": ("register_losses", "loss"),
    "algorithm": ("register_algorithms", "algorithm"),
    "fusion": ("register_fusion_blocks", "fusion block"),
    "benchmark": ("register_benchmarks", "benchmark"),
    "model_format": ("register_model_formats", "model format"),
}

#: Kinds built from a spec, which register classes; every other kind registers instances (hookspecs.py).
CLASS_KINDS: frozenset[str] = frozenset(
    {"drafter", "draft_policy", "unmasking", "quantizer", "backend", "scorer", "loss", "algorithm", "fusion"}
)


#: ``"package.module:attribute"``, optionally ending in ``()`` to register what calling it returns.
REFERENCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?P<call>\(\))?$")


def is_reference(obj: object) -> bool:
    """True when ``obj`` is a lazy ``"module:attr"`` reference rather than the object itself."""
    return isinstance(obj, str)


def resolve_reference(reference: str, *, plugin: str, label: str, name: str) -> Any:
    """Import the object a ``"module:attr"`` reference names; a failure is a :class:`PluginError`."""
    match = REFERENCE.match(reference)
    if match is None:
        raise PluginError(
            f"plugin {plugin!r} registered {label} {name!r} as {reference!r}, which is not a "
            f"'package.module:attribute' reference"
        )
    try:
        obj: Any = importlib.import_module(match["module"])
        for part in match["attr"].split("."):
            obj = getattr(obj, part)
        if match["call"]:
            obj = obj()
    except Exception as exc:  # any failure here is the plugin's, and must name it
        raise PluginError(
            f"plugin {plugin!r} registered {label} {name!r} as {reference!r}, which does not import: "
            f"{type(exc).__name__}: {exc}. Upgrade or reinstall the distribution that provides it."
        ) from exc
    return obj


def check_registered_shape(obj: object, *, kind: str, plugin: str, label: str, name: str) -> None:
    """Refuse an instance where ``kind`` registers classes, or a class where it registers instances."""
    if kind not in KINDS:
        return  # a registry made for a kind core does not define has no rule to enforce
    if kind in CLASS_KINDS and not isinstance(obj, type):
        cls = type(obj).__name__
        raise PluginError(
            f"plugin {plugin!r} registered {label} {name!r} as an instance of {cls}, but {label}s register "
            f"classes (built per use from a spec): register({cls}) instead of register({cls}(...))"
        )
    if kind not in CLASS_KINDS and isinstance(obj, type):
        cls = obj.__name__
        raise PluginError(
            f"plugin {plugin!r} registered {label} {name!r} as the class {cls}, but {label}s register "
            f"configured instances: register({cls}(...)) instead of register({cls})"
        )


class Entry(Generic[T]):
    """One registered object with the plugin that registered it.

    A plugin may register a ``"module:attr"`` reference instead of the object; it is
    imported the first time :attr:`obj` is read, so listing names imports nothing.
    """

    __slots__ = ("name", "plugin", "aliases", "label", "kind", "_target", "_resolved", "_lock")

    def __init__(
        self,
        name: str,
        obj: T | str,
        plugin: str,
        aliases: tuple[str, ...] = (),
        label: str = "object",
        kind: str = "",
    ):
        self.name = name
        self.plugin = plugin
        self.aliases = tuple(aliases)
        self.label = label
        self.kind = kind
        self._target = obj
        self._resolved = False
        self._lock = threading.Lock()

    @property
    def reference(self) -> str | None:
        """The ``"module:attr"`` text this entry was registered with, if any."""
        return self._target if is_reference(self._target) and not self._resolved else None

    @property
    def obj(self) -> T:
        """The registered object, imported on first use when it was registered by reference.

        On first use it is also checked to be what its kind registers (a class or an
        instance); a mismatch is a :class:`PluginError` naming the plugin and the fix.
        """
        if not self._resolved:
            with self._lock:
                if not self._resolved:
                    obj = self._target
                    if is_reference(obj):
                        obj = resolve_reference(obj, plugin=self.plugin, label=self.label, name=self.name)
                        declared = getattr(obj, "name", self.name)
                        if isinstance(declared, str) and declared and declared != self.name:
                            # The name was given beside the reference; the object must agree with it.
                            raise PluginError(
                                f"plugin {self.plugin!r} registered {self._target!r} as {self.label} "
                                f"{self.name!r}, but that object calls itself {declared!r}"
                            )
                    check_registered_shape(obj, kind=self.kind, plugin=self.plugin, label=self.label, name=self.name)
                    self._target = obj
                    self._resolved = True
        return self._target  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Entry(name={self.name!r}, plugin={self.plugin!r}, aliases={self.aliases!r})"


@dataclass(frozen=True)
class Conflict:
    """A name two plugins registered for one kind; the second registration was refused."""

    kind: str
    name: str
    kept: str
    refused: str
    message: str

    def __str__(self) -> str:
        return self.message


class Registry(Generic[T]):
    """Names and aliases of one kind of plugin object; duplicates are rejected."""

    def __init__(self, kind: str, label: str | None = None):
        self.kind = kind
        self.label = label or KINDS.get(kind, (None, kind))[1]
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        #: Registrations refused because their name was taken (see :func:`build_registry`).
        self.conflicts: list[Conflict] = []

    def add(self, obj: T | str, *, plugin: str, aliases: Iterable[str] = (), name: str | None = None) -> Entry[T]:
        """Add ``obj`` (or a ``"module:attr"`` reference to it) under ``name`` and its aliases.

        ``name`` defaults to ``obj.name``; a reference must give it, since reading the
        attribute would import the module.
        """
        if is_reference(obj) and name is None:
            raise PluginError(
                f"plugin {plugin!r} registered the {self.label} reference {obj!r} without a name: "
                f"pass name=... beside a 'module:attr' reference"
            )
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
                error = DuplicateNameError(
                    f"{self.label} name {key!r} is registered by both plugin {owner.plugin!r} "
                    f"and plugin {plugin!r}; uninstall one of them or rename one registration"
                )
                error.conflict = Conflict(self.kind, key, owner.plugin, plugin, str(error))  # type: ignore[attr-defined]
                raise error
        entry: Entry[T] = Entry(primary, obj, plugin, aliases, label=self.label, kind=self.kind)
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

    A plugin whose hook raises is skipped with a warning. A name registered by two
    plugins keeps its first registration and records the clash in
    ``registry.conflicts``; :func:`get_registry` refuses such a registry unless asked
    not to (the diagnostic commands), because silently picking one would make
    results depend on install order.
    """
    if kind not in KINDS:
        raise UnknownNameError("plugin kind", kind, KINDS)
    hook_name, label = KINDS[kind]
    registry: Registry[Any] = Registry(kind, label)
    per_plugin: dict[str, list[tuple[Any, tuple[str, ...], str | None]]] = {}

    def kwargs_for(plugin_name: str) -> dict[str, Any]:
        bucket = per_plugin[plugin_name] = []

        def register(obj: Any, aliases: Iterable[str] = (), name: str | None = None) -> None:
            bucket.append((obj, (aliases,) if isinstance(aliases, str) else tuple(aliases), name))

        return {"register": register}

    # Only plugins whose hook returned normally contribute: a half-registered
    # broken plugin would otherwise leave some of its names behind.
    for plugin_name, _ in plugins.call_each(hook_name, kwargs_for=kwargs_for):
        for obj, aliases, name in per_plugin[plugin_name]:
            try:
                registry.add(obj, plugin=plugin_name, aliases=aliases, name=name)
            except DuplicateNameError as exc:
                registry.conflicts.append(exc.conflict)  # type: ignore[attr-defined]
    return registry


def get_registry(kind: str, *, strict: bool = True) -> Registry[Any]:
    """The registry of one kind, rebuilt when plugins were added or removed.

    With ``strict`` (the default) a name registered by two plugins raises
    :class:`DuplicateNameError`; ``strict=False`` returns the registry with the
    clash in ``registry.conflicts``, so ``crossedge plugins`` and ``doctor`` can show it.
    """
    generation = plugins.registry_generation()
    with _cache_lock:
        cached = _cache.get(kind)
        if cached is not None and cached[0] == generation:
            registry = cached[1]
        else:
            registry = build_registry(kind)
            _cache[kind] = (generation, registry)
    if strict and registry.conflicts:
        raise DuplicateNameError(str(registry.conflicts[0]))
    return registry


def registry_conflicts() -> list[Conflict]:
    """Every duplicate-name clash between plugins, over all kinds."""
    return [conflict for kind in KINDS for conflict in get_registry(kind, strict=False).conflicts]


def names_by_plugin(plugin_name: str) -> dict[str, list[str]]:
    """For ``crossedge plugins``: kind -> names that one plugin registered."""
    result: dict[str, list[str]] = {}
    for kind in KINDS:
        names = [e.name for e in get_registry(kind, strict=False).entries() if e.plugin == plugin_name]
        if names:
            result[kind] = names
    return result
