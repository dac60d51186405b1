"""A folder written by quant is a model source: load_model gives the saved integer model, never random weights."""

import copy

import pytest
import torch
from click.testing import CliRunner

from crossedge.core.cli import build_cli
from crossedge.core.errors import ModelSourceError
from crossedge.core.sources import load_model
from crossedge.core.testing import save_tiny_causal_lm
from crossedge.quant import QuantizedLinear, quantization_map, quantize_, save_quantized


@pytest.mark.parametrize("spec", ["rtn", "rtn:bits=4,group_size=32", "w8a8", "gptq:group_size=32"])
def test_quantized_folder_loads_like_the_in_process_model(quant_plugin, tiny_lm, sample_ids, tmp_path, spec):
    model, tokenizer = tiny_lm
    quant = quantize_(copy.deepcopy(model), spec, calibration=[sample_ids])
    folder = save_quantized(quant, tmp_path / "q", tokenizer)
    loaded = load_model(str(folder))
    assert any(isinstance(m, QuantizedLinear) for m in loaded.model.modules())
    assert quantization_map(loaded.model)["config"] == quantization_map(quant)["config"]
    with torch.no_grad():
        assert torch.equal(loaded.model(sample_ids).logits, quant(sample_ids).logits)
    assert loaded.tokenizer("abc").input_ids == tokenizer("abc").input_ids


def test_quantized_folder_refuses_a_dtype(quant_plugin, tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    folder = save_quantized(quantize_(copy.deepcopy(model), "rtn"), tmp_path / "q", tokenizer)
    with pytest.raises(ModelSourceError, match="loads as saved"):
        load_model(str(folder), dtype=torch.bfloat16)


def test_models_generate_runs_the_quantized_folder(quant_plugin, tmp_path):
    source = save_tiny_causal_lm(tmp_path / "fp32", hidden=64)
    out = tmp_path / "q"
    runner = CliRunner()
    result = runner.invoke(build_cli(), ["quant", "run", "--model", str(source), "--method", "rtn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(build_cli(), ["models", "generate", str(out), "hello", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    assert "UNEXPECTED" not in result.output and "newly initialized" not in result.output


def test_core_apply_quant_matches_in_process_quantization(quant_plugin, sample_ids, tmp_path):
    from crossedge.core.compose import apply_quant

    source = save_tiny_causal_lm(tmp_path / "fp32", hidden=64)
    result = CliRunner().invoke(
        build_cli(), ["models", "generate", str(source), "hello", "--max-new-tokens", "3", "--quant", "rtn:bits=4"]
    )
    assert result.exit_code == 0, result.output
    through_core = load_model(str(source))
    found = apply_quant(through_core, "rtn:bits=4")
    assert set(found.modules) == set(quantization_map(through_core.model)["modules"])
    direct = load_model(str(source))
    quantize_(direct.model, "rtn:bits=4")
    with torch.no_grad():
        assert torch.equal(through_core.model(sample_ids).logits, direct.model(sample_ids).logits)


def test_models_generate_quant_refuses_calibrating_methods_before_loading(quant_plugin):
    result = CliRunner().invoke(build_cli(), ["models", "generate", "no-such-model", "hi", "--quant", "gptq"])
    assert result.exit_code == 1 and "needs calibration data" in result.output and "quant run" in result.output


def test_eval_refuses_to_quantize_a_quantized_folder_before_loading(quant_plugin, tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    folder = save_quantized(quantize_(copy.deepcopy(model), "rtn"), tmp_path / "q", tokenizer)
    result = CliRunner().invoke(build_cli(), ["quant", "eval", "--model", str(folder), "--methods", "fp32,rtn"])
    assert result.exit_code == 1 and "already quantized" in result.output
