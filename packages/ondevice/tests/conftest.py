import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402


@pytest.fixture
def ondevice_plugin():
    """The ondevice plugin registered for one test."""
    from crossedge.ondevice import plugin

    with registered(plugin, name="ondevice-test"):
        yield plugin


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny kernels run fastest on one thread, and the test machine is shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
