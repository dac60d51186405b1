"""Speculative decoding on the real smollm2-135m through crossedge-ondevice's torch-onednn backend."""

import copy

import pytest


@pytest.mark.model
def test_onednn_target_decodes_like_the_eager_model():
    import torch

    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt
    from crossedge.ondevice.backends import PackedLinear, TorchOneDNNBackend
    from crossedge.specdec import CopyDrafter, HistoryDrafter, SpeculativeDecoder

    loaded = load_model("smollm2-135m")
    backend = TorchOneDNNBackend()
    backend.require(purpose="specdec test", dynamic_shapes=True, kv_cache_decoding=True)
    packed = backend.prepare_causal_lm(copy.deepcopy(loaded.model))
    assert any(isinstance(m, PackedLinear) for m in packed.modules())
    for prompt in ["Explain what a Python list comprehension is.", "def fib(n):\n    # the n-th Fibonacci number\n"]:
        input_ids = encode_prompt(loaded.tokenizer, prompt)
        with torch.inference_mode():
            reference = loaded.model.generate(input_ids, do_sample=False, max_new_tokens=40)[0, input_ids.shape[1] :]
        result = SpeculativeDecoder(packed, [CopyDrafter(), HistoryDrafter()]).generate(input_ids, 40)
        assert result.tokens == reference.tolist()[: len(result.tokens)]
        assert len(result.tokens) == len(reference) or result.stats.stop_reason == "eos"


def test_model_drafters_take_a_repacked_target():
    """A backend repacks the head (no ``weight``) and a quantized draft's head holds integers: the
    vocabulary check and the mirror drafter read their output sizes, and decoding stays exact."""
    from crossedge.ondevice.backends import PackedLinear, TorchOneDNNBackend
    from crossedge.quant import quantize_
    from crossedge.specdec import ConstantPolicy, SpeculativeDecoder
    from crossedge.specdec.drafters import DraftModelDrafter
    from crossedge.specdec.mirror import MirrorDrafter
    from crossedge.specdec.testing import CONFORMANCE_PROMPTS, greedy_reference, tiny_target

    model, tokenizer = tiny_target("llama")
    packed = TorchOneDNNBackend().prepare_causal_lm(copy.deepcopy(model))
    assert isinstance(packed.get_output_embeddings(), PackedLinear)
    draft = quantize_(copy.deepcopy(model), "int8:kernel=w8a8")
    ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
    expected = greedy_reference(packed, ids, 16)
    for drafter in (DraftModelDrafter(draft), MirrorDrafter(copy.deepcopy(draft))):
        result = SpeculativeDecoder(packed, [drafter], ConstantPolicy(k=3)).generate(ids, 16)
        assert result.tokens == expected
        assert result.stats.drafters[drafter.name].accepted > 0


def test_lora_drop_identifies_a_repacked_target_like_its_float_model():
    from crossedge.ondevice.backends import TorchOneDNNBackend
    from crossedge.specdec.lora_drop.training import decoder_identity
    from crossedge.specdec.testing import tiny_target

    model, _ = tiny_target("llama")
    packed = TorchOneDNNBackend().prepare_causal_lm(copy.deepcopy(model))
    assert decoder_identity(packed) == decoder_identity(model)
