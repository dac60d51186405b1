"""resolve_backend: --backend for specdec and quant, with or without crossedge-ondevice installed."""

import importlib.util

import pytest

from crossedge.core import CrossedgeError, UnknownNameError, registered
from crossedge.core.backends import DEFAULT_BACKEND, PlainEager, resolve_backend
from crossedge.core.testing import BackendPlugin, CountingBackend, StaticGraphBackend


class Mute:
    """A registered backend that does not say whether it runs a causal LM."""

    name = "mute"


def test_default_works_with_no_backend_registered():
    backend = resolve_backend(DEFAULT_BACKEND, purpose="specdec bench", kv_cache_decoding=True)
    assert isinstance(backend, PlainEager)
    model = object()
    assert backend.prepare_causal_lm(model) is model


def test_a_plugin_backend_is_asked_with_the_needed_capabilities():
    counting = CountingBackend()
    with registered(BackendPlugin(counting), name="counting-test"):
        assert resolve_backend("counting", purpose="quant eval", custom_kernels=True) is counting
    assert counting.requests == [{"purpose": "quant eval", "custom_kernels": True}]


def test_a_refusing_backend_names_itself_the_capability_and_the_alternative():
    with registered(BackendPlugin(StaticGraphBackend()), name="static-test"):
        with pytest.raises(CrossedgeError, match=r"'static-graph'.*specdec bench.*KV cache.*--backend torch-eager"):
            resolve_backend("static-graph", purpose="specdec bench", kv_cache_decoding=True)
        assert resolve_backend("static-graph", purpose="a static forward").name == "static-graph"


def test_unknown_name_gets_close_matches():
    with (
        registered(BackendPlugin(CountingBackend()), name="counting-test"),
        pytest.raises(UnknownNameError, match=r"unknown backend 'countin': did you mean 'counting'"),
    ):
        resolve_backend("countin", purpose="specdec bench")


def test_unknown_name_without_ondevice_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "crossedge.ondevice" else real(name, *a)
    )
    with pytest.raises(CrossedgeError, match=r"unknown backend 'torch-compile'.*pip install crossedge-ondevice"):
        resolve_backend("torch-compile", purpose="specdec bench")


def test_a_backend_without_the_protocol_is_refused():
    with (
        registered(BackendPlugin(Mute()), name="mute-test"),
        pytest.raises(CrossedgeError, match=r"'mute'.*no require\(\) method.*--backend torch-eager"),
    ):
        resolve_backend("mute", purpose="quant eval")
