"""Unit tests never load entry points: the plugin is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture
def plugin():
    """The crossedge-crossmodal plugin registered for one test."""
    from crossedge.crossmodal import plugin

    with registered(plugin, name="crossmodal-under-test"):
        yield plugin
