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
