"""Sparse draft trees built offline from measured per-position top-k accuracies (Medusa's and PPD's trees).

A node is a path of ranks ``(r1, ..., rd)``: the rank-``r1`` guess for draft position 1,
then the rank-``r2`` guess for position 2, and so on. Its estimated chance of being
accepted is the product of the measured rank accuracies along the path, so a child never
scores above its parent and a best-first walk yields parents before children. Any prefix
of the result is then the best tree of that size, which is what :meth:`Draft.truncated`
keeps when the engine cuts a draft.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

Path = tuple[int, ...]


def sparse_tree(rank_accuracy: Sequence[Sequence[float]], nodes: int, *, max_rank: int | None = None) -> list[Path]:
    """The ``nodes`` rank paths with the highest estimated acceptance, best first (parents before children).

    ``rank_accuracy[d][r]`` is how often the rank-``r`` guess for draft position ``d + 1``
    was the right token; ``max_rank`` caps the ranks used at every position.
    """

    def ranks(depth: int) -> list[float]:
        row = list(rank_accuracy[depth])
        return row if max_rank is None else row[:max_rank]

    if not rank_accuracy or nodes <= 0:
        return []
    heap = [(-a, (r,)) for r, a in enumerate(ranks(0))]
    heapq.heapify(heap)
    tree: list[Path] = []
    while heap and len(tree) < nodes:
        negative_score, path = heapq.heappop(heap)
        tree.append(path)
        if len(path) < len(rank_accuracy):
            for r, a in enumerate(ranks(len(path))):
                heapq.heappush(heap, (negative_score * a, (*path, r)))
    return tree


def path_score(rank_accuracy: Sequence[Sequence[float]], path: Path) -> float:
    """A node's estimated chance of acceptance: the product of its ranks' measured accuracies."""
    score = 1.0
    for depth, rank in enumerate(path):
        row = rank_accuracy[depth]
        score *= float(row[rank]) if rank < len(row) else 0.0
    return score


def chain(depth: int) -> list[Path]:
    """The top-1 guess at every position: a chain of ``depth`` nodes."""
    return [(0,) * d for d in range(1, depth + 1)]


def tree_parents(paths: Sequence[Path]) -> list[int]:
    """Each path's parent index in ``paths`` (-1 for a first-position node), as :class:`Draft` wants them."""
    index = {path: i for i, path in enumerate(paths)}
    parents = []
    for i, path in enumerate(paths):
        parent = index.get(path[:-1], -1) if len(path) > 1 else -1
        if len(path) > 1 and not 0 <= parent < i:
            raise ValueError(f"node {path} comes before its parent {path[:-1]} or has none")
        parents.append(parent)
    return parents


def prior_rank_accuracy(positions: int, ranks: int) -> list[list[float]]:
    """A stand-in for measured accuracies (heads built in code, not trained): halving with position and rank."""
    return [[0.5 ** (d + r + 1) for r in range(ranks)] for d in range(positions)]
