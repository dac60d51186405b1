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
    registry = Registry("dataset")
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


def test_reference_is_imported_on_first_get_only(tmp_path, monkeypatch):
    (tmp_path / "lazy_thing_module.py").write_text("class Lazy:\n    name = 'lazy'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("drafter")
    entry = registry.add("lazy_thing_module:Lazy", plugin="p", name="lazy", aliases=("lz",))
    import sys

    assert "lazy_thing_module" not in sys.modules
    assert registry.names() == ["lazy"] and "lz" in registry
    assert entry.reference == "lazy_thing_module:Lazy"
    assert registry.get("lz").__name__ == "Lazy"
    assert "lazy_thing_module" in sys.modules
    assert registry.entry("lazy").reference is None


def test_reference_with_call_registers_an_instance(tmp_path, monkeypatch):
    (tmp_path / "lazy_instance_module.py").write_text("class Bench:\n    name = 'b'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("benchmark")
    registry.add("lazy_instance_module:Bench()", plugin="p", name="b")
    assert type(registry.get("b")).__name__ == "Bench"
    assert registry.get("b") is registry.get("b")


def test_reference_that_does_not_import_names_the_plugin():
    registry = Registry("drafter")
    registry.add("no_such_module_anywhere:Thing", plugin="third-party", name="ghost")
    with pytest.raises(PluginError, match="plugin 'third-party'.*'ghost'.*does not import.*ModuleNotFoundError"):
        registry.get("ghost")


def test_reference_needs_a_name_and_must_agree_with_it(tmp_path, monkeypatch):
    with pytest.raises(PluginError, match="without a name"):
        Registry("drafter").add("os.path:join", plugin="p")
    (tmp_path / "misnamed_module.py").write_text("class Misnamed:\n    name = 'other'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("drafter")
    registry.add("misnamed_module:Misnamed", plugin="p", name="mine")
    with pytest.raises(PluginError, match="calls itself 'other'"):
        registry.get("mine")


class ReferencePlugin:
    @hookimpl
    def register_drafters(self, register):
        register("crossedge.core.testing:CountingBackend", name="counting", aliases=("cb",))


def test_hooks_may_register_references():
    with registered(ReferencePlugin(), name="by-reference"):
        registry = get_registry("drafter")
        assert registry.entry("cb").plugin == "by-reference"
        assert registry.get("counting").__name__ == "CountingBackend"


def test_duplicate_between_plugins_is_kept_aside_for_diagnostics():
    with registered(DrafterPlugin("copy"), name="first"), registered(DrafterPlugin("copy"), name="second"):
        with pytest.raises(DuplicateNameError, match="both plugin '(first|second)' and plugin '(first|second)'"):
            get_registry("drafter")
        registry = get_registry("drafter", strict=False)
        [conflict] = registry.conflicts
        assert conflict.name == "copy" and {conflict.kept, conflict.refused} == {"first", "second"}
        assert registry.entry("copy").plugin == conflict.kept


class SomeDrafter:
    name = "some-drafter"


class SomeBenchmark:
    name = "some-bench"


class MisshapenPlugin:
    @hookimpl
    def register_drafters(self, register):
        register(SomeDrafter())  # drafters register classes

    @hookimpl
    def register_benchmarks(self, register):
        register(SomeBenchmark)  # benchmarks register instances


def test_an_instance_where_a_class_kind_registers_classes_is_refused_naming_the_fix():
    with registered(MisshapenPlugin(), name="misshapen"):
        registry = get_registry("drafter")
        assert registry.names() == ["some-drafter"]  # listing names resolves nothing
        with pytest.raises(
            PluginError,
            match=r"plugin 'misshapen' registered drafter 'some-drafter' as an instance of SomeDrafter, "
            r"but drafters register classes.*register\(SomeDrafter\) instead",
        ):
            registry.get("some-drafter")


def test_a_class_where_an_instance_kind_registers_instances_is_refused_naming_the_fix():
    expected = (
        r"plugin 'misshapen' registered benchmark 'some-bench' as the class SomeBenchmark, "
        r"but benchmarks register configured instances: register\(SomeBenchmark\(...\)\) instead"
    )
    with registered(MisshapenPlugin(), name="misshapen"), pytest.raises(PluginError, match=expected):
        get_registry("benchmark").get("some-bench")


def test_a_reference_is_checked_for_its_shape_after_import(tmp_path, monkeypatch):
    (tmp_path / "shape_module.py").write_text("class Scorer:\n    name = 's'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("scorer")
    registry.add("shape_module:Scorer()", plugin="p", name="s")
    with pytest.raises(PluginError, match="scorer 's' as an instance of Scorer, but scorers register classes"):
        registry.get("s")
    registry = Registry("scorer")
    registry.add("shape_module:Scorer", plugin="p", name="s")
    assert registry.get("s").__name__ == "Scorer"
