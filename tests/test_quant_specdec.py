"""Integration: a quantized model composes with speculative decoding, as target and as drafter."""

import copy

import pytest

from crossedge.quant import load_quantized, quantize_, save_quantized
from crossedge.specdec.drafters import CopyDrafter, DraftModelDrafter
from crossedge.specdec.engine import SpeculativeDecoder
from crossedge.specdec.testing import CONFORMANCE_PROMPTS, greedy_reference, tiny_target

MAX_NEW = 24


def prompt_ids(tokenizer, index=1):
    return tokenizer(CONFORMANCE_PROMPTS[index], return_tensors="pt").input_ids


def test_int8_target_stays_lossless_under_copy_drafting():
    model, tokenizer = tiny_target("llama")
    quantize_(model, "rtn:bits=8")
    ids = prompt_ids(tokenizer)
    reference = greedy_reference(model, ids, MAX_NEW)
    result = SpeculativeDecoder(model, [CopyDrafter()], "constant:k=4").generate(ids, MAX_NEW)
    assert result.tokens == reference
    assert result.stats.drafters["copy"].drafted > 0


def test_int4_draft_model_for_a_float_target():
    target, tokenizer = tiny_target("llama")
    draft = copy.deepcopy(target)
    quantize_(draft, "rtn:bits=4,group_size=32")
    ids = prompt_ids(tokenizer, 0)
    reference = greedy_reference(target, ids, MAX_NEW)
    drafter = DraftModelDrafter(model=draft)
    result = SpeculativeDecoder(target, [drafter], "constant:k=3").generate(ids, MAX_NEW)
    assert result.tokens == reference
    stats = result.stats.drafters["draft-model"]
    assert 0 < stats.accepted <= stats.drafted


def test_saved_and_reloaded_quantized_target(tmp_path):
    model, tokenizer = tiny_target("llama")
    quantize_(model, "rtn:bits=8")
    save_quantized(model, tmp_path / "q", tokenizer=tokenizer)
    reloaded = load_quantized(tmp_path / "q")
    ids = prompt_ids(tokenizer)
    expected = greedy_reference(model, ids, MAX_NEW)
    result = SpeculativeDecoder(reloaded, [CopyDrafter()], "heuristic").generate(ids, MAX_NEW)
    assert result.tokens == expected


@pytest.mark.model
def test_int4_smollm2_drafts_for_fp32_smollm2():
    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt

    loaded = load_model("smollm2-135m")
    target = loaded.model
    draft = copy.deepcopy(target)
    quantize_(draft, "rtn:bits=4,group_size=128")
    ids = encode_prompt(loaded.tokenizer, "Write a Python function that returns the square of a number.")
    reference = greedy_reference(target, ids, MAX_NEW)
    drafter = DraftModelDrafter(model=draft)
    result = SpeculativeDecoder(target, [CopyDrafter(), drafter], "constant:k=4").generate(ids, MAX_NEW)
    assert result.tokens == reference
    assert result.stats.drafters["draft-model"].accepted > 0


@pytest.mark.model
@pytest.mark.parametrize("spec", ["rtn:bits=8,keep_lm_head=false", "rtn:bits=4,group_size=64"])
def test_quantized_smollm2_under_copy_drafting_is_its_own_greedy(spec):
    """The failure that made int8 speculation lossy: a block's logits moved by up to 0.4 against
    one-token steps, so near-ties flipped. With row-invariant attention the tokens are identical."""
    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt

    loaded = load_model("smollm2-135m")
    model = quantize_(loaded.model, spec)
    prompts = [
        "What is the capital of France? Answer in one sentence and then explain why it became the capital.",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
        "Rewrite fibonacci above with a loop instead of recursion.",
    ]
    for prompt in prompts:
        ids = encode_prompt(loaded.tokenizer, prompt)
        plain = SpeculativeDecoder(model).generate(ids, 40).tokens
        result = SpeculativeDecoder(model, [CopyDrafter()], "constant:k=5").generate(ids, 40)
        assert result.tokens == plain, prompt
    assert result.stats.target_forwards < len(plain)
