"""Ranking metrics through ir-measures (trec_eval underneath): nDCG@10, MRR@10, Recall@100."""

from __future__ import annotations

from collections.abc import Mapping

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

#: Our metric names -> ir-measures measure strings.
MEASURES = {"ndcg@10": "nDCG@10", "mrr@10": "RR@10", "recall@100": "R@100"}


def evaluate(run: Run, qrels: Qrels, queries: list[str] | None = None) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and Recall@100 over ``queries`` (default: every judged query in the run's scope).

    A query with judgements but no retrieved documents counts as zero, as it should:
    ir-measures alone would skip it.
    """
    import ir_measures

    queries = list(queries) if queries is not None else [q for q in qrels if q in run]
    if not queries:
        return {name: 0.0 for name in MEASURES}
    parsed = {name: ir_measures.parse_measure(text) for name, text in MEASURES.items()}
    qrels_sub = {q: dict(qrels[q]) for q in queries if q in qrels}
    run_sub = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in queries}
    totals = {name: 0.0 for name in MEASURES}
    by_measure = {v: k for k, v in parsed.items()}
    for metric in ir_measures.iter_calc(list(parsed.values()), qrels_sub, {q: r for q, r in run_sub.items() if r}):
        totals[by_measure[metric.measure]] += float(metric.value)
    return {name: totals[name] / len(queries) for name in MEASURES}


def ranking_to_run(rankings: Mapping[str, list[tuple[str, float]]]) -> dict[str, dict[str, float]]:
    """Ranked (doc id, score) lists -> a run; scores are made strictly decreasing so ties cannot reorder."""
    run = {}
    for qid, ranked in rankings.items():
        # trec_eval breaks score ties by document id; scoring by rank keeps our order exactly.
        run[qid] = {doc: float(len(ranked) - i) for i, (doc, _) in enumerate(ranked)}
    return run
