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
from pathlib import Path

import nox

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
#: Distributions under packages/, each with the in-repo packages it needs installed beside it.
PACKAGE_DEPS = {
    "core": [],
    "specdec": ["core"],
    "quant": ["core"],
    "ondevice": ["core"],
    "retrieval": ["core"],
}
ALL_PACKAGES = list(PACKAGE_DEPS)
#: Standalone plugin distributions under plugins/.
PLUGINS = ["crossedge-tiny-models", "crossedge-example-drafter"]
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


def _install_everything(session: nox.Session) -> None:
    paths = [str(ROOT / "packages" / p) for p in ALL_PACKAGES]
    paths += [str(ROOT / "plugins" / p) for p in PLUGINS]
    session.install(*CONSTRAINTS, *[f"{p}[test]" for p in paths])


@nox.session
@nox.parametrize("target", TEST_TARGETS)
def tests(session: nox.Session, target: str) -> None:
    """Unit tests of one package in its own virtualenv (non-editable install), or with
    target 'integration' the cross-package and plugin tests with everything installed."""
    if target not in _selected(TEST_TARGETS):
        session.skip(f"{target} is not in PACKAGES={os.environ.get('PACKAGES')}")
    if target == "integration":
        _install_everything(session)
        session.run("pytest", str(ROOT / "tests"), *session.posargs)
        for plugin in PLUGINS:  # separate runs: each plugin's conftest may set its own environment
            session.run("pytest", str(ROOT / "plugins" / plugin / "tests"), *session.posargs)
        return
    package = ROOT / "packages" / target
    deps = [str(ROOT / "packages" / p) for p in PACKAGE_DEPS[target]]
    session.install(*CONSTRAINTS, *deps, f"{package}[test]")
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


#: Registered benchmarks that ``nox -s bench`` runs by default (``crossedge bench list`` shows all).
BENCHMARKS = ["model-load", "specdec", "quant-eval", "ondevice-mobiletl", "ondevice-predictor", "ondevice-backends"]


@nox.session
def bench(session: nox.Session) -> None:
    """Run the registered benchmarks (or those named after --); JSON + PNG reports go to bench-results/."""
    _install_everything(session)
    out = ROOT / "bench-results"
    for name in session.posargs or BENCHMARKS:
        session.run(
            "crossedge", "bench", "run", name, "--json", str(out / f"{name}.json"), env={"OMP_WAIT_POLICY": "PASSIVE"}
        )
