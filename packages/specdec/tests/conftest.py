"""specdec tests never load entry points: the plugin module is registered per test by hand."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture(autouse=True)
def specdec_plugin():
    """The specdec plugin module registered for each test (built-in drafters and policies resolve by name)."""
    from crossedge.specdec import plugin

    with registered(plugin, name="specdec-test"):
        yield plugin


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from threads, and a shared machine makes extra threads slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _measurements(tmp_path, monkeypatch):
    """Kernel choices and verification costs a test times are its own (never the user's cache)."""
    monkeypatch.setenv("CROSSEDGE_MEASUREMENTS", str(tmp_path / "measurements"))
