"""Plugin loading: built-ins, entry points, broken plugins, the environment switches."""

import importlib.metadata
import json
import warnings

import pytest

from crossedge.core import get_registry, hookimpl, plugins, registered
from crossedge.core.plugins import DEFAULT_PLUGINS, PluginLoadWarning


class ExplodingPlugin:
    @hookimpl
    def register_drafters(self, register):
        register(type("Half", (), {"name": "half-registered"}))
        raise RuntimeError("boom during registration")


class GoodPlugin:
    @hookimpl
    def register_drafters(self, register):
        register(type("Good", (), {"name": "good"}))


def test_builtins_are_registered_like_any_plugin():
    names = plugins.plugin_names()
    for module in DEFAULT_PLUGINS:
        assert module in names
        assert plugins.plugin_info(module).distribution == "crossedge-core"
    assert "smollm2-135m" in get_registry("model_source")
    assert "pydoc-topics" in get_registry("dataset")


def test_plugin_raising_in_registration_is_skipped_with_one_warning():
    with registered(ExplodingPlugin(), name="exploding"), registered(GoodPlugin(), name="good-one"):
        with pytest.warns(PluginLoadWarning, match="exploding.*boom during registration"):
            registry = get_registry("drafter")
        assert "good" in registry
        assert "half-registered" not in registry
        assert any(b.name == "exploding" for b in plugins.broken_plugins())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plugins._state.generation += 1
            get_registry("drafter")  # second time: no second warning


class FakeDist:
    def __init__(self, name):
        self.metadata = {"Name": name}
        self.version = "9.9"


class FakeEntryPoint:
    def __init__(self, name, dist, target, value="third_party_plugin"):
        self.name, self.dist, self._target, self.value = name, FakeDist(dist), target, value

    def load(self):
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


class EntryPointPlugin:
    @hookimpl
    def register_datasets(self, register):
        register(type("D", (), {"name": "from-entry-point", "description": ""}))


@pytest.fixture
def fresh_manager(monkeypatch):
    """Rebuild the plugin manager against fake entry points, then restore the real one."""

    def use(entry_points, env=None):
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entry_points)
        monkeypatch.delenv(plugins.NO_ENTRY_POINTS_ENV, raising=False)
        if env is None:
            monkeypatch.delenv(plugins.LOAD_PLUGINS_ENV, raising=False)
        else:
            monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, env)
        return plugins.get_plugin_manager()

    restore = plugins._reset_for_tests()
    yield use
    restore()


def test_entry_point_that_fails_to_import_is_named_and_skipped(fresh_manager):
    eps = [
        FakeEntryPoint("broken", "crossedge-broken", ImportError("no module named nonexistent")),
        FakeEntryPoint("fine", "crossedge-fine", EntryPointPlugin()),
    ]
    with pytest.warns(PluginLoadWarning, match="'broken' from distribution 'crossedge-broken'.*nonexistent"):
        fresh_manager(eps)
    assert "from-entry-point" in get_registry("dataset")
    assert plugins.plugin_info("fine").distribution == "crossedge-fine"
    assert plugins.plugin_info("fine").version == "9.9"


def test_load_plugins_env_empty_disables_third_party(fresh_manager):
    fresh_manager([FakeEntryPoint("fine", "crossedge-fine", EntryPointPlugin())], env="")
    assert "fine" not in plugins.plugin_names()
    assert all(m in plugins.plugin_names() for m in DEFAULT_PLUGINS)


def test_load_plugins_env_selects_by_distribution(fresh_manager):
    eps = [
        FakeEntryPoint("fine", "crossedge-fine", EntryPointPlugin()),
        FakeEntryPoint("other", "crossedge-other", GoodPlugin()),
    ]
    fresh_manager(eps, env="crossedge-fine")
    assert "fine" in plugins.plugin_names()
    assert "other" not in plugins.plugin_names()


def test_cli_keeps_working_with_a_broken_plugin(fresh_manager, cli):
    with pytest.warns(PluginLoadWarning):
        fresh_manager([FakeEntryPoint("broken", "crossedge-broken", SyntaxError("bad syntax"))])
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    broken = [r for r in rows if r["name"] == "broken"]
    assert broken and "bad syntax" in broken[0]["error"]


def test_trace_env_reports_hook_calls(monkeypatch, capsys):
    monkeypatch.setenv(plugins.TRACE_PLUGINS_ENV, "1")
    with registered(GoodPlugin(), name="traced"):
        get_registry("drafter")
    assert "[crossedge trace] register_drafters -> traced" in capsys.readouterr().err


def test_hooks_implemented_lists_hook_names():
    with registered(GoodPlugin(), name="hooked"):
        assert plugins.hooks_implemented("hooked") == ["register_drafters"]


class OtherDatasetPlugin:
    @hookimpl
    def register_datasets(self, register):
        register(type("O", (), {"name": "from-other", "description": ""}))


def test_first_party_entry_points_ignore_the_load_plugins_env(fresh_manager):
    eps = [
        FakeEntryPoint("ours", "crossedge-ours", EntryPointPlugin(), value="crossedge.ours.plugin"),
        FakeEntryPoint("theirs", "their-plugin", OtherDatasetPlugin()),
    ]
    fresh_manager(eps, env="")
    names = plugins.plugin_names()
    assert "ours" in names and "theirs" not in names
    assert plugins.plugin_info("ours").first_party is True


def test_unknown_name_in_load_plugins_env_warns_with_close_matches(fresh_manager):
    eps = [FakeEntryPoint("tiny_models", "crossedge-tiny-models", EntryPointPlugin())]
    with pytest.warns(PluginLoadWarning, match="'tiny_model'.*did you mean 'tiny_models'"):
        fresh_manager(eps, env="tiny_model")
    assert "tiny_models" not in plugins.plugin_names()


def test_no_entry_points_env_loads_none_at_all(fresh_manager, monkeypatch):
    eps = [FakeEntryPoint("ours", "crossedge-ours", EntryPointPlugin(), value="crossedge.ours.plugin")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
    monkeypatch.setenv(plugins.NO_ENTRY_POINTS_ENV, "1")
    plugins.get_plugin_manager()
    assert "ours" not in plugins.plugin_names()
    assert all(m in plugins.plugin_names() for m in DEFAULT_PLUGINS)


def test_plugin_calling_sys_exit_at_import_is_reported_not_fatal(fresh_manager, cli):
    eps = [
        FakeEntryPoint("quitter", "crossedge-quitter", SystemExit(3)),
        FakeEntryPoint("fine", "crossedge-fine", EntryPointPlugin()),
    ]
    with pytest.warns(PluginLoadWarning, match="'quitter' from distribution 'crossedge-quitter'.*SystemExit"):
        fresh_manager(eps)
    assert "from-entry-point" in get_registry("dataset")
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    broken = [r for r in json.loads(result.stdout) if r["name"] == "quitter"]
    assert broken and "SystemExit" in broken[0]["error"]


class TwoBrokenHooks:
    @hookimpl
    def register_drafters(self, register):
        raise RuntimeError("drafters broke")

    @hookimpl
    def register_datasets(self, register):
        raise SystemExit("datasets quit")


def test_every_failing_hook_of_a_plugin_is_reported():
    with registered(TwoBrokenHooks(), name="twice-broken"):
        with pytest.warns(PluginLoadWarning) as caught:
            get_registry("drafter")
            get_registry("dataset")
        assert len([w for w in caught if "twice-broken" in str(w.message)]) == 2
        errors = [b.error for b in plugins.broken_plugins() if b.name == "twice-broken"]
        assert any("register_drafters" in e and "drafters broke" in e for e in errors)
        assert any("register_datasets" in e and "datasets quit" in e for e in errors)


def test_broken_plugin_hint_no_longer_suggests_switching_off_everything():
    with registered(ExplodingPlugin(), name="hint-check"), pytest.warns(PluginLoadWarning) as caught:
        get_registry("drafter")
    message = next(str(w.message) for w in caught if "hint-check" in str(w.message))
    assert "CROSSEDGE_LOAD_PLUGINS=NAME" in message and "third-party" in message
