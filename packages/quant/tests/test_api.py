"""quantize_ filters and skip lists, calibration errors, plain torch.nn models."""

import pytest
import torch

from crossedge.core import CrossedgeError
from crossedge.quant import (
    CalibrationError,
    Int8WeightLinear,
    QuantizedLinear,
    RTNConfig,
    load_quantized,
    quantization_map,
    quantize_,
    save_quantized,
    weight_bytes,
)


def test_filter_fn_and_skip_patterns(quant_plugin, fresh_lm):
    model, _ = fresh_lm
    quantize_(model, RTNConfig(skip=["*.mlp.down_proj"]), lambda m, name: "layers.0." in name)
    names = set(quantization_map(model)["modules"])
    assert names and all("layers.0." in n for n in names)
    assert "model.layers.0.mlp.down_proj" not in names
    assert not isinstance(model.get_submodule("model.layers.1.self_attn.q_proj"), QuantizedLinear)


def test_lm_head_quantized_only_when_asked(quant_plugin, fresh_lm):
    model, _ = fresh_lm
    quantize_(model, "rtn:keep_lm_head=false")
    assert isinstance(model.get_output_embeddings(), Int8WeightLinear)


def test_needs_calibration_and_refuses_requantization(quant_plugin, fresh_lm, sample_ids):
    model, _ = fresh_lm
    with pytest.raises(CalibrationError, match="needs calibration data"):
        quantize_(model, "smoothquant")
    quantize_(model, "smoothquant", calibration=iter([sample_ids]))  # any iterable, even one-shot
    with pytest.raises(CrossedgeError, match="already quantized"):
        quantize_(model, "rtn")


def test_empty_calibration_is_refused(quant_plugin, fresh_lm):
    model, _ = fresh_lm
    with pytest.raises(CalibrationError, match="no batches"):
        quantize_(model, "gptq:group_size=32", calibration=[])


@pytest.mark.parametrize(
    "spec,tolerance",
    [
        ("rtn", 0.02),
        ("rtn:bits=4,group_size=32", 0.1),
        ("w8a8", 0.03),
        ("smoothquant", 0.03),
        ("crossquant", 0.03),
        ("gptq:bits=4,group_size=32", 0.1),
        ("mixed:group_size=32,budget_fraction=0.25", 0.1),
    ],
)
def test_plain_cnn(quant_plugin, cnn, tmp_path, spec, tolerance):
    torch.manual_seed(3)
    images = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    with torch.no_grad():
        ref = cnn(images[0])
    before = weight_bytes(cnn)
    quantize_(cnn, spec, calibration=images)
    assert isinstance(cnn.head[1], QuantizedLinear) and isinstance(cnn.features[0], torch.nn.Conv2d)
    with torch.no_grad():
        out = cnn(images[0])
    assert float((out - ref).abs().max() / ref.abs().max()) < tolerance
    assert weight_bytes(cnn) < before
    save_quantized(cnn, tmp_path)
    from conftest import SmallCNN

    loaded = load_quantized(tmp_path, model=SmallCNN())
    with torch.no_grad():
        assert torch.equal(loaded(images[0]), out)


def test_lm_head_int8_with_a_4bit_method(quant_plugin, fresh_lm):
    from crossedge.quant import Int4WeightLinear, QuantConfigError
    from crossedge.quant.modules import Int8Embedding

    model, _ = fresh_lm
    with pytest.raises(QuantConfigError, match="keep_lm_head=false"):
        RTNConfig(lm_head_int8=True)
    quantize_(model, "rtn:bits=4,group_size=32,keep_lm_head=false,lm_head_int8=true")
    assert isinstance(model.get_output_embeddings(), Int8WeightLinear)
    assert isinstance(model.get_input_embeddings(), Int8Embedding)
    assert isinstance(model.get_submodule("model.layers.0.mlp.up_proj"), Int4WeightLinear)
