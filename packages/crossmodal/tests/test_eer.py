"""Our EER against hand-worked cases and against torchmetrics' BinaryEER (the ``test`` extra)."""

import math

import numpy as np
import pytest
import torch

from crossedge.crossmodal.eer import EERError, eer, equal_error_rate, roc_points


def reference(scores, labels) -> float:
    """torchmetrics' EER (the ``test`` extra); a test that compares against it skips without it."""
    pytest.importorskip("torchmetrics", minversion="1.4")
    from torchmetrics.classification import BinaryEER

    return float(BinaryEER()(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels)))


def test_rates_meeting_at_an_roc_point_agree_exactly_with_torchmetrics():
    scores = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    # descending: p p n | p n n: after 0.7 both rates are 1/3
    assert eer(scores, labels) == pytest.approx(1 / 3)
    assert reference(scores, labels) == pytest.approx(1 / 3)
    assert equal_error_rate(scores, labels).threshold == pytest.approx(0.7)


def test_the_crossing_between_points_is_interpolated_where_torchmetrics_takes_the_nearest_point():
    # torchmetrics' docstring example: it reports (FPR + FNR) / 2 = (1/2 + 2/3) / 2 at the nearest point;
    # the rates cross at 1/2 on the step between thresholds 0.26 and 0.19
    scores = [0.13, 0.26, 0.08, 0.19, 0.34]
    labels = [0, 0, 1, 1, 1]
    assert reference(scores, labels) == pytest.approx(0.5833, abs=1e-4)
    assert eer(scores, labels) == pytest.approx(0.5)
    assert equal_error_rate(scores, labels).threshold == pytest.approx((0.26 + 0.19) / 2)


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 0.0),  # perfectly separated
        ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 1.0),  # perfectly inverted
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),  # one tie: the diagonal
        ([3.0, 1.0, 2.0, 0.0], [1, 1, 0, 0], 0.5),  # p n p n
    ],
)
def test_hand_built_cases(scores, labels, expected):
    assert eer(scores, labels) == pytest.approx(expected)
    assert reference(scores, labels) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(12))
def test_random_scores_agree_with_torchmetrics_within_one_roc_step(seed):
    rng = np.random.default_rng(seed)
    positives, negatives = rng.integers(20, 400, size=2)
    separation = rng.uniform(0.0, 3.0)
    scores = np.r_[rng.normal(separation, 1.0, positives), rng.normal(0.0, 1.0, negatives)]
    labels = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    order = rng.permutation(scores.size)
    scores, labels = scores[order], labels[order]
    ours = eer(scores, labels)
    step = max(1 / positives, 1 / negatives)
    assert abs(ours - reference(scores, labels)) <= step + 1e-6
    # at the EER threshold the two error rates are (nearly) equal, within one sample of each class
    result = equal_error_rate(scores, labels)
    accepted = scores >= result.threshold
    fpr = accepted[labels == 0].mean()
    fnr = (~accepted[labels == 1]).mean()
    assert abs(fpr - result.eer) <= step + 1e-9 and abs(fnr - result.eer) <= step + 1e-9


def test_large_samples_converge_to_torchmetrics_and_to_the_gaussian_value():
    rng = np.random.default_rng(0)
    n = 20000
    scores = np.r_[rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, n)]
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    ours = eer(scores, labels)
    assert abs(ours - reference(scores, labels)) < 1e-3
    gaussian_tail = 0.5 * (1.0 + math.erf(-1.0 / math.sqrt(2.0)))  # two unit Gaussians 2 apart cross at 1
    assert ours == pytest.approx(gaussian_tail, abs=0.01)


def test_invariances():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=200)
    labels = (scores + rng.normal(size=200) > 0).astype(int)
    base = eer(scores, labels)
    assert eer(np.exp(scores), labels) == pytest.approx(base)  # any increasing map
    assert eer(-scores, 1 - labels) == pytest.approx(base)  # swapping which class is positive
    assert eer(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(base)
    roc = roc_points(scores, labels)
    assert np.all(np.diff(roc.false_positive_rate) >= 0) and np.all(np.diff(roc.false_negative_rate) <= 0)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([0.1, float("nan")], [0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 1], "one label per score"),
    ],
)
def test_refusals_are_one_line(scores, labels, match):
    with pytest.raises(EERError, match=match) as info:
        eer(scores, labels)
    assert "\n" not in str(info.value)
