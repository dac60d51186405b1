"""Every hook has a heading in docs/hooks.md (as datasette tests its hook docs)."""

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
