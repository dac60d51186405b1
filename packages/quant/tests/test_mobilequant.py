"""MobileQuant: learned transforms and static activation ranges; W8A8 and W4A8 on integer kernels."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossedge.core.errors import CrossedgeError
from crossedge.quant import QuantFormatError, load_quantized, quantize, save_quantized
from crossedge.quant.config import parse_spec
from crossedge.quant.methods.mobilequant import (
    InputTransform,
    Int4StaticActLinear,
    Int8StaticLinear,
    LearnedQuantLinear,
)
from crossedge.quant.testing import QuantizerConformance


class TestMobileQuantW8A8(QuantizerConformance):
    spec = "mobilequant:steps=4,matmul=int8pack-bf16"
    tolerance = 0.05


class TestMobileQuantW4A8(QuantizerConformance):
    spec = "mobilequant:weight_bits=4,group_size=32,steps=4"
    tolerance = 0.15


def _relative_error(model, reference, ids):
    with torch.no_grad():
        out = model(ids).logits
    return float((out - reference).norm() / reference.norm())


@pytest.mark.parametrize("bits", [8, 4])
def test_learning_lowers_the_block_error_and_the_logit_error(quant_plugin, tiny_lm, sample_ids, bits):
    model, _ = tiny_lm
    with torch.no_grad():
        reference = model(sample_ids).logits
    spec = f"mobilequant:weight_bits={bits},group_size=32"
    start = quantize(copy.deepcopy(model), spec + ",steps=0", calibration=[sample_ids])
    learned = quantize(copy.deepcopy(model), spec + ",steps=30", calibration=[sample_ids])
    assert start.details["block_error_initial"] == start.details["block_error_learned"]
    assert learned.details["block_error_learned"] < 0.9 * learned.details["block_error_initial"]
    assert learned.details["block_error_initial"] == pytest.approx(start.details["block_error_initial"])
    assert _relative_error(learned.model, reference, sample_ids) < _relative_error(start.model, reference, sample_ids)
    # two blocks of a Llama: q/k/v share one input, gate/up another, o and down one each
    assert learned.details["blocks_fitted"] == 2 and learned.details["input_groups"] == 8


def test_layers_reading_one_tensor_share_its_transform(quant_plugin, tiny_lm, sample_ids):
    result = quantize(copy.deepcopy(tiny_lm[0]), "mobilequant:steps=3", calibration=[sample_ids])
    attn = result.model.model.layers[0].self_attn
    for name in ("k_proj", "v_proj"):
        other = getattr(attn, name)
        assert torch.equal(other.act_scale, attn.q_proj.act_scale)
        assert torch.equal(other.inv_smooth, attn.q_proj.inv_smooth)
    assert not torch.equal(attn.o_proj.act_scale, attn.q_proj.act_scale)
    # the fit leaves the float model's own parameters untouched and without gradients
    assert all(p.grad is None for p in result.model.parameters())


def test_static_scales_do_not_depend_on_the_batch(quant_plugin, tiny_lm, sample_ids):
    result = quantize(copy.deepcopy(tiny_lm[0]), "mobilequant:steps=2", calibration=[sample_ids])
    layer = result.model.model.layers[0].mlp.down_proj
    assert isinstance(layer, Int8StaticLinear) and layer.act_scale.ndim == 0
    x = torch.randn(5, layer.in_features)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(5)])
    assert torch.equal(alone, layer(x))  # one scale for every token: rows never see each other
    big = x.clone()
    big[0] *= 100  # a dynamic per-tensor scale would change every other row's codes
    assert torch.equal(layer(big)[1:], layer(x)[1:])


@pytest.mark.parametrize(("bits", "act_dtype"), [(8, "bfloat16"), (4, "bfloat16"), (4, "float32")])
def test_kernel_matches_its_reference(bits, act_dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 32)
    x = torch.randn(6, 96)
    transform = InputTransform(torch.rand(96) + 0.5, x.abs().max() / 127)
    learned = LearnedQuantLinear(linear, transform, bits, group_size=32)
    module = learned.integer_module(act_dtype)
    assert isinstance(module, Int8StaticLinear if bits == 8 else Int4StaticActLinear)
    want = module.reference_forward(x)
    got = module(x)
    # exact sums on fp32 codes, but for int4 in bf16: the kernel's bf16 scales and output rounding
    rounded = bits == 4 and act_dtype == "bfloat16"
    assert float((got - want).abs().max() / want.abs().max()) < (1e-2 if rounded else 1e-5)
    with torch.no_grad():
        trained = learned(x)  # the training view computes the same grid, before the scales' bf16 rounding
    assert float((got - trained).abs().max() / trained.abs().max()) < (5e-2 if rounded else 1e-5)
    saved = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert saved < (0.3 if bits == 8 else 0.2) * 4 * linear.weight.numel() + 4 * (96 + 32 + 1)


@pytest.mark.parametrize("spec", ["mobilequant:steps=3", "mobilequant:weight_bits=4,group_size=32,steps=3"])
def test_saved_model_reloads_bit_identical(quant_plugin, fresh_lm, sample_ids, tmp_path, spec):
    model, tokenizer = fresh_lm
    result = quantize(model, spec, calibration=[sample_ids])
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    loaded = load_quantized(folder)
    with torch.no_grad():
        assert torch.equal(result.model(sample_ids).logits, loaded(sample_ids).logits)
    kinds = {e["kind"] for e in json.loads((folder / "quantization.json").read_text())["modules"].values()}
    assert kinds == {"int8_static" if "weight_bits=4" not in spec else "w4a8_static"}


def test_a_mismatched_file_is_refused(quant_plugin, fresh_lm, sample_ids, tmp_path):
    model, tokenizer = fresh_lm
    result = quantize(model, "mobilequant:steps=2", calibration=[sample_ids])
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("q_proj.inv_smooth"))
    tensors[name] = tensors[name][:3].clone()
    save_file(tensors, str(weights))
    data = json.loads((folder / "quantization.json").read_text())
    data["weights"] = {"file": "model.safetensors"}  # as if someone else rewrote the file
    (folder / "quantization.json").write_text(json.dumps(data))
    with pytest.raises(QuantFormatError, match=f"tensor '{name}'.*shape"):
        load_quantized(folder)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mobilequant:weight_bits=2", "weight_bits must be 4 or 8"),
        ("mobilequant:group_size=48", "group_size must be one of"),
        ("mobilequant:steps=-1", "steps must be"),
        ("mobilequant:lr=2", "lr must be"),
        ("mobilequant:fake=true", "no fake-quant path"),
        ("mobilequant:matmul=fast", "matmul must be one of"),
        ("mobilequant:act_dtype=float16", "act_dtype must be one of"),
    ],
)
def test_config_errors_say_what_to_change(quant_plugin, spec, message):
    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)


def test_without_calibration_it_asks_for_data(quant_plugin, fresh_lm):
    with pytest.raises(CrossedgeError, match="needs calibration data"):
        quantize(fresh_lm[0], "mobilequant")


def test_act16_layers_take_16_bit_codes_on_fp32_codes(quant_plugin, tiny_lm, sample_ids, tmp_path):
    model, tokenizer = tiny_lm
    result = quantize(copy.deepcopy(model), "mobilequant:steps=2,act16=*.down_proj", calibration=[sample_ids])
    down, up = result.model.model.layers[0].mlp.down_proj, result.model.model.layers[0].mlp.up_proj
    assert (down.act_bits, up.act_bits) == (16, 8) and result.details["act16_layers"] == 2
    assert down.matmul == "fp32-codes" and "16-bit" in down.kernel
    with pytest.raises(ValueError, match="fp32-codes only"):
        down.matmul = "int8pack-bf16"
    x = torch.randn(3, down.in_features)
    assert down._quantized_input(x)[0].dtype == torch.int16
    assert float((down(x) - down.reference_forward(x)).abs().max()) < 1e-4
    loaded = load_quantized(save_quantized(result.model, tmp_path / "q", tokenizer))
    with torch.no_grad():
        assert torch.equal(result.model(sample_ids).logits, loaded(sample_ids).logits)
    w4 = quantize(copy.deepcopy(model), "mobilequant:weight_bits=4,group_size=32,steps=2,act16=*.down_proj",
                  calibration=[sample_ids])  # fmt: skip
    w4_down = w4.model.model.layers[0].mlp.down_proj
    assert w4_down.act_bits == 16 and w4_down.scales_zeros.dtype == torch.float32  # bf16 cannot hold the codes
