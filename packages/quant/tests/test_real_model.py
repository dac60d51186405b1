"""One short check on the real SmolLM2-135M (fp32 = weights dequantized from its Q4_1 GGUF)."""

import pytest

pytestmark = pytest.mark.model


def test_rtn_int8_perplexity_close_to_fp32(quant_plugin):
    from crossedge.core import load_model
    from crossedge.quant import quantize_
    from crossedge.quant.evaluation import load_corpus, perplexity

    loaded = load_model("smollm2-135m")
    ids = loaded.tokenizer(load_corpus().evaluation[:8000], return_tensors="pt").input_ids[0]
    base = perplexity(loaded.model, ids, window=128, max_tokens=256)
    quantize_(loaded.model, "rtn")
    quant = perplexity(loaded.model, ids, window=128, max_tokens=256)
    assert base.windows == quant.windows == 2
    assert abs(quant.ppl / base.ppl - 1) < 0.03
