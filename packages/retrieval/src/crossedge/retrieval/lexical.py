"""BM25, the lexical baseline, through the bm25s library."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from crossedge.core.contracts.scorer import Scorer

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_TOKEN = re.compile(r"[A-Za-z]{2,}|\d+")


def code_aware_tokens(text: str) -> list[str]:
    """Lowercased word tokens with ``snake_case`` and ``camelCase`` identifiers split into words.

    Identifiers in code glue words together (``read_config``, ``getValue``); splitting
    them lets a natural-language query match code. The whole identifier is kept too.
    """
    tokens = []
    for word in re.findall(r"\w+", text):
        parts = [p.lower() for chunk in word.split("_") for p in _CAMEL.sub(" ", chunk).split() if p]
        parts = [p for p in parts if _TOKEN.fullmatch(p)]
        tokens.extend(parts)
        if len(parts) > 1:
            tokens.append(word.lower())
    return tokens


class BM25Scorer(Scorer):
    """Okapi BM25 from bm25s over code-aware tokens; ``index`` once, then ``search`` many."""

    name = "bm25"
    description = "lexical baseline: bm25s (Lucene BM25) over snake/camel-case aware tokens"

    def __init__(self, k1: float = 1.2, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self._retriever = None
        self.ids: list[str] = []

    def index(self, ids: Sequence[str], texts: Sequence[str]) -> BM25Scorer:
        """Index documents; returns self."""
        import bm25s

        self.ids = list(ids)
        # An empty token list would be dropped by bm25s and shift document numbers.
        tokens = [code_aware_tokens(t) or ["__empty__"] for t in texts]
        self._retriever = bm25s.BM25(k1=self.k1, b=self.b)
        self._retriever.index(tokens, show_progress=False)
        return self

    def search(self, queries: Sequence[str], k: int = 100) -> list[list[tuple[str, float]]]:
        """Top ``k`` (document id, score) per query, best first; documents without a shared term are omitted."""
        if self._retriever is None:
            raise RuntimeError("call index() before search()")
        k = min(k, len(self.ids))
        vocab = self._retriever.vocab_dict
        results = []
        for query in queries:
            tokens = [t for t in code_aware_tokens(query) if t in vocab]
            if not tokens or k == 0:
                results.append([])
                continue
            docs, scores = self._retriever.retrieve([tokens], k=k, show_progress=False)
            results.append([(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0])
        return results

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """BM25 scores of the given documents as a collection of their own."""
        if not documents:
            return np.zeros(0, dtype=np.float32)
        ids = [str(i) for i in range(len(documents))]
        scorer = BM25Scorer(self.k1, self.b).index(ids, documents)
        found = dict(scorer.search([query], k=len(documents))[0])
        return np.array([found.get(i, 0.0) for i in ids], dtype=np.float32)
