"""Conformance suite for scorers: subclass :class:`ScorerConformance` and give a ``scorer`` fixture.

::

    class TestMyScorer(ScorerConformance):
        @pytest.fixture
        def scorer(self):
            return MyScorer()

Override ``query`` and ``documents`` when the scorer needs other texts (they must be
distinct and get distinct scores for the order checks to mean anything).
"""

from __future__ import annotations

import math

import pytest

from crossedge.core.contracts.scorer import Scorer, scores_as_floats


class ScorerConformance:
    """Checks every scorer passes: shape, finiteness, determinism and order equivariance."""

    query: str = "read a config file"
    documents: tuple[str, ...] = (
        "def read_config(path): return open(path).read()",
        "sort a list of numbers in place",
        "open a network socket and send bytes",
        "parse the config file into a dict",
        "zip two lists together",
    )
    #: Absolute tolerance when comparing scores of the same document across calls.
    atol: float = 1e-5

    @pytest.fixture
    def scorer(self) -> Scorer:
        """The scorer under test; a subclass must override this fixture."""
        raise NotImplementedError("a ScorerConformance subclass defines a `scorer` fixture")

    def scores(self, scorer: Scorer, documents) -> list[float]:
        """The scorer's output for ``self.query`` as floats."""
        return scores_as_floats(scorer.score(self.query, list(documents)))

    def test_is_a_scorer_with_a_name(self, scorer):
        assert isinstance(scorer, Scorer), f"{type(scorer).__name__} does not subclass crossedge's Scorer contract"
        assert isinstance(type(scorer).name, str) and type(scorer).name, "set `name` as a class attribute"
        assert isinstance(type(scorer).description, str) and type(scorer).description, "set `description`"

    def test_one_finite_score_per_document(self, scorer):
        out = scorer.score(self.query, list(self.documents))
        shape = getattr(out, "shape", None)
        if shape is not None:
            assert tuple(shape) == (len(self.documents),), f"scores have shape {tuple(shape)}, not (N,)"
        values = scores_as_floats(out)
        assert len(values) == len(self.documents)
        assert all(math.isfinite(v) for v in values), f"non-finite scores {values}"

    def test_no_documents_give_no_scores(self, scorer):
        assert self.scores(scorer, []) == []

    def test_same_inputs_give_the_same_scores(self, scorer):
        first, again = self.scores(scorer, self.documents), self.scores(scorer, self.documents)
        assert first == pytest.approx(again, abs=self.atol)

    def test_scores_follow_their_documents_when_reordered(self, scorer):
        forward = self.scores(scorer, self.documents)
        n = len(self.documents)
        order = [*range(1, n, 2), *range(0, n, 2)]  # odd positions first: no document stays in place
        shuffled = self.scores(scorer, [self.documents[i] for i in order])
        assert shuffled == pytest.approx([forward[i] for i in order], abs=self.atol)

    def test_ranking_does_not_depend_on_input_order(self, scorer):
        values = self.scores(scorer, self.documents)
        if len({round(v / self.atol) for v in values}) < len(values):
            pytest.skip(f"{type(scorer).name} ties some of the sample documents; give distinct `documents`")
        forward = [self.documents[i] for i, _ in scorer.rank(self.query, list(self.documents))]
        backward = list(reversed(self.documents))
        assert [backward[i] for i, _ in scorer.rank(self.query, backward)] == forward

    def test_a_repeated_document_gets_one_score(self, scorer):
        doc = self.documents[0]
        a, b = self.scores(scorer, [doc, self.documents[1], doc])[::2]
        assert a == pytest.approx(b, abs=self.atol)

    def test_rank_returns_the_top_k_best_first(self, scorer):
        top = scorer.rank(self.query, list(self.documents), k=2)
        assert len(top) == 2
        assert top[0][1] >= top[1][1]
        assert top[0][1] == pytest.approx(max(self.scores(scorer, self.documents)), abs=self.atol)
