"""A plugin implementing a hook core does not define gets a warning naming the plugin and the hook."""

import json
import warnings

import pytest

from crossedge.core import get_registry, hookimpl, registered
from crossedge.core.plugins import UnknownHookWarning


class OldDomainModelPlugin:
    @hookimpl
    def register_domain_models(self, register):
        register(type("Old", (), {"name": "old-algo", "category": "algorithm"}))


class MisspelledPlugin:
    @hookimpl
    def register_algorithm(self, register):
        pass


def test_removed_hook_is_named_with_its_replacement():
    expected = "'old-plugin' implements hook 'register_domain_models'.*register_algorithms"
    with pytest.warns(UnknownHookWarning, match=expected), registered(OldDomainModelPlugin(), name="old-plugin"):
        assert "old-algo" not in get_registry("algorithm")


def test_misspelled_hook_suggests_the_defined_one():
    expected = "'typo-plugin'.*'register_algorithm'.*did you mean register_algorithms"
    with pytest.warns(UnknownHookWarning, match=expected), registered(MisspelledPlugin(), name="typo-plugin"):
        pass


def test_warning_comes_once_per_registration_and_again_after_reregistering():
    for _ in range(2):
        with pytest.warns(UnknownHookWarning) as caught, registered(OldDomainModelPlugin(), name="old-again"):
            get_registry("algorithm")
        assert len([w for w in caught if issubclass(w.category, UnknownHookWarning)]) == 1


def test_known_hooks_and_optional_hooks_do_not_warn():
    class Fine:
        @hookimpl
        def register_algorithms(self, register):
            pass

        @hookimpl(optionalhook=True)
        def some_future_hook(self):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownHookWarning)
        with registered(Fine(), name="fine-plugin"):
            pass


def test_domain_model_kind_is_gone():
    from crossedge.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="plugin kind 'domain_model'"):
        get_registry("domain_model")


def test_plugins_command_lists_ignored_hooks(cli):
    with pytest.warns(UnknownHookWarning), registered(OldDomainModelPlugin(), name="old-listed"):
        result = cli("plugins", "--json")
        text = cli("plugins")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["old-listed"]["ignored_hooks"] == ["register_domain_models"]
    assert rows["crossedge.core.builtins.algorithms"]["ignored_hooks"] == []
    assert "ignored (core defines no such hook): register_domain_models" in text.stdout


def test_a_plugin_marking_the_hook_optional_is_not_blamed_for_another_plugins_impl():
    class Optional:
        @hookimpl(optionalhook=True)
        def register_domain_models(self, register):
            pass

    old = registered(OldDomainModelPlugin(), name="old-beside")
    with pytest.warns(UnknownHookWarning, match="'old-beside'"), old, warnings.catch_warnings():
        warnings.simplefilter("error", UnknownHookWarning)  # registering the optional one must not warn
        with registered(Optional(), name="optional-one"):
            pass
