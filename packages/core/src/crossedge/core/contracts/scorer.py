"""The scorer contract: ``score(query, documents)`` gives one relevance number per document.

A scorer is registered as a class (``register_scorers``); ``name`` and ``description``
are class attributes and its options are ``__init__`` keyword arguments. Higher scores
mean more relevant. Scores are compared within one call only: a scorer may normalise
over the documents it is given (BM25 computes its statistics over them), so the only
promise across calls is that the same inputs give the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class Scorer:
    """Base of relevance scorers: a name, a description and ``score(query, documents)``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def score(self, query: str, documents: Sequence[str]) -> Any:
        """One score per document (a 1-D tensor or array of ``len(documents)``), higher is more relevant."""
        raise NotImplementedError

    def rank(self, query: str, documents: Sequence[str], k: int | None = None) -> list[tuple[int, float]]:
        """``(position, score)`` of the top ``k`` documents (all when ``None``), best first; ties keep input order."""
        scores = scores_as_floats(self.score(query, documents))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in order[:k]]


def scores_as_floats(scores: Any) -> list[float]:
    """A scorer's output (tensor, array or sequence) as a flat list of Python floats."""
    values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
    if values and isinstance(values[0], list):
        raise ValueError(f"a scorer returns one score per document (1-D), not a nested list of {len(values)} rows")
    return [float(v) for v in values]
