"""``int8`` and ``int4``: kernels chosen by timing on this machine, kept, and forced when asked."""

import copy

import pytest

from crossedge.core.errors import CrossedgeError
from crossedge.quant import load_quantized, quantize, save_quantized
from crossedge.quant.methods import preset
from crossedge.quant.modules import Int4WeightLinear, Int8DynamicLinear, Int8WeightLinear

KINDS = {
    "int8-weight-bf16": (Int8WeightLinear, "bfloat16"),
    "int8-weight-fp32": (Int8WeightLinear, "float32"),
    "w8a8": (Int8DynamicLinear, None),
    "int4-bf16": (Int4WeightLinear, "bfloat16"),
    "int4-fp32": (Int4WeightLinear, "float32"),
}


def shape_of(module, head=False):
    bias = "+bias" if module.bias is not None else ""
    return f"{module.out_features}x{module.in_features}{bias}{' (head)' if head else ''}"


def assert_on(module, kernel):
    cls, act_dtype = KINDS[kernel]
    assert type(module) is cls
    if act_dtype is not None:
        assert module.act_dtype == act_dtype


def test_int8_auto_times_every_candidate_and_uses_the_fastest(quant_plugin, fresh_lm):
    result = quantize(fresh_lm[0], "int8:repeats=3")
    chosen = result.details["kernels"]
    head = result.model.get_output_embeddings()
    assert chosen, "no shape was timed"
    for entry in chosen.values():
        assert set(entry["ms"]) == set(preset.INT8_KERNELS)
        assert entry["kernel"] == min(entry["ms"], key=entry["ms"].get)
    for name in result.modules:
        module = result.model.get_submodule(name)
        if hasattr(module, "out_features"):
            assert_on(module, chosen[shape_of(module, module is head)]["kernel"])
    assert sum(e["layers"] for e in chosen.values()) == sum(1 for n in result.modules if "embed" not in n)


def test_a_machine_keeps_its_choice_until_asked_to_time_again(quant_plugin, tiny_lm, monkeypatch):
    calls = []
    real = preset.time_kernels

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(preset, "time_kernels", counted)
    first = quantize(copy.deepcopy(tiny_lm[0]), "int8:repeats=2").details["kernels"]
    timed = len(calls)
    assert timed == len(first)
    second = quantize(copy.deepcopy(tiny_lm[0]), "int8:repeats=2").details["kernels"]
    assert len(calls) == timed, "the stored choice was timed again"
    assert second == first
    quantize(copy.deepcopy(tiny_lm[0]), "int8:repeats=2,remeasure=true")
    assert len(calls) == 2 * timed


@pytest.mark.parametrize("kernel", ["w8a8", "int8-weight-fp32"])
def test_a_named_kernel_is_used_everywhere_without_timing(quant_plugin, fresh_lm, monkeypatch, kernel):
    monkeypatch.setattr(preset, "time_kernels", lambda *a, **k: pytest.fail("a named kernel was timed"))
    result = quantize(fresh_lm[0], f"int8:kernel={kernel}")
    linears = [result.model.get_submodule(n) for n in result.modules if "embed" not in n]
    assert linears
    for module in linears:
        assert_on(module, kernel)


def test_int4_puts_what_int4_cannot_take_on_int8(quant_plugin, fresh_lm):
    # The tiny model's head (259 outputs, tied to the input embedding) cannot go to int4 either way.
    result = quantize(fresh_lm[0], "int4:repeats=2,group_size=32")
    kernels = result.details["kernels"]
    head = result.model.get_output_embeddings()
    assert kernels[shape_of(head, True)]["kernel"] in preset.INT8_KERNELS
    assert type(result.model.get_input_embeddings()).__name__ == "Int8Embedding", "the tied pair came apart"
    for name in result.modules:
        module = result.model.get_submodule(name)
        if name.startswith("model.layers"):
            expected = Int4WeightLinear if module.out_features % 16 == 0 else (Int8WeightLinear, Int8DynamicLinear)
            assert isinstance(module, expected), name
    assert any(isinstance(result.model.get_submodule(n), Int4WeightLinear) for n in result.modules)


def test_the_head_stays_float_when_asked(quant_plugin, fresh_lm):
    result = quantize(fresh_lm[0], "int8:repeats=2,keep_lm_head=true")
    assert type(result.model.get_output_embeddings()).__name__ == "Linear"


def test_a_chosen_mix_saves_and_loads_without_timing(quant_plugin, fresh_lm, sample_ids, tmp_path, monkeypatch):
    import torch

    model, tokenizer = fresh_lm
    result = quantize(model, "int4:repeats=2,group_size=32")
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    monkeypatch.setattr(preset, "time_kernels", lambda *a, **k: pytest.fail("loading timed kernels"))
    reloaded = load_quantized(folder)
    with torch.inference_mode():
        assert torch.equal(result.model(sample_ids).logits, reloaded(sample_ids).logits)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("int8:kernel=int4-bf16", "int8 kernel must be one of auto, int8-weight-bf16"),
        ("int4:kernel=fast", "int4 kernel must be one of auto, int4-bf16, int4-fp32"),
        ("int8:rows=0", "rows must be 1..8192"),
        ("int8:fake=true", "for the fake-quant path use rtn:fake=true"),
        ("int4:group_size=48", "group_size must be one of"),
    ],
)
def test_bad_preset_options_say_what_to_give(quant_plugin, spec, message):
    from crossedge.quant import parse_spec

    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)
