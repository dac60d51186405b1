"""Decoding metrics on hand-built cases whose answers are known."""

import numpy as np
import pytest

from crossedge.crossmodal.metrics import accuracy, mean_std, n_way_top_k, two_way_identification


def test_perfect_predictions_score_one_everywhere():
    c = np.eye(6)
    assert n_way_top_k(c, c, n_way=6, k=(1, 5)) == {1: 1.0, 5: 1.0}
    assert two_way_identification(c, c) == 1.0


def test_top_k_counts_the_true_candidate_rank():
    # prediction i points at candidate (i + 1) % 4, and second closest at candidate i: rank 1 everywhere
    c = np.eye(4)
    p = np.array([[0.5, 1, 0, 0], [0, 0.5, 1, 0], [0, 0, 0.5, 1], [1, 0, 0, 0.5]])
    assert n_way_top_k(p, c, n_way=4, k=(1, 2)) == {1: 0.0, 2: 1.0}
    # 2-way: each prediction beats 2 of its 3 distractors
    assert two_way_identification(p, c) == pytest.approx(2 / 3)


def test_cosine_ignores_scale_and_n_way_subsamples_with_a_seed():
    c = np.eye(10)
    p = 7.0 * np.roll(c, 1, axis=1)  # every prediction points at the wrong candidate
    # with 2-way, the true candidate wins unless the drawn distractor is the pointed-at one: seeded and repeatable
    a = n_way_top_k(p, c, n_way=2, k=(1,), seed=3)
    assert a == n_way_top_k(p, c, n_way=2, k=(1,), seed=3)
    assert n_way_top_k(p, c, n_way=10, k=(1,))[1] == 0.0
    with pytest.raises(ValueError, match="n_way"):
        n_way_top_k(p, c, n_way=11)
    with pytest.raises(ValueError, match="both be"):
        n_way_top_k(p[:3], c)


def test_random_embeddings_score_near_chance():
    rng = np.random.default_rng(0)
    p, c = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    assert abs(n_way_top_k(p, c, n_way=10, k=(1,))[1] - 0.1) < 0.05
    assert abs(two_way_identification(p, c) - 0.5) < 0.03


def test_accuracy_from_scores_or_labels_and_mean_std():
    assert accuracy(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert accuracy(np.array([2, 1]), np.array([2, 2])) == 0.5
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1))
    with pytest.raises(ValueError):
        mean_std([])
