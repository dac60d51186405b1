import math

import pytest
import torch

from crossedge.core.conformance.loss import LossConformance
from crossedge.retrieval.losses import (
    LOSSES,
    InfoNCE,
    ListNetKL,
    LossError,
    MarginMSE,
    PartialRankingDistillation,
    PointwiseBCE,
)

S = torch.tensor([[2.0, 1.0, 0.0]])
T = torch.tensor([[3.0, 0.0, 1.0]])


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_pointwise_bce_against_labels_and_teacher():
    labels = torch.tensor([[1.0, 0.0, 0.0]])
    expected = -(math.log(sig(2)) + math.log(1 - sig(1)) + math.log(1 - sig(0))) / 3
    assert PointwiseBCE()(S, labels=labels).item() == pytest.approx(expected, rel=1e-5)
    p = [sig(3), sig(0), sig(1)]
    s = [2.0, 1.0, 0.0]
    expected = -sum(pi * math.log(sig(si)) + (1 - pi) * math.log(1 - sig(si)) for pi, si in zip(p, s, strict=True)) / 3
    assert PointwiseBCE()(S, teacher=T).item() == pytest.approx(expected, rel=1e-5)


def test_margin_mse():
    # teacher's positive is column 0: margins teacher (3, 2), student (1, 2)
    expected = ((1 - 3) ** 2 + (2 - 2) ** 2) / 2
    assert MarginMSE()(S, teacher=T).item() == pytest.approx(expected)


def test_infonce_uses_teacher_top_or_label():
    log_z = math.log(math.exp(2) + math.exp(1) + math.exp(0))
    assert InfoNCE()(S, teacher=T).item() == pytest.approx(log_z - 2, rel=1e-6)
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    assert InfoNCE()(S, labels=labels).item() == pytest.approx(log_z - 1, rel=1e-6)


def test_listnet_kl():
    def softmax(v):
        z = sum(math.exp(x) for x in v)
        return [math.exp(x) / z for x in v]

    p, q = softmax([3, 0, 1]), softmax([2, 1, 0])
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert ListNetKL()(S, teacher=T).item() == pytest.approx(expected, rel=1e-5)
    assert ListNetKL()(T, teacher=T).item() == pytest.approx(0.0, abs=1e-6)


def test_partial_ranking_keeps_only_top_order():
    # teacher order: 0, 2, 1. With top=1 only "0 above {2, 1}" counts.
    s0, s1, s2 = 2.0, 1.0, 0.0
    first = math.log(math.exp(s0) + math.exp(s2) + math.exp(s1)) - s0
    assert PartialRankingDistillation(top=1)(S, teacher=T).item() == pytest.approx(first, rel=1e-6)
    second = math.log(math.exp(s2) + math.exp(s1)) - s2
    assert PartialRankingDistillation(top=2)(S, teacher=T).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # swapping the two lowest teacher scores changes nothing when only the top is kept
    swapped = torch.tensor([[3.0, 1.0, 0.0]])
    assert PartialRankingDistillation(top=1)(S, teacher=swapped).item() == pytest.approx(first, rel=1e-6)


def test_masked_candidates_are_ignored():
    mask = torch.tensor([[True, True, False]])
    padded = torch.tensor([[2.0, 1.0, 50.0]])
    teacher = torch.tensor([[3.0, 0.0, 99.0]])
    for loss in (MarginMSE(), InfoNCE(), ListNetKL(), PartialRankingDistillation(), PointwiseBCE()):
        got = loss(padded, teacher=teacher, mask=mask).item()
        want = loss(S[:, :2], teacher=T[:, :2]).item()
        assert got == pytest.approx(want, rel=1e-5), loss.name


def test_distillation_loss_without_teacher_is_an_error():
    with pytest.raises(LossError, match="teacher"):
        MarginMSE()(S)


def test_losses_have_gradients():
    scores = S.clone().requires_grad_(True)
    for loss in (MarginMSE(), InfoNCE(), ListNetKL(), PartialRankingDistillation(), PointwiseBCE()):
        scores.grad = None
        loss(scores, teacher=T).backward()
        assert scores.grad.abs().sum() > 0, loss.name


@pytest.mark.parametrize("kind", LOSSES, ids=lambda k: k.name)
class TestLossConformance(LossConformance):
    @pytest.fixture
    def loss(self, kind):
        return kind()
