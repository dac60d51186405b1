"""The perplexity protocol, the corpus split and the --methods parser."""

import math
from types import SimpleNamespace

import pytest
import torch

from crossedge.core.errors import CrossedgeError
from crossedge.quant.commands import split_methods
from crossedge.quant.evaluation import load_corpus, perplexity


class UniformLM(torch.nn.Module):
    """Equal logits over ``vocab`` tokens: perplexity is exactly ``vocab``; records window lengths."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.lengths = []

    def forward(self, ids):
        self.lengths.append(ids.shape[1])
        return SimpleNamespace(logits=torch.zeros(1, ids.shape[1], self.vocab))


def test_perplexity_windows_and_remainder():
    model = UniformLM(50)
    result = perplexity(model, torch.arange(100) % 50, window=30)
    assert model.lengths == [30, 30, 30]  # 10 leftover tokens dropped, no overlap
    assert result.windows == 3 and result.scored_tokens == 3 * 29
    assert result.ppl == pytest.approx(50.0)
    assert result.nll == pytest.approx(math.log(50))
    assert perplexity(UniformLM(50), torch.arange(100) % 50, window=30, max_tokens=60).windows == 2
    with pytest.raises(CrossedgeError, match="fewer than one window"):
        perplexity(model, torch.arange(10), window=30)


def test_default_corpus_parts_are_disjoint():
    split = load_corpus()
    assert split.source == "pydoc-topics"
    assert split.calibration_documents > 0 and split.evaluation_documents > split.calibration_documents
    assert split.calibration[:200] not in split.evaluation


def test_user_corpus(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("\n\n".join(f"paragraph number {i} with its own words" for i in range(30)))
    split = load_corpus(path)
    assert split.calibration_documents + split.evaluation_documents == 30
    calib = set(split.calibration.split("\n\n"))
    assert calib.isdisjoint(split.evaluation.split("\n\n"))
    with pytest.raises(CrossedgeError, match="cannot read corpus"):
        load_corpus(tmp_path / "missing.txt")


def test_split_methods_keeps_parameters_with_their_method():
    assert split_methods("fp32,rtn,rtn:bits=4,group_size=64,gptq:act_order=true,w8a8") == [
        "fp32",
        "rtn",
        "rtn:bits=4,group_size=64",
        "gptq:act_order=true",
        "w8a8",
    ]
    assert split_methods("rtn;smoothquant:alpha=0.8") == ["rtn", "smoothquant:alpha=0.8"]
    with pytest.raises(CrossedgeError, match="empty"):
        split_methods(" , ")
