"""Every backend runs crossedge-core's conformance suite; registration and dependency errors are checked here."""

import pytest
import torch

from crossedge.core import get_registry
from crossedge.core.conformance.backend import BackendConformance, assert_missing_dependency_error
from crossedge.ondevice.backends import (
    BackendCapabilityError,
    BackendUnavailableError,
    ExecuTorchBackend,
    OnnxRuntimeBackend,
    PackedLinear,
    TorchCompileBackend,
    TorchEagerBackend,
    TorchOneDNNBackend,
    pack_linears,
    prepare,
)
from crossedge.ondevice.networks import MobileNetV2, with_batch_statistics


class OndeviceConformance(BackendConformance):
    """The core suite plus parity on this package's MobileNetV2 (what the latency study prepares)."""

    def test_parity_mobilenet(self, backend):
        torch.manual_seed(0)
        model = with_batch_statistics(MobileNetV2(width_mult=0.5), torch.randn(64, 1, 8, 8))
        self.check_parity(backend, model, (torch.randn(4, 1, 8, 8),), "mobilenetv2-0.5")


class TestTorchEager(OndeviceConformance):
    backend_factory = TorchEagerBackend

    def test_bfloat16_is_close_and_leaves_the_reference_fp32(self, backend):
        model = MobileNetV2(width_mult=0.5).eval()
        x = torch.randn(2, 1, 8, 8)
        prepared = backend.prepare(model, (x,), dtype="bf16")
        assert prepared(x).dtype == torch.bfloat16
        assert next(model.parameters()).dtype == torch.float32
        assert (prepared(x).float() - model(x)).abs().max() < 0.1


class TestTorchCompile(BackendConformance):
    backend_factory = TorchCompileBackend

    # Inductor compiles every new model and shape for tens of seconds on 2 cores:
    # the CNN parity and the capability checks cover it; BERT and new shapes run eagerly elsewhere.
    def test_causal_lm_decodes_like_eager(self, backend):
        pytest.skip("compiling a causal LM takes tens of seconds; tests/test_backends_compose.py decodes through it")

    def test_parity_tiny_bert(self, backend):
        pytest.skip("torch.compile is checked on one tiny model (the CNN) to keep the suite fast")

    def test_static_backend_refuses_new_shapes(self, backend):
        pytest.skip("torch.compile recompiles for new shapes; too slow for the unit suite")

    def test_parity_minilm(self, backend):
        pytest.skip("compiling minilm-l6 takes ~20 s here; the ondevice-backends benchmark measures its parity")


class TestTorchOneDNN(OndeviceConformance):
    backend_factory = TorchOneDNNBackend


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 16])
def test_packed_linear_matches_linear(rows):
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    packed = PackedLinear(linear)
    x = torch.randn(1, rows, 48)
    with torch.inference_mode():
        assert torch.allclose(packed(x), linear(x), atol=1e-5)
        # Non-contiguous inputs (a transposed view) give the same result too.
        y = torch.randn(48, rows).t()
        assert torch.allclose(packed(y), linear(y), atol=1e-5)
    with pytest.raises(BackendCapabilityError, match="inference-only"):
        packed(torch.randn(2, 48, requires_grad=True))


def test_onednn_backend_decodes_a_causal_lm_like_eager():
    from crossedge.core.testing import tiny_causal_lm

    model, _ = tiny_causal_lm("llama", seed=0)
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6]])
    with torch.inference_mode():
        expected = model.generate(prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)
        linears = sum(type(m) is torch.nn.Linear for m in model.modules())
        backend = TorchOneDNNBackend()
        backend.require(purpose="specdec bench", dynamic_shapes=True, kv_cache_decoding=True)
        packed = backend.prepare_causal_lm(model)
        assert not any(type(m) is torch.nn.Linear for m in packed.modules())
        assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == linears
        got = packed.generate(prompt, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert got.tolist() == expected.tolist()
    with pytest.raises(BackendCapabilityError, match="training"):
        backend.require(purpose="finetune", training=True)


def test_pack_linears_leaves_linear_subclasses_alone():
    class Custom(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Custom(4, 4))
    assert pack_linears(model) == 1
    assert isinstance(model[0], PackedLinear) and type(model[1]) is Custom


class TestOnnxRuntime(OndeviceConformance):
    backend_factory = OnnxRuntimeBackend


class TestExecuTorch(OndeviceConformance):
    backend_factory = ExecuTorchBackend


class MissingWheelBackend(OnnxRuntimeBackend):
    name = "needs-missing"
    requires = (("crossedge_no_such_module", "crossedge-no-such-package"),)
    install_hint = ""


def test_missing_dependency_names_package_and_pip_command():
    backend = MissingWheelBackend()
    assert not backend.available()
    assert "crossedge-no-such-package" in backend.unavailable_reason()
    assert_missing_dependency_error(backend, "crossedge-no-such-package")


def test_backends_register_through_the_hook(ondevice_plugin):
    registry = get_registry("backend")
    assert {"torch-eager", "torch-compile", "onnxruntime", "executorch"} <= set(registry.names())
    assert registry.get("eager") is TorchEagerBackend  # crossedge-core's own, not a second copy
    assert registry.get("ort") is OnnxRuntimeBackend  # classes are registered, not instances
    model = MobileNetV2(width_mult=0.5).eval()
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(prepare(model, (x,), backend="eager")(x), model(x))


def test_executorch_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(BackendUnavailableError, match=r"executorch.*pip install"):
        ExecuTorchBackend().prepare(MobileNetV2(width_mult=0.5), (torch.randn(1, 1, 8, 8),))


def test_require_refuses_with_the_backends_that_would_work():
    OnnxRuntimeBackend().require(purpose="quant eval")  # static fp32 inference is fine
    with pytest.raises(BackendCapabilityError, match=r"specdec bench.*dynamic input shapes.*torch-eager"):
        OnnxRuntimeBackend().require(purpose="specdec bench", dynamic_shapes=True)
    with pytest.raises(BackendCapabilityError, match="dtype bfloat16"):
        OnnxRuntimeBackend().require(purpose="x", dtype="bf16")
    TorchEagerBackend().require(purpose="training", training=True, dynamic_shapes=True, dtype="bf16")


@pytest.mark.parametrize("backend_cls", [OnnxRuntimeBackend, ExecuTorchBackend])
@pytest.mark.usefixtures("ondevice_plugin")  # the alternatives named are the registered backends
def test_static_backends_refuse_kv_cache_decoding_before_checking_their_wheel(backend_cls, monkeypatch):
    # Refused for what it cannot do, even where its runtime is missing: installing it would not help.
    monkeypatch.setattr(backend_cls, "requires", (("crossedge_no_such_module", "crossedge-no-such-package"),))
    backend = backend_cls()
    with pytest.raises(BackendCapabilityError) as caught:
        backend.require(purpose="specdec bench", dynamic_shapes=True, kv_cache_decoding=True)
    message = str(caught.value)
    assert f"{backend.name!r} cannot be used for specdec bench" in message
    assert "mutable KV cache" in message and "use --backend torch-eager or torch-compile" in message
    with pytest.raises(BackendCapabilityError, match="custom"):
        backend.require(purpose="quant eval", custom_kernels=True)
    with pytest.raises(BackendCapabilityError, match="KV cache"):
        backend.prepare_causal_lm(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("backend_cls", [TorchEagerBackend, TorchCompileBackend, TorchOneDNNBackend])
def test_torch_backends_accept_causal_lm_uses(backend_cls):
    backend = backend_cls()
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    backend.require(purpose="quant eval", dynamic_shapes=True, kv_cache_decoding=True, custom_kernels=True)
    assert backend.capabilities()["kv_cache_decoding"] and backend.capabilities()["custom_kernels"]


@pytest.mark.usefixtures("ondevice_plugin")
def test_backend_options_come_from_the_spec():
    from crossedge.core.backends import get_backend
    from crossedge.core.specs import SpecError

    assert get_backend("torch-compile:mode=reduce-overhead").mode == "reduce-overhead"
    ort = get_backend("ort:threads=2,dynamo=false")
    assert type(ort) is OnnxRuntimeBackend and (ort.threads, ort.dynamo) == (2, False)
    with pytest.raises(SpecError, match=r"no option 'mod'.*did you mean 'mode'"):
        get_backend("inductor:mod=max-autotune")
