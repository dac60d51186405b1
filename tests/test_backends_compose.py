"""Integration: crossedge-ondevice's backends behind `specdec bench/generate --backend` and `quant eval --backend`."""

import copy

import pytest
from click.testing import CliRunner

from crossedge.core.backends import resolve_backend
from crossedge.core.cli import build_cli
from crossedge.specdec.bench import target_backend
from crossedge.specdec.drafters import CopyDrafter
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, tiny_target

COMMANDS = {
    "specdec bench": ["specdec", "bench", "--model", "no-such-model", "--drafter", "copy", "--suite", "default"],
    "specdec generate": ["specdec", "generate", "--model", "no-such-model", "hello"],
    "quant eval": ["quant", "eval", "--model", "no-such-model", "--methods", "rtn"],
}


@pytest.mark.parametrize("backend", ["onnxruntime", "ort", "executorch"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_static_graph_backends_are_refused_before_any_model_loads(command, backend):
    # The model does not exist: a refusal that mentions the backend proves nothing was loaded first.
    result = CliRunner().invoke(build_cli(), [*COMMANDS[command], "--backend", backend])
    assert result.exit_code == 1, result.output
    name = "onnxruntime" if backend == "ort" else backend
    assert f"backend {name!r} cannot be used for {command}" in result.output
    assert "mutable KV cache" in result.output
    assert "use --backend torch-eager or torch-compile" in result.output
    if command == "quant eval":
        assert "custom (quantized int8/int4) kernels" in result.output


def test_unknown_backend_names_the_installed_ones():
    result = CliRunner().invoke(build_cli(), [*COMMANDS["specdec generate"], "--backend", "torch-compil"])
    assert result.exit_code == 1
    assert "unknown backend 'torch-compil': did you mean 'torch-compile'" in result.output


def test_default_backend_is_ondevices_torch_eager():
    backend = resolve_backend("torch-eager", purpose="quant eval", kv_cache_decoding=True, custom_kernels=True)
    assert type(backend).__name__ == "TorchEagerBackend"
    model, _ = tiny_target("llama")
    assert backend.prepare_causal_lm(model) is model


def test_torch_compile_decodes_token_identically_to_eager():
    backend = target_backend("torch-compile")
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    model, tokenizer = tiny_target("llama")
    compiled = backend.prepare_causal_lm(copy.deepcopy(model))
    ids = tokenizer(CONFORMANCE_PROMPTS[1], return_tensors="pt").input_ids
    for drafters, policy in ((None, None), ([CopyDrafter()], "constant:k=4")):
        expected = SpeculativeDecoder(model, drafters, policy).generate(ids, 24).tokens
        assert SpeculativeDecoder(compiled, drafters, policy).generate(ids, 24).tokens == expected
