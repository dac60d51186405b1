"""Model selection from saved records: training-domain validation and leave-one-domain-out."""

import json

import pytest

from crossedge.core.selection import (
    Record,
    SelectionError,
    append_record,
    leave_one_domain_out,
    oracle_test_domain,
    read_records,
    select,
    training_domain_validation,
)

DOMAINS = ("a", "b", "c")


def rec(lr, test, step, val_accs, test_acc, val=None, val_acc=None, seed=0, algorithm="erm"):
    """A record whose training domains score ``val_accs`` and whose test domain scores ``test_acc``."""
    train = [d for d in DOMAINS if d not in (test, val)]
    metrics = {d: {"val_acc": v} for d, v in zip(train, val_accs, strict=True)}
    metrics[test] = {"acc": test_acc}
    if val is not None:
        metrics[val] = {"acc": val_acc}
    return Record(algorithm, {"lr": lr}, seed, test, step, metrics, val=val, column="subject")


def test_training_domain_validation_picks_the_best_mean_validation_step_per_test_domain():
    records = [
        rec(0.1, "c", 10, [0.6, 0.7], 0.50),
        rec(0.1, "c", 20, [0.9, 0.9], 0.55),  # best validation for test c: chosen although its test score is lower
        rec(0.01, "c", 20, [0.8, 0.8], 0.90),
        rec(0.1, "a", 20, [0.5, 0.5], 0.40),
        rec(0.01, "a", 20, [0.7, 0.6], 0.30),
        rec(0.5, "c", 20, [1.0], 0.99, val="a", val_acc=0.1),  # a LODO run: ignored here
    ]
    chosen = {s.test: s for s in training_domain_validation(records)}
    assert chosen["c"].record.hparams == {"lr": 0.1} and chosen["c"].record.step == 20
    assert chosen["c"].val_score == pytest.approx(0.9) and chosen["c"].test_score == 0.55
    assert chosen["a"].record.hparams == {"lr": 0.01} and chosen["a"].test_score == 0.30
    assert [s.method for s in chosen.values()] == ["training-domain"] * 2


def test_leave_one_domain_out_scores_configurations_on_a_held_out_training_domain():
    records = [
        rec(0.1, "c", 20, [0.9, 0.9], 0.60),
        rec(0.1, "c", 20, [0.9], 0.0, val="a", val_acc=0.40),
        rec(0.1, "c", 20, [0.9], 0.0, val="b", val_acc=0.50),
        rec(0.01, "c", 20, [0.5, 0.5], 0.70),
        rec(0.01, "c", 10, [0.5], 0.0, val="a", val_acc=0.10),  # an earlier step: the last one counts
        rec(0.01, "c", 20, [0.5], 0.0, val="a", val_acc=0.80),
        rec(0.001, "c", 20, [0.5], 0.0, val="a", val_acc=0.99),  # no test-only run: does not qualify
    ]
    (chosen,) = leave_one_domain_out(records)
    assert chosen.record.hparams == {"lr": 0.01} and chosen.record.val is None
    assert chosen.val_score == pytest.approx(0.80) and chosen.test_score == 0.70
    # training-domain validation, reading the same records, prefers the other configuration
    assert training_domain_validation(records)[0].record.hparams == {"lr": 0.1}


def test_oracle_test_domain_picks_by_the_held_out_test_windows_at_the_last_step_and_reports_the_others():
    def oracle(lr, step, val, oracle_acc, test_acc):
        record = rec(lr, "c", step, val, test_acc)
        record.metrics["c"]["oracle_acc"] = oracle_acc
        return record

    records = [
        oracle(0.1, 10, [0.9, 0.9], 0.99, 0.97),  # an early step: early stopping on the test domain is not allowed
        oracle(0.1, 20, [0.9, 0.9], 0.50, 0.52),
        oracle(0.01, 20, [0.1, 0.1], 0.80, 0.75),  # worst validation, best oracle: the oracle takes it
    ]
    (chosen,) = oracle_test_domain(records)
    assert chosen.method == "test-domain" and chosen.record.hparams == {"lr": 0.01}
    assert chosen.val_score == 0.80 and chosen.test_score == 0.75
    assert select(records, "test-domain")[0].record.hparams == {"lr": 0.01}
    assert training_domain_validation(records)[0].record.hparams == {"lr": 0.1}
    with pytest.raises(SelectionError, match="oracle_acc"):
        oracle_test_domain([rec(0.1, "c", 20, [0.9, 0.9], 0.5)])


def test_selection_is_per_algorithm_and_ignores_record_order():
    records = [rec(0.1, "c", 20, [0.9, 0.9], 0.5), rec(0.1, "c", 20, [0.2, 0.2], 0.7, algorithm="other")]
    forward = [s.to_dict() for s in select(records, "training-domain")]
    backward = [s.to_dict() for s in select(list(reversed(records)), "training-domain")]
    assert forward == backward and [s["algorithm"] for s in forward] == ["erm", "other"]
    tied = [rec(0.2, "c", 20, [0.9, 0.9], 0.1), rec(0.1, "c", 20, [0.9, 0.9], 0.2)]
    assert select(tied, "training-domain")[0].to_dict() == select(tied[::-1], "training-domain")[0].to_dict()


def test_records_round_trip_through_json_lines_with_line_numbers_in_errors(tmp_path):
    path = tmp_path / "records.jsonl"
    for r in (rec(0.1, "c", 10, [0.6, 0.7], 0.5), rec(0.1, "c", 20, [0.9, 0.9], 0.55)):
        append_record(path, r)
    assert [r.step for r in read_records(path)] == [10, 20]
    assert read_records(path)[0] == rec(0.1, "c", 10, [0.6, 0.7], 0.5)
    with open(path, "a") as handle:
        handle.write(json.dumps({"algorithm": "erm", "hparams": {}, "seed": 0, "step": 1, "metrics": {}}) + "\n")
    with pytest.raises(SelectionError, match=r"records.jsonl:3: missing field 'split'"):
        read_records(path)
    path.write_text("{not json\n")
    with pytest.raises(SelectionError, match=r"records.jsonl:1: not JSON"):
        read_records(path)
    with pytest.raises(SelectionError, match="no metrics for the test domain 'z'"):
        append_record(path, {**rec(0.1, "c", 1, [0.1, 0.1], 0.1).to_dict(), "split": {"test": "z"}})


def test_missing_metric_and_unknown_method_are_clear_errors():
    bad = Record("erm", {}, 0, "c", 5, {"a": {"loss": 1.0}, "c": {"acc": 0.5}})
    with pytest.raises(SelectionError, match="no metric 'val_acc' for domain 'a'"):
        training_domain_validation([bad])
    from crossedge.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'training-domain'"):
        select([], "training-domains")
