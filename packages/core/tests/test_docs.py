"""Every hook has a heading in docs/hooks.md (as datasette tests its hook docs) and a row in its table."""

import importlib
import inspect
import re
from pathlib import Path

from crossedge.core import hookspecs

DOCS = Path(__file__).resolve().parents[3] / "docs" / "hooks.md"


def hook_names():
    return sorted(
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "crossedge_spec")
    )


def test_there_are_hooks_to_document():
    assert {"register_commands", "register_model_sources", "register_drafters"} <= set(hook_names())


def test_every_hook_is_documented():
    headings = set(re.findall(r"^#+\s+`?(\w+)\(", DOCS.read_text(), flags=re.M))
    missing = [name for name in hook_names() if name not in headings]
    assert missing == [], f"docs/hooks.md has no heading for {missing}"


def test_every_hook_has_a_docstring():
    for name in hook_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc and "Returns" in doc, name


def hook_table() -> dict[str, list[str]]:
    """docs/hooks.md's table: hook name -> its cells (kind, registers, contract, conformance suite)."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        found = re.match(r"^\|\s*`(register_\w+)`\s*\|(.*)\|\s*$", line)
        if found:
            rows[found[1]] = [cell.strip() for cell in found[2].split("|")]
    return rows


def import_dotted(name: str):
    """The object a dotted ``package.module.Attribute`` (or a module) names."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        module, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(module), attr)


def test_every_hook_is_in_the_table_with_its_kind_and_what_it_registers():
    from crossedge.core.registry import CLASS_KINDS, KINDS

    table = hook_table()
    missing = [name for name in hook_names() if name not in table]
    assert missing == [], f"docs/hooks.md's hook table has no row for {missing}"
    assert sorted(table) == hook_names(), "the table lists a hook hookspecs.py does not define"
    kind_of = {hook: kind for kind, (hook, _) in KINDS.items()}
    for hook, (kind, registers, _, _) in table.items():
        if hook not in kind_of:
            assert kind == "—", hook
            continue
        assert kind == f"`{kind_of[hook]}`", hook
        assert registers == ("classes" if kind_of[hook] in CLASS_KINDS else "instances"), hook


def test_the_table_names_contracts_and_suites_that_exist():
    for hook, (_, _, contract, suite) in hook_table().items():
        names = re.findall(r"`([\w.]+)`", contract) + re.findall(r"`([\w.]+)`", suite)
        assert names, hook
        for name in names:
            assert import_dotted(name) is not None, (hook, name)
