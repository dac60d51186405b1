"""Score fusion of a reranker with its first stage, the weight chosen on held-out training data only.

A reranker that is right in its training domain and unsure elsewhere should not throw away the
first stage's ranking. Fusion keeps both: per query, each score list over the reranked head is
standardised (zero mean, unit spread), and the fused score is ``w * reranker + (1 - w) * first``.
``w = 1`` is plain reranking, ``w = 0`` the first stage. :func:`choose_weight` picks ``w`` on a
dev split of the *training* mixture, so the evaluation collection never informs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .metrics import means, per_query, ranking_to_run

Ranking = Mapping[str, Sequence[tuple[str, float]]]
#: The weights :func:`choose_weight` tries: 0, 0.1, ..., 1.
GRID = tuple(round(0.1 * i, 1) for i in range(11))


def standardise(scores: Sequence[float]) -> list[float]:
    """Scores minus their mean over their spread (all zero when the spread is zero)."""
    if not scores:
        return []
    mean = sum(scores) / len(scores)
    spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return [0.0] * len(scores) if spread == 0 else [(s - mean) / spread for s in scores]


def fuse(first: Ranking, reranked: Ranking, depth: int, weight: float) -> dict[str, list[tuple[str, float]]]:
    """The first stage's top ``depth`` per query reordered by the fused score; the rest keeps its order after.

    ``reranked`` holds the reranker's score of each head document (as :func:`.pipeline.rerank`
    returns it: the head with finite scores); a head document it lacks is an error.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    out = {}
    for qid, ranked in first.items():
        head = list(ranked[:depth])
        by_doc = dict(reranked[qid])
        missing = [doc for doc, _ in head if doc not in by_doc]
        if missing:
            raise ValueError(f"query {qid}: the reranker did not score {len(missing)} head document(s)")
        a = standardise([by_doc[doc] for doc, _ in head])
        b = standardise([score for _, score in head])
        fused = [(doc, weight * x + (1 - weight) * y) for (doc, _), x, y in zip(head, a, b, strict=True)]
        fused.sort(key=lambda item: -item[1])
        out[qid] = fused + [(doc, float("-inf")) for doc, _ in ranked[depth:]]
    return out


def choose_weight(
    first: Ranking,
    reranked: Ranking,
    qrels: Mapping[str, Mapping[str, int]],
    depth: int,
    grid: Sequence[float] = GRID,
) -> tuple[float, dict[float, float]]:
    """The weight of ``grid`` with the best mean nDCG@10 on these (dev) queries, and nDCG@10 at each.

    Ties go to the larger weight (closer to plain reranking, what the reranker was trained for).
    """
    qids = list(first)
    if not qids:
        raise ValueError("choosing a fusion weight needs at least one dev query")
    table = {}
    for w in grid:
        table[w] = means(per_query(ranking_to_run(fuse(first, reranked, depth, w)), qrels, qids))["ndcg@10"]
    best = max(grid, key=lambda w: (table[w], w))
    return best, table
