"""Labels-with-distillation loss against hand values, and score fusion with its weight chosen on dev data."""

import math

import pytest
import torch

from crossedge.core.contracts.loss import LossError
from crossedge.retrieval import fusion as F
from crossedge.retrieval.losses import LabelsWithDistillation


def _log_softmax(row):
    top = max(row)
    total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - total for v in row]


def test_infonce_kl_is_the_label_term_plus_alpha_times_the_teacher_term_by_hand():
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    ls, lt = _log_softmax([2.0, 1.0, 0.0]), _log_softmax([0.0, 1.0, 0.5])
    nce = -ls[0]
    kl = sum(math.exp(t) * (t - s) for s, t in zip(ls, lt, strict=True))
    got = LabelsWithDistillation(alpha=0.5)(scores, teacher=teacher, labels=labels)
    assert float(got) == pytest.approx(nce + 0.5 * kl, rel=1e-6)
    assert float(LabelsWithDistillation(alpha=0.0)(scores, teacher=teacher, labels=labels)) == pytest.approx(nce)
    # A padded candidate changes nothing.
    padded = LabelsWithDistillation(alpha=0.5)(
        torch.tensor([[2.0, 1.0, 0.0, 9.0]]),
        teacher=torch.tensor([[0.0, 1.0, 0.5, 9.0]]),
        labels=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        mask=torch.tensor([[True, True, True, False]]),
    )
    assert float(padded) == pytest.approx(nce + 0.5 * kl, rel=1e-6)


def test_infonce_kl_without_labels_aims_at_the_teachers_top_and_refuses_a_negative_alpha():
    scores, teacher = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.5]])
    as_labels = torch.tensor([[0.0, 1.0, 0.0]])
    loss = LabelsWithDistillation(alpha=0.3)
    assert float(loss(scores, teacher=teacher)) == pytest.approx(float(loss(scores, teacher, as_labels)))
    with pytest.raises(LossError, match="alpha"):
        LabelsWithDistillation(alpha=-1)


def test_standardise():
    assert F.standardise([1.0, 3.0]) == [-1.0, 1.0]
    assert F.standardise([2.0, 2.0]) == [0.0, 0.0] and F.standardise([]) == []


FIRST = {"q": [("a", 0.9), ("b", 0.8), ("c", 0.1), ("d", 0.05)]}
RERANKED = {"q": [("c", 5.0), ("b", 4.0), ("a", 1.0), ("d", float("-inf"))]}


def test_fusion_interpolates_between_first_stage_and_reranker():
    assert [d for d, _ in F.fuse(FIRST, RERANKED, 3, 1.0)["q"]] == ["c", "b", "a", "d"]
    assert [d for d, _ in F.fuse(FIRST, RERANKED, 3, 0.0)["q"]] == ["a", "b", "c", "d"]
    # z(first) = (1.01, 0.86, -1.38)-ish, z(rerank) = (-1.34, 0.27, 1.07): at 0.5 b leads.
    assert [d for d, _ in F.fuse(FIRST, RERANKED, 3, 0.5)["q"]][:1] == ["b"]
    with pytest.raises(ValueError, match="did not score"):
        F.fuse(FIRST, {"q": [("a", 1.0)]}, 3, 0.5)
    with pytest.raises(ValueError, match="weight"):
        F.fuse(FIRST, RERANKED, 3, 1.5)


def test_the_weight_follows_the_dev_judgements_only():
    # Judged "a": the first stage is right, so the weight goes low; judged "c": the reranker is.
    low, table = F.choose_weight(FIRST, RERANKED, {"q": {"a": 1}}, 3)
    high, _ = F.choose_weight(FIRST, RERANKED, {"q": {"c": 1}}, 3)
    assert low < 0.5 < high == 1.0
    assert set(table) == set(F.GRID) and table[low] == max(table.values())


def test_the_verdict_reads_the_whole_interval():
    from crossedge.retrieval.pipeline import verdict

    assert verdict(-3.0, -0.1) == "hurts"
    assert verdict(0.2, 2.0) == "helps"
    assert verdict(-0.5, 2.6) == verdict(-2.0, 0.0) == "no clear difference"
