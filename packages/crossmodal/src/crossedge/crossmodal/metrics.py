"""Decoding metrics: N-way top-k retrieval, 2-way identification, accuracy, and mean +- std over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _check(predicted: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, candidates = np.asarray(predicted), np.asarray(candidates)
    if predicted.ndim != 2 or predicted.shape != candidates.shape:
        raise ValueError(
            f"predicted and candidate embeddings must both be (N, d) with row i the true pair, "
            f"got {predicted.shape} and {candidates.shape}"
        )
    return _unit(predicted), _unit(candidates)


def n_way_top_k(
    predicted: np.ndarray, candidates: np.ndarray, n_way: int = 200, k: Sequence[int] = (1, 5), seed: int = 0
) -> dict[int, float]:
    """N-way top-k retrieval: is candidate i among the k most cosine-similar of itself and N-1 distractors?

    Distractors are drawn without replacement from the other rows with a generator seeded by
    ``seed``; chance is k / N. Returns {k: accuracy}.
    """
    p, c = _check(predicted, candidates)
    n = len(p)
    if not 2 <= n_way <= n:
        raise ValueError(f"n_way={n_way} needs 2 <= n_way <= {n} (the number of candidates)")
    rng = np.random.default_rng(seed)
    sims = p @ c.T
    hits = {kk: 0 for kk in k}
    for i in range(n):
        others = np.delete(np.arange(n), i)
        pool = np.concatenate([[i], rng.choice(others, n_way - 1, replace=False)])
        scores = sims[i, pool]
        rank = int(np.sum(scores[1:] > scores[0]))  # ties count in the true candidate's favour
        for kk in k:
            hits[kk] += rank < kk
    return {kk: hits[kk] / n for kk in k}


def two_way_identification(predicted: np.ndarray, candidates: np.ndarray) -> float:
    """The fraction of all (i, j != i) pairs where prediction i is closer to candidate i than to j (chance 0.5)."""
    p, c = _check(predicted, candidates)
    sims = p @ c.T
    true = np.diag(sims)[:, None]
    off = ~np.eye(len(p), dtype=bool)
    return float(np.mean((true > sims)[off]))


def accuracy(logits_or_labels: np.ndarray, y: np.ndarray) -> float:
    """Classification accuracy of (N, classes) scores (argmax) or (N,) predicted labels against ``y``."""
    pred = np.asarray(logits_or_labels)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    y = np.asarray(y)
    if pred.shape != y.shape:
        raise ValueError(f"predictions {pred.shape} and labels {y.shape} differ in shape")
    return float(np.mean(pred == y))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) over seeds."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(a.mean()), float(a.std())
