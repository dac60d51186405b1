"""crossedge new-package: the template renders into a package that installs and passes its own tests."""

import os
import subprocess
import sys

import pytest

from crossedge.core import CrossedgeError
from crossedge.core.newpackage import new_package, placeholders, render, template_root


def test_placeholders_and_refused_names():
    assert placeholders("cross_modal") == {
        "name": "cross-modal",
        "module": "cross_modal",
        "dist": "crossedge-cross-modal",
        "Class": "CrossModal",
    }
    for bad in ("Sensing", "2d", "a--b", "core", "class", "my pkg"):
        with pytest.raises(CrossedgeError, match=repr(bad)):
            placeholders(bad)
    with pytest.raises(CrossedgeError, match="unknown placeholder"):
        render("{{nme}}", placeholders("sensing"))


def test_every_template_file_renders_with_no_placeholder_left(tmp_path):
    files = new_package("sensing", tmp_path / "pkg")
    relative = sorted(str(p.relative_to(tmp_path / "pkg")) for p in files)
    assert "pyproject.toml" in relative and "src/crossedge/sensing/plugin.py" in relative
    assert "docs/sensing.md" in relative and "tests/test_sensing.py" in relative
    assert len(files) == len(list(template_root().rglob("*.tmpl")))
    for path in files:
        assert "{{" not in path.read_text() and "{{" not in str(path), path
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
    pyproject = (tmp_path / "pkg" / "pyproject.toml").read_text()
    assert 'name = "crossedge-sensing"' in pyproject and 'sensing = "crossedge.sensing.plugin"' in pyproject


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "mine.txt").write_text("the user's")
    with pytest.raises(CrossedgeError, match="not an empty folder"):
        new_package("sensing", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    assert new_package("sensing", tmp_path / "empty")


def test_the_command_creates_the_package_and_refuses_to_write_twice(cli, tmp_path):
    out = tmp_path / "fusion"
    result = cli("new-package", "fusion", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "created crossedge-fusion" in result.output and (out / "src/crossedge/fusion/backend.py").is_file()
    again = cli("new-package", "fusion", "--out", str(out))
    assert again.exit_code == 1 and "not an empty folder" in again.output


def test_the_generated_package_installs_and_passes_its_own_tests(tmp_path):
    package = tmp_path / "crossedge-gen"
    new_package("gen", package)
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(package)]
    done = subprocess.run(install, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (site / "crossedge" / "gen" / "plugin.py").is_file()  # a wheel was built and installed
    assert not (site / "crossedge" / "__init__.py").exists()  # crossedge stays a namespace
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    # Run from tmp_path, with the sources moved away, so the tests import the installed copy.
    (package / "src").rename(tmp_path / "moved-src")
    tests = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not model", "tests"]
    done = subprocess.run(tests, cwd=package, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout
