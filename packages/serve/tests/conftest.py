"""Servers in these tests bind 127.0.0.1 only, on a port the OS picks, and are stopped by their fixtures.

Unit tests never load entry points: the specdec and serve plugins are registered by hand.
"""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use

import pytest  # noqa: E402

from crossedge.core import registered  # noqa: E402

API_KEY = "test-key"
MAX_TOKENS = 24


@pytest.fixture(scope="session", autouse=True)
def plugins():
    """The specdec plugin (drafters, policies) and the serve plugin (the command), for the whole session."""
    from crossedge.serve import plugin as serve_plugin
    from crossedge.specdec import plugin as specdec_plugin

    with registered(specdec_plugin, name="specdec-under-test"), registered(serve_plugin, name="serve-under-test"):
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and a shared machine makes extra threads slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A tiny random llama with a chat template, saved as a local model folder."""
    from crossedge.core.testing import save_tiny_causal_lm

    folder = tmp_path_factory.mktemp("models") / "tiny"
    return str(save_tiny_causal_lm(folder, "llama", seed=1, initializer_range=0.15))


def start_server(folder, *, api_key=None, app_options=None, **options):
    """A running server for ``folder`` on 127.0.0.1 and a free port; the caller stops it.

    ``app_options`` go to ``build_app`` (body limits), the rest to ``load_served_model``.
    """
    from crossedge.serve.app import build_app
    from crossedge.serve.server import BackgroundServer
    from crossedge.serve.service import load_served_model

    served = load_served_model(folder, name="tiny", **options)
    app = build_app(served, api_key=api_key, **(app_options or {}))
    return BackgroundServer(app, host="127.0.0.1", port=0).start()


def scrape(url):
    """The server's /metrics as {series: value}."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}


@pytest.fixture(scope="session")
def server(tiny_folder, tmp_path_factory):
    """The tiny model served with the defaults of `crossedge serve` (copy drafter, cost-aware policy), no key."""
    os.environ.setdefault("CROSSEDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    running = start_server(tiny_folder)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server):
    """The real openai client pointed at the server."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
