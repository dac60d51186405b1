"""Core tests never load entry points: plugins are registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty crossedge cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CROSSEDGE_CACHE", str(root))
    return root


@pytest.fixture
def cli():
    """A fresh CLI object and a click runner."""
    from click.testing import CliRunner

    from crossedge.core.cli import build_cli

    runner = CliRunner()

    def invoke(*args, **kwargs):
        return runner.invoke(build_cli(), list(args), **kwargs)

    return invoke
