"""Short checks on the packaged minilm-l6 model (fetched once, then cached)."""

import pytest
import torch

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def bi():
    from crossedge.retrieval.scorers import BiEncoder

    return BiEncoder.from_pretrained("minilm-l6")


def test_minilm_reads_mean_pooling_and_ranks_paraphrases(bi):
    assert bi.pooling == "mean" and bi.normalize
    docs = ["How do I read a text file in Python?", "The weather is sunny today.", "Sort a list of numbers."]
    scores = bi.score("open and read a file", docs)
    assert scores.argmax().item() == 0
    assert torch.allclose(bi.encode(docs).norm(dim=1), torch.ones(3), atol=1e-4)


def test_uni_encoder_on_minilm_matches_one_by_one(bi):
    from crossedge.retrieval.scorers import UniEncoder

    uni = UniEncoder.from_encoder(bi.encoder, bi.tokenizer, seed=0)
    docs = ["def read(path): return open(path).read()", "def add(a, b): return a + b", "x = 1"]
    together = uni.score("read a file", docs)
    alone = torch.cat([uni.score("read a file", [d]) for d in docs])
    assert torch.allclose(together, alone, atol=1e-4)
