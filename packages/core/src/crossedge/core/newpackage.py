"""``crossedge new-package NAME``: a new crossedge package copied from the template shipped in crossedge-core.

The template lives in ``crossedge/core/template/`` (package data, so the command works from
an installed wheel; the repository's ``packages/_template`` is a link to it). Every file
ends in ``.tmpl`` so that no tool mistakes the template for code; copying drops the suffix
and replaces the placeholders in paths and contents.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from .errors import CrossedgeError

SUFFIX = ".tmpl"
NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
#: Names a new package may not take: crossedge's own packages and Python's reserved words.
TAKEN = frozenset({"core", "specdec", "quant", "ondevice", "retrieval", "template"})


def template_root() -> Path:
    """The folder holding the package template."""
    return Path(str(files("crossedge.core") / "template"))


def placeholders(name: str) -> dict[str, str]:
    """The values of ``{{name}}``, ``{{module}}``, ``{{dist}}`` and ``{{Class}}`` for a package NAME."""
    import keyword

    if not NAME_RE.fullmatch(name):
        raise CrossedgeError(
            f"package name {name!r} is not lowercase letters and digits separated by single '-' or '_' "
            "(for example 'sensing' or 'cross-modal')"
        )
    module = name.replace("-", "_")
    if module in TAKEN or keyword.iskeyword(module):
        raise CrossedgeError(f"package name {name!r} is taken by crossedge or Python; choose another")
    return {
        "name": name.replace("_", "-"),
        "module": module,
        "dist": "crossedge-" + name.replace("_", "-"),
        "Class": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
    }


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``{{key}}`` replaced; a placeholder the template does not define is an error."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise CrossedgeError(f"the package template uses an unknown placeholder {{{{{key}}}}}")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", value, text)


def default_out(name: str, cwd: Path | None = None) -> Path:
    """``packages/NAME`` inside a crossedge checkout (a ``packages/core`` beside it), else ``./crossedge-NAME``."""
    cwd = cwd or Path.cwd()
    if (cwd / "packages" / "core" / "pyproject.toml").is_file():
        return cwd / "packages" / name
    return cwd / placeholders(name)["dist"]


def new_package(name: str, out: Path | str | None = None) -> list[Path]:
    """Write the template as package ``crossedge-NAME`` (import ``crossedge.NAME``) into ``out``; returns the files.

    Refuses a folder that exists and is not empty: nothing is ever written over files
    crossedge did not create.
    """
    values = placeholders(name)
    target = Path(out) if out is not None else default_out(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CrossedgeError(f"{target} exists and is not an empty folder; choose another --out or remove it first")
    root = template_root()
    sources = sorted(p for p in root.rglob(f"*{SUFFIX}") if p.is_file())
    if not sources:
        raise CrossedgeError(f"the package template at {root} is missing; reinstall crossedge-core")
    # Render everything before writing anything, so a broken template leaves no half-written package.
    rendered = [
        (target / render(str(p.relative_to(root))[: -len(SUFFIX)], values), render(p.read_text(), values))
        for p in sources
    ]
    written = []
    for path, text in rendered:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
