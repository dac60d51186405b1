"""Registries: names, aliases, duplicates between plugins, close-match errors."""

import pytest

from crossedge.core import (
    DuplicateNameError,
    PluginError,
    Registry,
    UnknownNameError,
    get_registry,
    hookimpl,
    registered,
)


class Thing:
    def __init__(self, name):
        self.name = name


def test_lookup_by_name_and_alias():
    registry = Registry("drafter")
    thing = Thing("copy")
    registry.add(thing, plugin="p", aliases=("prompt-lookup",))
    assert registry.get("copy") is thing
    assert registry.get("prompt-lookup") is thing
    assert "prompt-lookup" in registry and "nope" not in registry
    assert registry.names() == ["copy"]
    assert registry.entry("prompt-lookup").plugin == "p"


def test_duplicate_name_names_both_plugins():
    registry = Registry("drafter")
    registry.add(Thing("copy"), plugin="first-plugin")
    with pytest.raises(DuplicateNameError) as info:
        registry.add(Thing("copy"), plugin="second-plugin")
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_alias_may_not_shadow_another_name():
    registry = Registry("drafter")
    registry.add(Thing("copy"), plugin="a")
    with pytest.raises(DuplicateNameError, match="'copy'"):
        registry.add(Thing("other"), plugin="b", aliases=("copy",))
    assert registry.names() == ["copy"]


def test_unknown_name_suggests_close_matches():
    registry = Registry("drafter")
    registry.add(Thing("early-exit"), plugin="a")
    registry.add(Thing("copy"), plugin="a")
    with pytest.raises(UnknownNameError, match="did you mean 'early-exit'"):
        registry.get("early-exti")
    with pytest.raises(UnknownNameError, match="known: copy, early-exit"):
        registry.get("zzzzzz")


def test_nameless_registration_is_a_plugin_error():
    with pytest.raises(PluginError, match="without a name"):
        Registry("drafter").add(object(), plugin="sloppy")


class DrafterPlugin:
    def __init__(self, *names):
        self.names = names

    @hookimpl
    def register_drafters(self, register):
        for name in self.names:
            register(Thing(name), aliases=(name.upper(),))


def test_registry_follows_plugins_registered_for_one_test():
    assert "alpha" not in get_registry("drafter")
    with registered(DrafterPlugin("alpha", "beta"), name="drafters-a") as name:
        registry = get_registry("drafter")
        assert registry.entry("ALPHA").plugin == name
        assert registry.names() == ["alpha", "beta"]
    assert "alpha" not in get_registry("drafter")


def test_duplicate_between_plugins_is_rejected_loudly():
    with registered(DrafterPlugin("alpha"), name="plugin-one"), registered(DrafterPlugin("alpha"), name="plugin-two"):
        with pytest.raises(DuplicateNameError) as info:
            get_registry("drafter")
        assert "plugin-one" in str(info.value) and "plugin-two" in str(info.value)


def test_unknown_kind():
    with pytest.raises(UnknownNameError, match="plugin kind"):
        get_registry("drafterz")
