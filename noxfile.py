"""Development sessions for the crossedge monorepo.

    nox -s tests          every package's unit tests, then the integration tests
    nox -s lint           ruff check and format check
    nox -s demo           the main job on the embedded default model
    nox -s bench          the registered benchmarks (or: nox -s bench -- model-load), reports in bench-results/

``PACKAGES=core,specdec nox -s tests`` narrows the test sessions; arguments after
``--`` go to pytest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))
import workspace  # noqa: E402  (beside this file: discovery shared with tests/test_workspace.py)

CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
#: Every distribution found on disk: packages/*/pyproject.toml (not _-prefixed), then plugins/*/pyproject.toml.
WORKSPACE = workspace.discover(ROOT)
ALL_PACKAGES = [d.name for d in WORKSPACE.values() if d.kind == "package"]
#: Standalone plugin distributions under plugins/.
PLUGINS = [d.name for d in WORKSPACE.values() if d.kind == "plugin"]
TEST_TARGETS = ALL_PACKAGES + ["integration"]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


def _selected(targets: list[str]) -> list[str]:
    wanted = os.environ.get("PACKAGES")
    if not wanted:
        return targets
    chosen = [t.strip() for t in wanted.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        raise SystemExit(f"PACKAGES names unknown targets {unknown}; choose from {targets}")
    return chosen


def _install_no_deps(session: nox.Session, dists) -> None:
    """The pinned test requirements that must come without their dependencies ([tool.crossedge] test-no-deps)."""
    pinned = sorted({r for d in dists for r in d.test_no_deps})
    if pinned:
        session.install("--no-deps", *pinned)


def _install_everything(session: nox.Session) -> None:
    dists = workspace.install_order(WORKSPACE)
    session.install(*CONSTRAINTS, *[f"{d.path}[test]" for d in dists])
    _install_no_deps(session, dists)


@nox.session
@nox.parametrize("target", TEST_TARGETS)
def tests(session: nox.Session, target: str) -> None:
    """Unit tests of one package in its own virtualenv (non-editable install), or with
    target 'integration' the cross-package and plugin tests with everything installed."""
    if target not in _selected(TEST_TARGETS):
        session.skip(f"{target} is not in PACKAGES={os.environ.get('PACKAGES')}")
    # Kernel choices and verification costs timed by tests stay with the tests, out of the user's cache.
    # (Beside the session's virtualenv: session.create_tmp() would also move TMPDIR under .nox/.)
    session.env["CROSSEDGE_MEASUREMENTS"] = str(Path(session.virtualenv.location) / "measurements")
    if target == "integration":
        _install_everything(session)
        session.run("pytest", str(ROOT / "tests"), *session.posargs)
        for plugin in PLUGINS:  # separate runs: each plugin's conftest may set its own environment
            session.run("pytest", str(ROOT / "plugins" / plugin / "tests"), *session.posargs)
        return
    package = ROOT / "packages" / target
    # In-repo dependencies from the package's own crossedge-* requirements, installed from this checkout.
    deps = [str(WORKSPACE[p].path) for p in workspace.in_repo_dependencies(WORKSPACE, target)]
    session.install(*CONSTRAINTS, *deps, f"{package}[test]")
    _install_no_deps(session, [WORKSPACE[target]])
    session.run("pytest", str(package / "tests"), *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint and check formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Pull smollm2-135m and show vanilla against speculative decoding side by side."""
    _install_everything(session)
    session.run("crossedge", "models", "pull", "smollm2-135m")
    # A passive OpenMP wait keeps 2-thread timings sane when the machine is busy.
    # torch-onednn (crossedge-ondevice) verifies a few drafted tokens for about the price of one.
    args = session.posargs or ["--backend", "torch-onednn"]
    session.run("crossedge", "specdec", "demo", *args, env={"OMP_WAIT_POLICY": "PASSIVE"})


#: Benchmarks ``nox -s bench`` runs by default: each pyproject's ``[tool.crossedge] benchmarks``
#: (``crossedge bench list`` shows every registered one).
BENCHMARKS = workspace.benchmarks(WORKSPACE)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the registered benchmarks (or those named after --); JSON + PNG reports go to bench-results/."""
    _install_everything(session)
    out = ROOT / "bench-results"
    for name in session.posargs or BENCHMARKS:
        session.run(
            "crossedge", "bench", "run", name, "--json", str(out / f"{name}.json"), env={"OMP_WAIT_POLICY": "PASSIVE"}
        )
