"""The scorer and loss contracts: toy implementations pass their suites, broken ones fail the right check."""

from __future__ import annotations

import pytest
import torch

from crossedge.core import get_registry, hookimpl, registered
from crossedge.core.conformance.loss import LossConformance, toy_batch
from crossedge.core.conformance.scorer import ScorerConformance
from crossedge.core.contracts.loss import Loss
from crossedge.core.contracts.scorer import Scorer


class WordOverlap(Scorer):
    """Shared words and letters over the document's length: a scorer with no model."""

    name = "word-overlap"
    description = "shared words and letters over document length"

    def score(self, query, documents):
        words, letters = set(query.split()), set(query)
        return torch.tensor([(len(words & set(d.split())) + len(letters & set(d))) / len(d) for d in documents])


class Softmax(Loss):
    """Listwise softmax cross-entropy toward the teacher's top candidate or the label."""

    name = "toy-softmax"
    description = "softmax cross-entropy toward the positive"
    needs_teacher = False

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        valid = self.candidate_mask(scores, mask)
        target = labels if labels is not None else self.teacher_scores(teacher)
        logits = scores.float().masked_fill(~valid, -1e4)
        return torch.nn.functional.cross_entropy(logits, target.masked_fill(~valid, float("-inf")).argmax(1))


class TestWordOverlap(ScorerConformance):
    @pytest.fixture
    def scorer(self):
        return WordOverlap()


class TestSoftmax(LossConformance):
    @pytest.fixture
    def loss(self):
        return Softmax()


class PositionBiased(WordOverlap):
    name = "position-biased"

    def score(self, query, documents):
        return super().score(query, documents) + torch.arange(len(documents)) * 0.01


class Undetached(Softmax):
    name = "undetached"
    needs_teacher = True

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        if teacher is None:
            raise AttributeError("no teacher")  # not a CrossedgeError: the suite must say so
        return ((scores - teacher) ** 2 * self.candidate_mask(scores, mask)).mean()


def test_a_scorer_that_looks_at_positions_fails_the_order_check():
    suite = ScorerConformance()
    with pytest.raises(AssertionError):
        suite.test_scores_follow_their_documents_when_reordered(PositionBiased())


def test_a_loss_that_differentiates_the_teacher_fails():
    suite = LossConformance()
    with pytest.raises(AssertionError, match="detach"):
        suite.test_no_gradient_reaches_the_teacher(Undetached())
    with pytest.raises(AttributeError):
        suite.test_missing_targets_are_a_clear_error(Undetached())


def test_a_loss_that_counts_padding_fails():
    class CountsPadding(Softmax):
        name = "counts-padding"

        def __call__(self, scores, teacher=None, labels=None, mask=None):
            return super().__call__(scores, teacher, labels, None)

    with pytest.raises(AssertionError):
        LossConformance().test_padded_candidates_do_not_count(CountsPadding())


def test_toy_batch_has_no_ties():
    scores, teacher, labels, mask = toy_batch()
    for row in (*scores, *teacher):
        assert len(set(row.tolist())) == len(row)
    assert labels.sum(1).tolist() == [1.0, 1.0, 1.0] and not mask.all()


def test_rank_orders_best_first_and_keeps_input_order_on_ties():
    class Fixed(Scorer):
        name = "fixed"

        def score(self, query, documents):
            return [1.0, 3.0, 1.0, 2.0][: len(documents)]

    assert Fixed().rank("q", ["a", "b", "c", "d"]) == [(1, 3.0), (3, 2.0), (0, 1.0), (2, 1.0)]
    assert Fixed().rank("q", ["a", "b", "c", "d"], k=1) == [(1, 3.0)]


def test_scorers_and_losses_have_their_own_registries():
    class Plugin:
        @hookimpl
        def register_scorers(self, register):
            register(WordOverlap)

        @hookimpl
        def register_losses(self, register):
            register(Softmax, aliases=("softmax",))

    with registered(Plugin(), name="toy-retrieval"):
        assert get_registry("scorer").get("word-overlap") is WordOverlap
        assert get_registry("loss").get("softmax") is Softmax
        assert "word-overlap" not in get_registry("loss")
