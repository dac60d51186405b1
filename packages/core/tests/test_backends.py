"""The backend contract and resolve_backend: --backend for specdec and quant, with or without crossedge-ondevice."""

import importlib.util
import subprocess
import sys

import pytest

from crossedge.core import CrossedgeError, UnknownNameError, get_registry, registered
from crossedge.core.backends import DEFAULT_BACKEND, TorchEagerBackend, get_backend, resolve_backend
from crossedge.core.conformance.backend import BackendConformance
from crossedge.core.contracts.backend import Backend, BackendCapabilityError, dtype_name, native_bf16, resolve_dtype
from crossedge.core.specs import SpecError
from crossedge.core.testing import BackendPlugin, CountingBackend, StaticGraphBackend


class TestCoreTorchEager(BackendConformance):
    backend_factory = TorchEagerBackend


class TestCountingBackend(BackendConformance):
    backend_factory = CountingBackend.fresh()


class TestStaticGraphContract(BackendConformance):
    """A backend that cannot prepare anything still declares and refuses correctly."""

    backend_factory = StaticGraphBackend

    def test_parity_cnn(self, backend):
        with pytest.raises(NotImplementedError, match="static-graph"):
            super().test_parity_cnn(backend)

    def test_parity_tiny_bert(self, backend):
        pytest.skip("prepares nothing; the CNN case shows the refusal")

    def test_static_backend_refuses_new_shapes(self, backend):
        pytest.skip("prepares nothing")

    def test_parity_minilm(self, backend):
        pytest.skip("prepares nothing")


class Mute:
    """A registered backend that does not follow the contract (duck-typed, as third-party ones used to be)."""

    name = "mute"

    def require(self, *, purpose, **capabilities):
        pass

    def prepare_causal_lm(self, model):
        return model


def test_default_is_registered_by_core_itself():
    registry = get_registry("backend")
    assert registry.entry("eager").obj is TorchEagerBackend and registry.entry("eager").name == DEFAULT_BACKEND
    backend = resolve_backend(DEFAULT_BACKEND, purpose="specdec bench", kv_cache_decoding=True)
    assert type(backend) is TorchEagerBackend
    model = object()
    assert backend.prepare_causal_lm(model) is model


def test_a_plugin_backend_is_built_and_asked_with_the_needed_capabilities():
    counting = CountingBackend.fresh()
    with registered(BackendPlugin(counting), name="counting-test"):
        backend = resolve_backend("counting", purpose="quant eval", custom_kernels=True)
    assert type(backend) is counting
    assert counting.requests == [{"purpose": "quant eval", "custom_kernels": True}]
    assert CountingBackend.requests == []  # fresh() keeps each test's counters apart


def test_a_refusing_backend_names_itself_the_capability_and_the_alternatives():
    with registered(BackendPlugin(StaticGraphBackend, CountingBackend.fresh()), name="static-test"):
        with pytest.raises(
            BackendCapabilityError, match=r"'static-graph'.*specdec bench.*KV cache.*--backend torch-eager or counting"
        ):
            resolve_backend("static-graph", purpose="specdec bench", kv_cache_decoding=True)
        assert resolve_backend("static-graph", purpose="a static forward").name == "static-graph"


def test_unknown_name_gets_close_matches_and_every_registered_backend():
    with (
        registered(BackendPlugin(CountingBackend.fresh(), StaticGraphBackend), name="counting-test"),
        pytest.raises(UnknownNameError) as caught,
    ):
        resolve_backend("countin", purpose="specdec bench")
    message = str(caught.value)
    assert "unknown backend 'countin': did you mean 'counting'" in message
    assert "Registered backends: counting, static-graph, torch-eager." in message


def test_unknown_name_without_ondevice_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "crossedge.ondevice" else real(name, *a)
    )
    with pytest.raises(UnknownNameError, match=r"unknown backend 'torch-compile'.*pip install crossedge-ondevice"):
        resolve_backend("torch-compile", purpose="specdec bench")


def test_a_backend_that_is_not_a_subclass_is_refused_with_what_to_do():
    with (
        registered(BackendPlugin(Mute), name="mute-test"),
        pytest.raises(CrossedgeError, match=r"'mute'.*'mute-test'.*not a subclass of crossedge\.core\.contracts"),
    ):
        resolve_backend("mute", purpose="quant eval")


def test_a_backend_registered_as_an_instance_is_told_to_register_its_class():
    instance = type("Inst", (TorchEagerBackend,), {"name": "inst"})()
    with (
        registered(BackendPlugin(instance), name="inst-test"),
        pytest.raises(CrossedgeError, match=r"registered backend 'inst' as an instance of Inst.*register\(Inst\)"),
    ):
        get_backend("inst")


def test_supports_reads_class_attributes_and_refuses_unknown_flags():
    assert TorchEagerBackend.supports(kv_cache_decoding=True, dtype="bf16")
    assert not StaticGraphBackend.supports(dynamic_shapes=True)
    assert StaticGraphBackend.supports(dtype="float32")
    with pytest.raises(CrossedgeError, match="unknown backend capabilities"):
        Backend.supports(kv_cache=True)


def test_dtype_names():
    import torch

    assert dtype_name("bf16") == dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(CrossedgeError, match="unknown dtype"):
        dtype_name("int3")


NATIVE = {"torch_cpu_capability": "AVX512", "onednn_max_isa": "all"}


@pytest.mark.parametrize(
    ("flags", "caps", "native", "reason"),
    [
        (["avx2", "avx512f", "avx512_bf16"], NATIVE, True, "has avx512_bf16"),
        (
            ["avx2", "amx_bf16"],
            {"torch_cpu_capability": "AVX512", "onednn_max_isa": "AVX512_CORE_AMX"},
            True,
            "amx_bf16",
        ),
        (["avx2", "fma"], NATIVE, False, "no avx512_bf16 or amx_bf16"),
        (["avx512f", "avx512_vnni"], NATIVE, False, "no avx512_bf16"),
        (["avx512_bf16"], {"torch_cpu_capability": "AVX2", "onednn_max_isa": "all"}, False, "capped at AVX2"),
        (["avx512_bf16"], {"torch_cpu_capability": "AVX512", "onednn_max_isa": "avx2"}, False, "oneDNN is capped"),
    ],
)
def test_native_bf16_reads_flags_and_caps(flags, caps, native, reason):
    got, why = native_bf16(flags, caps)
    assert got is native
    assert reason in why


def test_resolve_dtype(monkeypatch):
    import crossedge.core.contracts.backend as contract

    assert resolve_dtype("bf16") == ("bfloat16", None)
    monkeypatch.setattr(contract, "native_bf16", lambda: (True, "the CPU has avx512_bf16"))
    assert resolve_dtype("auto") == ("bfloat16", "auto: bfloat16, since the CPU has avx512_bf16")
    dtype, why = resolve_dtype("auto", quantized=True)
    assert dtype == "float32" and "quantized linears" in why
    monkeypatch.setattr(contract, "native_bf16", lambda: (False, "the CPU has no avx512_bf16 or amx_bf16"))
    assert resolve_dtype("auto")[0] == "float32"
    with pytest.raises(CrossedgeError, match="unknown dtype 'bf8'"):
        resolve_dtype("bf8")


def test_importing_the_contract_does_not_import_torch():
    code = "import sys, crossedge.core.contracts.backend, crossedge.core.backends; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


class Tunable(TorchEagerBackend):
    """An eager backend with options, to check that a spec's options reach ``__init__``."""

    name = "tunable"

    def __init__(self, threads: int = 1, mode: str | None = None, fused: bool = False):
        self.threads, self.mode, self.fused = threads, mode, fused


def test_a_spec_builds_the_class_with_coerced_options():
    with registered(BackendPlugin(Tunable), name="tunable-test"):
        backend = resolve_backend("tunable:threads=4,mode=reduce-overhead,fused=yes", purpose="specdec bench")
        assert (backend.threads, backend.mode, backend.fused) == (4, "reduce-overhead", True)
        assert get_backend("tunable").threads == 1
        with pytest.raises(SpecError, match=r"character 9.*no option 'mdoe'; did you mean 'mode'"):
            get_backend("tunable:mdoe=x")
        with pytest.raises(SpecError, match=r"option threads"):
            get_backend("tunable:threads=many")
