"""The plugin manager: built-in plugins, entry points, and per-plugin hook calls."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import CrossedgeWarning, PluginError

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
LOAD_PLUGINS_ENV = "CROSSEDGE_LOAD_PLUGINS"
NO_ENTRY_POINTS_ENV = "CROSSEDGE_NO_ENTRY_POINTS"
TRACE_PLUGINS_ENV = "CROSSEDGE_TRACE_PLUGINS"

#: Entry points whose object lives in this namespace belong to the crossedge monorepo's own
#: packages (``packages/*``: specdec, quant, ondevice, retrieval and any made from the
#: template). They are always loaded: ``CROSSEDGE_LOAD_PLUGINS`` narrows third-party plugins only.
FIRST_PARTY_PREFIX = "crossedge."

DEFAULT_PLUGINS: tuple[str, ...] = (
    "crossedge.core.builtins.commands",
    "crossedge.core.builtins.model_sources",
    "crossedge.core.builtins.datasets",
    "crossedge.core.builtins.algorithms",
    "crossedge.core.builtins.benchmarks",
    "crossedge.core.builtins.backends",
    "crossedge.core.builtins.scaffold",
)


class PluginLoadWarning(CrossedgeWarning):
    """Issued once when a plugin cannot be imported or fails to register."""


class UnknownHookWarning(CrossedgeWarning):
    """Issued once per plugin and hook when a plugin implements a hook crossedge-core does not define."""


#: hooks that earlier releases defined -> what replaces them, for the warning an old plugin gets
REMOVED_HOOKS: dict[str, str] = {
    "register_domain_models": (
        "register domain algorithms with register_algorithms, scorers with register_scorers "
        "and losses with register_losses"
    ),
}


@dataclass
class PluginInfo:
    """What crossedge knows about one registered plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    error: str | None = None
    first_party: bool = False


@dataclass
class PluginState:
    """Book-keeping held beside the pluggy manager."""

    info: dict[str, PluginInfo] = field(default_factory=dict)
    broken: list[PluginInfo] = field(default_factory=list)
    warned: set[tuple[str, str]] = field(default_factory=set)
    generation: int = 0


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_state = PluginState()


def _core_version() -> str | None:
    try:
        return importlib.metadata.version("crossedge-core")
    except importlib.metadata.PackageNotFoundError:
        return None


def _remedy(first_party: bool) -> str:
    if first_party:
        return "Reinstall or upgrade that distribution (it is part of crossedge)."
    return (
        f"Upgrade or uninstall that distribution, or leave it out with {LOAD_PLUGINS_ENV}=NAME,... "
        f"listing the third-party plugins to keep ({LOAD_PLUGINS_ENV}='' keeps none)."
    )


def warn_plugin(
    name: str, distribution: str | None, exc: BaseException, during: str, *, first_party: bool | None = None
) -> None:
    """Record a broken plugin (once per plugin and hook) and issue one warning for it."""
    who = f"{name!r}" + (f" from distribution {distribution!r}" if distribution else "")
    if first_party is None:
        first_party = _state.info.get(name, PluginInfo(name)).first_party or name in DEFAULT_PLUGINS
    message = f"skipping crossedge plugin {who}: {during} failed with {type(exc).__name__}: {exc}. " + _remedy(
        first_party
    )
    with _lock:
        info = PluginInfo(name=name, distribution=distribution, error=f"{during}: {type(exc).__name__}: {exc}")
        # Keyed by hook as well: a plugin with two failing hooks reports both, not only the first.
        if (name, during) not in _state.warned:
            _state.warned.add((name, during))
            _state.broken.append(info)
            warnings.warn(message, PluginLoadWarning, stacklevel=3)


def _unknown_hooks(pm: pluggy.PluginManager, plugin_name: str) -> list[str]:
    plugin = pm.get_plugin(plugin_name)
    callers = (pm.get_hookcallers(plugin) or []) if plugin is not None else []
    unknown = []
    for caller in callers:
        own = [impl for impl in caller.get_hookimpls() if impl.plugin_name == plugin_name]
        if not caller.has_spec() and not all(impl.optionalhook for impl in own):
            unknown.append(caller.name)
    return sorted(unknown)


def unknown_hooks(plugin_name: str) -> list[str]:
    """Hooks a registered plugin implements that crossedge-core does not define (never called)."""
    return _unknown_hooks(get_plugin_manager(), plugin_name)


def warn_unknown_hooks(pm: pluggy.PluginManager, plugin_name: str) -> list[str]:
    """Warn once about every hook ``plugin_name`` implements that has no specification; returns their names.

    pluggy keeps such implementations pending and never calls them, so without this an old
    plugin (one written against a removed hook) would silently do nothing.
    """
    unknown = _unknown_hooks(pm, plugin_name)
    for hook in unknown:
        key = (plugin_name, f"unknown hook {hook}")
        with _lock:
            if key in _state.warned:
                continue
            _state.warned.add(key)
        if hook in REMOVED_HOOKS:
            hint = f"crossedge-core no longer defines it: {REMOVED_HOOKS[hook]}"
        else:
            known = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{hookspecs.PROJECT_NAME}_spec")]
            close = difflib.get_close_matches(hook, known, n=2, cutoff=0.6)
            hint = "crossedge-core does not define it" + (
                f"; did you mean {' or '.join(close)}?" if close else "; it is never called"
            )
        warnings.warn(
            f"crossedge plugin {plugin_name!r} implements hook {hook!r}, which is ignored: {hint}. Upgrade the plugin.",
            UnknownHookWarning,
            stacklevel=3,
        )
    return unknown


def is_first_party(ep: Any) -> bool:
    """True for an entry point of one of crossedge's own packages (object in the ``crossedge.`` namespace)."""
    return str(getattr(ep, "value", "")).startswith(FIRST_PARTY_PREFIX)


def _allowed_plugins() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _entry_points_disabled() -> bool:
    return os.environ.get(NO_ENTRY_POINTS_ENV, "") not in ("", "0", "false", "no")


def _warn_unknown_allowed(allowed: set[str], eps: list[Any]) -> None:
    known: set[str] = set()
    for ep in eps:
        known.add(ep.name)
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.metadata["Name"]:
            known.add(dist.metadata["Name"])
    for name in sorted(allowed - known):
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
        hint = (
            ("did you mean " + " or ".join(repr(c) for c in close) + "?")
            if close
            else ("installed: " + (", ".join(sorted(known)) or "none"))
        )
        warnings.warn(
            f"{LOAD_PLUGINS_ENV} names {name!r}, which is no installed crossedge plugin or distribution; {hint}",
            PluginLoadWarning,
            stacklevel=4,
        )


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    if _entry_points_disabled():
        return
    allowed = _allowed_plugins()
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if allowed:
        _warn_unknown_allowed(allowed, eps)
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        first_party = is_first_party(ep)
        if not first_party and allowed is not None and ep.name not in allowed and dist_name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit at import included: a broken plugin must not kill the CLI
            warn_plugin(ep.name, dist_name, exc, "import", first_party=first_party)
            continue
        warn_unknown_hooks(pm, ep.name)
        _state.info[ep.name] = PluginInfo(
            name=ep.name,
            distribution=dist_name,
            version=dist.version if dist is not None else None,
            first_party=first_party,
        )


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, loading built-ins and entry points once."""
    global _pm
    with _lock:
        if _pm is not None:
            return _pm
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        version = _core_version()
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            pm.register(module, name=module_name)
            _state.info[module_name] = PluginInfo(
                name=module_name, distribution="crossedge-core", version=version, builtin=True
            )
        _pm = pm
        _load_entry_points(pm)
        return pm


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (module or instance) by hand; returns its name.

    Used by tests and by applications embedding crossedge. Registries are rebuilt
    on their next use.
    """
    pm = get_plugin_manager()
    with _lock:
        registered = pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is blocked or already registered")
        _state.info[registered] = PluginInfo(name=registered)
        _state.generation += 1
    warn_unknown_hooks(pm, registered)
    return registered


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`, by the name it returned."""
    pm = get_plugin_manager()
    with _lock:
        if pm.get_plugin(name) is None:
            raise PluginError(f"no plugin named {name!r} is registered")
        pm.unregister(name=name)
        _state.info.pop(name, None)
        # a plugin registered again under the same name deserves its warnings again
        _state.warned = {key for key in _state.warned if not (key[0] == name and key[1].startswith("unknown hook "))}
        _state.generation += 1


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register ``plugin`` for the duration of a ``with`` block (tests use this)."""
    registered_name = register_plugin(plugin, name=name)
    try:
        yield registered_name
    finally:
        unregister_plugin(registered_name)


def registry_generation() -> int:
    """A counter bumped whenever plugins are added or removed; registries compare it."""
    return _state.generation


def plugin_info(name: str) -> PluginInfo:
    """The distribution and version behind a registered plugin name."""
    return _state.info.get(name, PluginInfo(name=name))


def broken_plugins() -> list[PluginInfo]:
    """Plugins that were skipped because they failed to import or register."""
    get_plugin_manager()
    return list(_state.broken)


def _tracing() -> bool:
    return os.environ.get(TRACE_PLUGINS_ENV, "") not in ("", "0", "false", "no")


def call_each(
    hook_name: str, kwargs_for: Callable[[str], dict[str, Any]] | None = None, **kwargs: Any
) -> Iterator[tuple[str, Any]]:
    """Call every implementation of ``hook_name`` separately, yielding (plugin name, result).

    Unlike a plain pluggy call, one plugin raising does not stop the others: it is
    reported once with :class:`PluginLoadWarning` and skipped. ``kwargs_for(plugin)``
    may supply arguments specific to each plugin (the registration callbacks).
    """
    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        supplied = {**kwargs, **(kwargs_for(impl.plugin_name) if kwargs_for else {})}
        args = {k: v for k, v in supplied.items() if k in impl.argnames}
        start = time.perf_counter()
        try:
            result = impl.function(**args)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a hook calling sys.exit() is a broken plugin, not the end of the command
            info = plugin_info(impl.plugin_name)
            warn_plugin(impl.plugin_name, info.distribution, exc, f"hook {hook_name}")
            continue
        finally:
            if _tracing():
                elapsed = (time.perf_counter() - start) * 1000
                print(f"[crossedge trace] {hook_name} -> {impl.plugin_name} ({elapsed:.2f} ms)", file=sys.stderr)
        yield impl.plugin_name, result


def hooks_implemented(name: str) -> list[str]:
    """Names of the hooks a registered plugin implements."""
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is None:
        return []
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])


def plugin_names() -> list[str]:
    """Names of all registered plugins, built-ins first."""
    pm = get_plugin_manager()
    names = [pm.get_name(p) for p in pm.get_plugins()]
    return sorted(names, key=lambda n: (not plugin_info(n).builtin, n))


def _reset_for_tests() -> Callable[[], None]:
    """Forget the manager so the next call rebuilds it; returns a function that restores it."""
    global _pm
    saved = (_pm, _state.info.copy(), list(_state.broken), set(_state.warned))

    def restore() -> None:
        global _pm
        _pm = saved[0]
        _state.info, _state.broken, _state.warned = saved[1], saved[2], saved[3]
        _state.generation += 1

    _pm = None
    _state.info, _state.broken, _state.warned = {}, [], set()
    _state.generation += 1
    return restore
