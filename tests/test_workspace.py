"""The noxfile's discovery (workspace.py): packages, plugins, in-repo dependencies and benchmarks from pyprojects."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("workspace", ROOT / "workspace.py")
workspace = importlib.util.module_from_spec(_spec)
sys.modules["workspace"] = workspace  # dataclasses look their module up while the class is built
_spec.loader.exec_module(workspace)


def write_pyproject(folder, name, deps=(), benchmarks=None, test=()):
    folder.mkdir(parents=True)
    text = f'[project]\nname = "{name}"\ndependencies = {list(deps)!r}\n'
    text += f"[project.optional-dependencies]\ntest = {list(test)!r}\n"
    if benchmarks is not None:
        text += f"[tool.crossedge]\nbenchmarks = {list(benchmarks)!r}\n"
    (folder / "pyproject.toml").write_text(text.replace("'", '"'))


def test_the_repository_is_discovered():
    found = workspace.discover(ROOT)
    packages = [d.name for d in found.values() if d.kind == "package"]
    plugins = [d.name for d in found.values() if d.kind == "plugin"]
    assert {"core", "specdec", "quant", "ondevice", "retrieval"} <= set(packages)
    assert not any(name.startswith("_") for name in packages)  # packages/_template is not a package
    assert {"crossedge-tiny-models", "crossedge-example-backend"} <= set(plugins)
    for name in [*packages, *plugins]:
        if name != "core":
            assert workspace.in_repo_dependencies(found, name)[0] == "core", name
    order = [d.name for d in workspace.install_order(found)]
    assert order[0] == "core" and len(order) == len(found)


def test_benchmarks_come_from_the_pyprojects():
    names = workspace.benchmarks(workspace.discover(ROOT))
    expected = ["model-load", "specdec", "quant-eval", "ondevice-mobiletl", "ondevice-predictor", "ondevice-backends"]
    assert set(expected) <= set(names)
    assert names[0] == "model-load"


def test_every_registered_benchmark_of_the_repository_is_declared_and_every_declared_one_registered():
    # With every distribution installed (the integration session), entry points are loaded here.
    from crossedge.core import get_registry
    from crossedge.core.plugins import plugin_info

    found = workspace.discover(ROOT)
    projects = {d.project: d for d in found.values()}
    declared = set(workspace.benchmarks(found))
    for entry in get_registry("benchmark").entries():
        distribution = plugin_info(entry.plugin).distribution
        dist = projects.get(workspace.normalize(distribution or ""))
        if dist is not None:
            assert entry.name in dist.benchmarks, f"{dist.path}/pyproject.toml: add {entry.name!r} to [tool.crossedge]"
    assert declared <= set(get_registry("benchmark").names())


def test_a_synthetic_workspace_orders_dependencies_and_skips_underscore_folders(tmp_path):
    write_pyproject(tmp_path / "packages" / "app", "crossedge-app", ["crossedge-base>=0.1", "numpy"], ["app-speed"])
    write_pyproject(tmp_path / "packages" / "base", "crossedge_Base", benchmarks=["base-load"])
    write_pyproject(tmp_path / "packages" / "_draft", "crossedge-draft")
    write_pyproject(tmp_path / "plugins" / "crossedge-extra", "crossedge-extra", test=["crossedge-app[test]"])
    found = workspace.discover(tmp_path)
    assert list(found) == ["app", "base", "crossedge-extra"]
    assert workspace.in_repo_dependencies(found, "crossedge-extra") == ["base", "app"]
    assert [d.name for d in workspace.install_order(found)] == ["base", "app", "crossedge-extra"]
    assert workspace.benchmarks(found) == ["base-load", "app-speed"]


def test_cycles_duplicate_benchmarks_and_bad_declarations_are_refused(tmp_path):
    write_pyproject(tmp_path / "packages" / "a", "crossedge-a", ["crossedge-b"], ["same"])
    write_pyproject(tmp_path / "packages" / "b", "crossedge-b", ["crossedge-a"], ["same"])
    found = workspace.discover(tmp_path)
    with pytest.raises(workspace.WorkspaceError, match="cycle: a -> b -> a"):
        workspace.in_repo_dependencies(found, "a")
    write_pyproject(tmp_path / "other" / "packages" / "a", "crossedge-a", benchmarks=["same"])
    write_pyproject(tmp_path / "other" / "packages" / "b", "crossedge-b", benchmarks=["same"])
    with pytest.raises(workspace.WorkspaceError, match="'same' is declared by two"):
        workspace.benchmarks(workspace.discover(tmp_path / "other"))
    bad = tmp_path / "bad" / "packages" / "x"
    bad.mkdir(parents=True)
    (bad / "pyproject.toml").write_text('[project]\nname = "crossedge-x"\n[tool.crossedge]\nbenchmarks = "x"\n')
    with pytest.raises(workspace.WorkspaceError, match="must be a list"):
        workspace.discover(tmp_path / "bad")


def test_a_package_made_by_new_package_is_discovered_with_its_benchmark(tmp_path):
    from crossedge.core.newpackage import new_package

    write_pyproject(tmp_path / "packages" / "core", "crossedge-core")
    new_package("sensing", tmp_path / "packages" / "sensing")
    found = workspace.discover(tmp_path)
    assert workspace.in_repo_dependencies(found, "sensing") == ["core"]
    assert workspace.benchmarks(found) == ["sensing-backend"]


def test_test_no_deps_are_read_and_must_be_pinned(tmp_path):
    folder = tmp_path / "packages" / "data"
    write_pyproject(folder, "crossedge-data")
    text = (folder / "pyproject.toml").read_text()
    (folder / "pyproject.toml").write_text(text + '[tool.crossedge]\ntest-no-deps = ["some-data==1.0"]\n')
    assert workspace.discover(tmp_path)["data"].test_no_deps == ("some-data==1.0",)
    (folder / "pyproject.toml").write_text(text + '[tool.crossedge]\ntest-no-deps = ["some-data"]\n')
    with pytest.raises(workspace.WorkspaceError, match="pinned"):
        workspace.discover(tmp_path)
    assert workspace.discover(ROOT)["crossmodal"].test_no_deps == ("aeon-neuro==0.1.0",)
