"""Agile-Quant: power-of-two scales, exact kernels, 4-bit activations, saved form, token pruning."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossedge.core.errors import CrossedgeError
from crossedge.quant import QuantConfigError, QuantFormatError, load_quantized, quantize_, save_quantized
from crossedge.quant.config import parse_spec
from crossedge.quant.methods.agile import (
    AgileQuantLinear,
    keep_indices,
    pow2_exponent,
    prune_prompt_tokens,
    rescale_exponent_add,
)
from crossedge.quant.modules import int_mm_is_exact
from crossedge.quant.testing import QuantizerConformance


class TestAgile8(QuantizerConformance):
    spec = "agile:matmul=int8pack-bf16"
    tolerance = 0.05


class TestAgile4(QuantizerConformance):
    spec = "agile:act_bits=4,matmul=int8pack-bf16"
    tolerance = 0.6


class TestAgileUnguided(QuantizerConformance):
    spec = "agile:guide=false,matmul=fp32-codes"
    tolerance = 0.05
    shrinks = False  # fp32-codes keeps a float32 copy of the codes


def _agile_layers(model):
    return [m for m in model.modules() if isinstance(m, AgileQuantLinear)]


@pytest.fixture(params=[8, 4])
def agile_model(request, quant_plugin, fresh_lm, sample_ids):
    model, tokenizer = fresh_lm
    quantize_(model, f"agile:act_bits={request.param}", calibration=[sample_ids])
    return model, tokenizer, request.param


def test_scales_are_powers_of_two_stored_as_int8_exponents(agile_model, sample_ids):
    model, _, bits = agile_model
    layers = _agile_layers(model)
    assert layers
    for layer in layers:
        assert layer.wexp.dtype == torch.int8
        assert torch.equal(layer.wscale, torch.ldexp(torch.ones(layer.out_features), layer.wexp.int()))
        mantissa, _ = torch.frexp(layer.wscale)
        assert torch.all(mantissa == 0.5)
        if layer.inv_smooth is not None:
            assert torch.all(torch.frexp(layer.inv_smooth)[0] == 0.5)
        x = torch.randn(5, layer.in_features) * 3
        q, scale = layer._quantized_input(x)
        assert torch.all(torch.frexp(scale)[0] == 0.5)
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
        assert int(q.abs().max()) > (2 ** (bits - 1) - 1) // 2  # the pow2 scale wastes at most one bit


def test_pow2_exponent_clips_nothing():
    absmax = torch.tensor([1e-3, 0.7, 1.0, 127.0, 128.0, 3000.0])
    for qmax in (7, 127):
        k = pow2_exponent(absmax, qmax)
        assert torch.all(torch.ldexp(torch.full_like(absmax, qmax), k) >= absmax)
        assert torch.all(torch.ldexp(torch.full_like(absmax, qmax), k - 1) < absmax)


@pytest.mark.parametrize("matmul", ["fp32-codes", "int_mm"])
def test_kernel_equals_reference_bit_for_bit(agile_model, matmul):
    if matmul == "int_mm" and not int_mm_is_exact():
        pytest.skip("torch._int_mm is not exact on this CPU")
    model, _, _ = agile_model
    torch.manual_seed(1)
    for layer in _agile_layers(model):
        layer.matmul = matmul
        x = torch.randn(7, layer.in_features)
        assert torch.equal(layer(x), layer.reference_forward(x))


def test_int8pack_kernel_is_close(agile_model):
    model, _, _ = agile_model
    for layer in _agile_layers(model):
        layer.matmul = "int8pack-bf16"
        x = torch.randn(3, layer.in_features)
        ref = layer.reference_forward(x)
        assert (layer(x) - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_exponent_add_rescale_equals_multiply():
    torch.manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (6, 40), dtype=torch.int32)
    acc[0, :3] = 0
    k = torch.randint(-20, 3, (6, 1), dtype=torch.int32) + torch.randint(-12, 0, (40,), dtype=torch.int32)
    assert torch.equal(rescale_exponent_add(acc, k), acc.float() * torch.ldexp(torch.ones(acc.shape), k))
    assert torch.equal(torch.ldexp(acc.float(), k), acc.float() * torch.ldexp(torch.ones(acc.shape), k))


def test_four_bit_codes_run_on_int8_kernels(agile_model):
    model, _, bits = agile_model
    layer = _agile_layers(model)[0]
    q, _ = layer._quantized_input(torch.randn(4, layer.in_features))
    assert q.dtype == torch.int8 and layer.qmax == 2 ** (bits - 1) - 1


def test_saves_reloads_bit_identical_and_refuses_a_mismatched_file(agile_model, sample_ids, tmp_path):
    model, tokenizer, _ = agile_model
    folder = save_quantized(model, tmp_path / "q", tokenizer)
    loaded = load_quantized(folder)
    with torch.no_grad():
        assert torch.equal(model(sample_ids).logits, loaded(sample_ids).logits)
    for a, b in zip(_agile_layers(model), _agile_layers(loaded), strict=True):
        assert torch.equal(a.qweight, b.qweight) and torch.equal(a.wexp, b.wexp)
    tensors = load_file(str(folder / "model.safetensors"))
    assert not any(n.endswith(".wscale") for n in tensors), "scales are saved as exponents only"
    name = next(n for n in tensors if n.endswith("q_proj.wexp"))
    tensors[name] = tensors[name][:1].clone()
    save_file(tensors, str(folder / "model.safetensors"))
    import json

    path = folder / "quantization.json"
    data = json.loads(path.read_text())
    data["weights"] = {"file": "model.safetensors"}
    path.write_text(json.dumps(data))
    with pytest.raises(QuantFormatError, match="shape"):
        load_quantized(folder)


def test_guidance_is_reported(quant_plugin, fresh_lm, sample_ids):
    from crossedge.quant import quantize

    model, _ = fresh_lm
    result = quantize(model, "agile", calibration=[sample_ids])
    guidance = result.details["guidance"]
    assert set(guidance) == set(result.modules) - {"lm_head"}
    assert all(g["alpha"] in (None, 0.25, 0.5, 0.75) for g in guidance.values())


@pytest.mark.parametrize(
    "spec, message",
    [
        ("agile:act_bits=6", "act_bits must be 4 or 8"),
        ("agile:act_granularity=per_tensor", "per_token"),
        ("agile:weight_granularity=per_tensor", "per_channel"),
        ("agile:fake=true", "no fake path"),
        ("agile:matmul=nope", "matmul must be one of"),
    ],
)
def test_config_validation(quant_plugin, spec, message):
    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)


def test_keep_indices_keep_the_count_the_order_and_the_last_token():
    importance = torch.tensor([[5.0, 1.0, 4.0, 0.5, 3.0, 0.1]])
    kept = keep_indices(importance, 3)
    assert kept.tolist() == [[0, 2, 5]]


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25])
def test_prune_prompt_tokens(quant_plugin, fresh_lm, sample_ids, ratio):
    model, _ = fresh_lm
    ids = sample_ids[:, :64]
    logits, kept = prune_prompt_tokens(model, ids, keep_ratio=ratio, after_layer=0)
    assert kept.shape == (1, round(64 * ratio)) and int(kept[0, -1]) == 63
    assert torch.all(kept[0, 1:] > kept[0, :-1])
    if ratio == 1.0:
        with torch.no_grad():
            full = model(ids).logits[:, -1].float()
        torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


def test_prune_refuses_bad_arguments(fresh_lm, sample_ids):
    model, _ = fresh_lm
    with pytest.raises(QuantConfigError, match="keep_ratio"):
        prune_prompt_tokens(model, sample_ids, keep_ratio=0.0, after_layer=0)
    with pytest.raises(QuantConfigError, match="after_layer"):
        prune_prompt_tokens(model, sample_ids, keep_ratio=0.5, after_layer=9)
