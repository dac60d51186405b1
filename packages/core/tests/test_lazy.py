"""Lazy package exports: a name is imported from its module on first read, then cached."""

import sys
import types

import pytest

from crossedge.core.lazy import lazy_exports


def test_a_lazy_name_is_imported_once_and_unknown_names_are_attribute_errors(tmp_path, monkeypatch):
    package = tmp_path / "lazy_pkg_under_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "heavy.py").write_text("VALUE = 41 + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    getattr_, dir_ = lazy_exports("lazy_pkg_under_test", {"VALUE": ".heavy", "dumps": "json"}, namespace)
    assert "lazy_pkg_under_test.heavy" not in sys.modules
    assert dir_() == ["VALUE", "dumps"]
    assert getattr_("VALUE") == 42 and namespace["VALUE"] == 42  # cached where the module looks first
    assert "lazy_pkg_under_test.heavy" in sys.modules
    assert getattr_("dumps") is __import__("json").dumps  # an absolute module name works too
    with pytest.raises(AttributeError, match="module 'lazy_pkg_under_test' has no attribute 'nope'"):
        getattr_("nope")


def test_every_package_serves_its_exports_lazily():
    for name in ("crossedge.core", "crossedge.specdec", "crossedge.quant", "crossedge.retrieval", "crossedge.ondevice"):
        module = pytest.importorskip(name)
        assert isinstance(module, types.ModuleType)
        for public in getattr(module, "_EXPORTS", getattr(module, "_LAZY", {})):
            assert getattr(module, public) is not None, (name, public)
