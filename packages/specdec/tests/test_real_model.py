"""Greedy identity on the real packaged smollm2-135m (pulled into the cache on first use)."""

import pytest

from crossedge.specdec import CopyDrafter, SpeculativeDecoder
from crossedge.specdec.testing import greedy_reference

PROMPT = (
    "Rename the function `area` to `rectangle_area`. Reply with the complete code.\n\n"
    "```python\ndef area(width, height):\n    result = width * height\n    return result\n```"
)


@pytest.fixture(scope="module")
def smollm2_reference():
    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt

    loaded = load_model("smollm2-135m")
    input_ids = encode_prompt(loaded.tokenizer, PROMPT)
    return loaded.model, input_ids, greedy_reference(loaded.model, input_ids, 32)


@pytest.mark.model
@pytest.mark.parametrize("policy", ["constant:k=6", "cost-aware"])
def test_copy_drafting_is_greedy_identical_on_smollm2(smollm2_reference, policy):
    model, input_ids, reference = smollm2_reference
    result = SpeculativeDecoder(model, CopyDrafter(), policy).generate(input_ids, 32)
    assert result.tokens == reference
    copy = result.stats.drafters["copy"]
    if policy.startswith("constant"):
        assert copy.accepted > 0
    else:
        # Cost-aware decides from timings, so on a loaded machine it may draft only to probe,
        # and probes may find nothing; they still put drafts through verification.
        assert copy.drafted > 0


@pytest.fixture(scope="module")
def gemma3():
    from crossedge.core import load_model

    return load_model("gemma3-270m")


@pytest.mark.model
def test_copy_drafting_past_gemma3_sliding_window_is_greedy_identical(gemma3):
    """gemma3-270m has 512-token sliding-window layers: rollback must work beyond the window."""
    from crossedge.specdec.suite import license_excerpt

    text = license_excerpt("Apache-2.0", 2, 3200)
    input_ids = gemma3.tokenizer(text + "\n\n" + text[:600], return_tensors="pt").input_ids
    assert input_ids.shape[1] > 600
    reference = greedy_reference(gemma3.model, input_ids, 12)
    result = SpeculativeDecoder(gemma3.model, CopyDrafter(), "constant:k=8").generate(input_ids, 12)
    assert result.tokens == reference
    assert result.stats.drafters["copy"].accepted > 0


@pytest.mark.model
def test_smollm2_drafts_for_gemma3_across_vocabularies(gemma3):
    from crossedge.core import load_model
    from crossedge.specdec.drafters import CrossVocabDrafter
    from crossedge.specdec.suite import function_source

    draft = load_model("smollm2-135m")
    code = function_source("textwrap.py", "indent")
    prompt = f"Here is a Python function:\n\n{code}\n\nThe same function with a docstring:\n\n"
    input_ids = gemma3.tokenizer(prompt, return_tensors="pt").input_ids
    reference = greedy_reference(gemma3.model, input_ids, 16)
    drafter = CrossVocabDrafter(draft.model, draft_tokenizer=draft.tokenizer)
    decoder = SpeculativeDecoder(gemma3.model, drafter, "constant:k=6", tokenizer=gemma3.tokenizer)
    result = decoder.generate(input_ids, 16)
    assert result.tokens == reference
    assert result.stats.mean_accepted > 1.5
    assert drafter.bridge.translated > 0  # drafts went through the learned n-gram cache


@pytest.mark.model
def test_copy_history_chain_is_greedy_identical_on_smollm2(smollm2_reference):
    from crossedge.specdec import HistoryDrafter

    model, input_ids, reference = smollm2_reference
    decoder = SpeculativeDecoder(model, [CopyDrafter(), HistoryDrafter()])
    first = decoder.generate(input_ids, 32)
    second = decoder.generate(input_ids, 32)  # now with the first run as history
    assert first.tokens == reference and second.tokens == reference
    assert second.stats.drafters["history"].accepted + second.stats.drafters["copy"].accepted > 0


@pytest.mark.model
def test_early_exit_drafting_is_greedy_identical_on_smollm2(smollm2_reference):
    from crossedge.specdec.early_exit import EarlyExitDrafter
    from crossedge.specdec.exit_head import ExitHead

    model, input_ids, reference = smollm2_reference
    # A head that is a copy of the last layer, exiting before it, reproduces the full model: every
    # draft must be accepted, which checks the shared cache on the real 30-layer model.
    head = ExitHead(model, model.config.num_hidden_layers - 1).eval()
    result = SpeculativeDecoder(model, [EarlyExitDrafter(head=head)], "constant:k=3").generate(input_ids, 32)
    assert result.tokens == reference
    stats = result.stats.drafters["early-exit"]
    assert stats.accepted == stats.drafted > 0


@pytest.mark.model
@pytest.mark.parametrize("tree", ["sparse", "chain"])
def test_medusa_drafting_is_greedy_identical_on_smollm2(smollm2_reference, tmp_path, tree):
    from crossedge.specdec.heads.base import save_heads
    from crossedge.specdec.heads.drafter import MedusaDrafter
    from crossedge.specdec.heads.medusa import MedusaHeads

    model, input_ids, reference = smollm2_reference
    # Untrained heads guess what the LM head guesses from h[n-2]: drafts that are sometimes right.
    folder = save_heads(MedusaHeads(model, 3), tmp_path / "heads", model_name="smollm2-135m")
    drafter = MedusaDrafter(heads=str(folder), tree=tree)
    result = SpeculativeDecoder(model, drafter, "constant:k=8").generate(input_ids, 32)
    assert result.tokens == reference
    assert result.stats.drafters["medusa"].drafted > 0
