"""Ranking metrics through ir-measures (trec_eval underneath): nDCG@10, MRR@10, Recall@100."""

from __future__ import annotations

from collections.abc import Mapping

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

#: Our metric names -> ir-measures measure strings.
MEASURES = {"ndcg@10": "nDCG@10", "mrr@10": "RR@10", "recall@100": "R@100"}


def per_query(run: Run, qrels: Qrels, queries: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Each metric's value per query: ``{metric: {query id: value}}``.

    ``queries`` defaults to every judged query in the run's scope. A query with judgements but no
    retrieved documents counts as zero, as it should: ir-measures alone would skip it.
    """
    import ir_measures

    queries = list(queries) if queries is not None else [q for q in qrels if q in run]
    values = {name: dict.fromkeys(queries, 0.0) for name in MEASURES}
    if not queries:
        return values
    parsed = {name: ir_measures.parse_measure(text) for name, text in MEASURES.items()}
    qrels_sub = {q: dict(qrels[q]) for q in queries if q in qrels}
    run_sub = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in queries}
    by_measure = {v: k for k, v in parsed.items()}
    for metric in ir_measures.iter_calc(list(parsed.values()), qrels_sub, {q: r for q, r in run_sub.items() if r}):
        values[by_measure[metric.measure]][metric.query_id] = float(metric.value)
    return values


def evaluate(run: Run, qrels: Qrels, queries: list[str] | None = None) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and Recall@100 over ``queries`` (see :func:`per_query`)."""
    return means(per_query(run, qrels, queries))


def means(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-query values (from :func:`per_query`) -> each metric's mean."""
    return {name: sum(v.values()) / len(v) if v else 0.0 for name, v in values.items()}


def paired_difference(
    a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 9999, seed: int = 0
) -> dict[str, float]:
    """Mean of ``a - b`` over the queries both have, with a 95% paired bootstrap interval.

    Two systems evaluated on the same queries differ far less from run to run than their
    separate means suggest; resampling queries with their paired differences says whether a gap
    of a point or two on a few hundred queries is more than the choice of queries.
    """
    import numpy as np
    from scipy.stats import bootstrap

    shared = [q for q in a if q in b]
    if len(shared) < 2:
        raise ValueError(f"a paired comparison needs at least 2 shared queries, got {len(shared)}")
    diff = np.array([a[q] - b[q] for q in shared])
    if np.all(diff == diff[0]):
        return {"mean": float(diff[0]), "low": float(diff[0]), "high": float(diff[0]), "queries": len(shared)}
    ci = bootstrap(
        (diff,), np.mean, confidence_level=0.95, n_resamples=resamples, method="percentile", random_state=seed
    ).confidence_interval
    return {"mean": float(diff.mean()), "low": float(ci.low), "high": float(ci.high), "queries": len(shared)}


def ranking_to_run(rankings: Mapping[str, list[tuple[str, float]]]) -> dict[str, dict[str, float]]:
    """Ranked (doc id, score) lists -> a run; scores are made strictly decreasing so ties cannot reorder."""
    run = {}
    for qid, ranked in rankings.items():
        # trec_eval breaks score ties by document id; scoring by rank keeps our order exactly.
        run[qid] = {doc: float(len(ranked) - i) for i, (doc, _) in enumerate(ranked)}
    return run
