"""Unit tests never load entry points: the plugin is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """An empty crossedge cache for every test: nothing here reads or writes the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CROSSEDGE_CACHE", str(root))
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    # the tests' problems are tiny; more threads only add contention on shared CI machines
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def plugin():
    """The crossedge-crossmodal plugin registered for one test."""
    from crossedge.crossmodal import plugin

    with registered(plugin, name="crossmodal-under-test"):
        yield plugin
