import math

import pytest

from crossedge.retrieval.metrics import evaluate, paired_difference, per_query, ranking_to_run

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}}
RUN = {
    "q1": {"x": 3.0, "a": 2.0, "y": 1.0},  # relevant at rank 2
    "q2": {"b": 3.0, "x": 2.0, "c": 1.0},  # relevant at ranks 1 and 3
    "q3": {"x": 1.0},  # relevant never retrieved
}


def test_metrics_match_hand_computation():
    got = evaluate(RUN, QRELS)
    ndcg_q1 = (1 / math.log2(3)) / 1.0
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert got["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3, rel=1e-6)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3, rel=1e-6)
    assert got["recall@100"] == pytest.approx((1 + 1 + 0) / 3, rel=1e-6)


def test_metrics_equal_ir_measures_directly():
    import ir_measures

    direct = ir_measures.calc_aggregate(
        [ir_measures.parse_measure(m) for m in ("nDCG@10", "RR@10", "R@100")], QRELS, RUN
    )
    got = evaluate(RUN, QRELS)
    assert got["ndcg@10"] == pytest.approx(direct[ir_measures.parse_measure("nDCG@10")])
    assert got["mrr@10"] == pytest.approx(direct[ir_measures.parse_measure("RR@10")])


def test_unretrieved_query_counts_as_zero():
    got = evaluate({"q1": {"a": 1.0}}, QRELS, queries=["q1", "q3"])
    assert got["mrr@10"] == pytest.approx(0.5)


def test_ranking_to_run_keeps_order_under_ties():
    run = ranking_to_run({"q": [("b", 1.0), ("a", 1.0)]})
    assert run["q"]["b"] > run["q"]["a"]
    assert evaluate(run, {"q": {"b": 1}})["mrr@10"] == 1.0


def test_per_query_values_by_hand():
    got = per_query(RUN, QRELS)
    assert got["mrr@10"] == pytest.approx({"q1": 0.5, "q2": 1.0, "q3": 0.0})
    assert got["recall@100"] == pytest.approx({"q1": 1.0, "q2": 1.0, "q3": 0.0})


def test_paired_difference_interval():
    a = {f"q{i}": 1.0 if i % 4 else 0.0 for i in range(40)}  # 30 of 40 queries right
    b = {f"q{i}": 1.0 if i % 2 else 0.0 for i in range(40)}  # 20 of 40, every one also right in a
    got = paired_difference(a, b, seed=1)
    assert got["mean"] == pytest.approx(0.25) and got["queries"] == 40
    # Differences are 0 or 1 with p = 0.25: the interval is about +-1.96 * sqrt(.25 * .75 / 40) = +-0.134.
    assert 0.25 - 0.2 < got["low"] < 0.25 - 0.07
    assert 0.25 + 0.07 < got["high"] < 0.25 + 0.2
    same = paired_difference(a, {q: v - 0.1 for q, v in a.items()})
    assert same["low"] == pytest.approx(0.1) and same["high"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least 2 shared"):
        paired_difference({"q1": 1.0}, {"q1": 0.0})
