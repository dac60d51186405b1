"""Greedy identity on the real packaged smollm2-135m (pulled into the cache on first use)."""

import pytest

from crossedge.specdec import CopyDrafter, SpeculativeDecoder
from crossedge.specdec.testing import greedy_reference

PROMPT = (
    "Rename the function `area` to `rectangle_area`. Reply with the complete code.\n\n"
    "```python\ndef area(width, height):\n    result = width * height\n    return result\n```"
)


@pytest.mark.model
@pytest.mark.parametrize("policy", ["constant:k=6", "cost-aware"])
def test_copy_drafting_is_greedy_identical_on_smollm2(policy):
    from crossedge.core import load_model
    from crossedge.core.sources import encode_prompt

    loaded = load_model("smollm2-135m")
    input_ids = encode_prompt(loaded.tokenizer, PROMPT)
    reference = greedy_reference(loaded.model, input_ids, 32)
    result = SpeculativeDecoder(loaded.model, CopyDrafter(), policy).generate(input_ids, 32)
    assert result.tokens == reference
    assert result.stats.drafters["copy"].accepted > 0
