"""collect builds its tables from records alone: selection per trial seed, then mean +- std over seeds."""

import json
import math

import pytest

from crossedge.core.selection import SelectionError
from crossedge.sensing.collect import collect, read_sensing_records
from crossedge.sensing.sweep import RECORD_FORMAT, Job, append_records


def record(algorithm, test, hparams_seed, trial_seed, step, val, oracle, acc, dataset="d"):
    job = Job(dataset, "cross-person", test, algorithm, hparams_seed, trial_seed, steps=20)
    train = [d for d in ("a", "b", "c") if d != test]
    metrics = {d: {"val_acc": val} for d in train}
    metrics[test] = {"acc": acc, "oracle_acc": oracle}
    return {
        "format": RECORD_FORMAT,
        "algorithm": algorithm,
        "hparams": {"lr": 10.0**-hparams_seed},
        "seed": trial_seed,
        "split": {"column": "person", "test": test, "val": None},
        "step": step,
        "metrics": metrics,
        "job": json.loads(job.key()),
    }


def write(tmp_path, records):
    path = tmp_path / "records.jsonl"
    append_records(path, records)
    return path


def test_both_protocols_select_per_trial_seed_and_average_over_test_domains_then_seeds(tmp_path):
    records = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for test in ("a", "b"):
            # hyperparameter seed 0 validates best; seed 1 is best on the test domain's oracle windows
            records.append(record("erm", test, 0, seed, 10, 0.5, 0.5, 0.40 + shift))
            records.append(record("erm", test, 0, seed, 20, 0.9, 0.6, 0.60 + shift))
            records.append(record("erm", test, 1, seed, 20, 0.7, 0.9, 0.80 + shift))
    (experiment,) = collect(read_sensing_records([write(tmp_path, records)]))
    training = experiment.cells[("erm", "training-domain")]
    oracle = experiment.cells[("erm", "test-domain")]
    assert training.per_seed == pytest.approx([0.60, 0.70]) and training.mean == pytest.approx(0.65)
    assert training.std == pytest.approx(math.sqrt(2 * 0.05**2)) and training.seeds == 2 and training.domains == 2
    assert oracle.per_seed == pytest.approx([0.80, 0.90]) and oracle.mean == pytest.approx(0.85)
    assert experiment.rows() == [{"algorithm": "erm", "training-domain": "65.0 +- 7.1", "test-domain": "85.0 +- 7.1"}]
    assert experiment.per_domain[("erm", "training-domain", "a")].per_seed == pytest.approx([0.60, 0.70])


def test_experiments_with_other_settings_are_separate_tables_and_algorithms_separate_rows(tmp_path):
    records = [
        record("erm", "a", 0, 0, 20, 0.9, 0.9, 0.5),
        record("coral", "a", 0, 0, 20, 0.9, 0.9, 0.7),
        record("erm", "a", 0, 0, 20, 0.9, 0.9, 0.1, dataset="other"),
    ]
    experiments = collect(read_sensing_records([write(tmp_path, records)]))
    assert [e.settings["dataset"] for e in experiments] == ["d", "other"]
    first = experiments[0]
    assert first.algorithms == ["erm", "coral"]
    assert first.cells[("coral", "training-domain")].mean == 0.7 and first.cells[("erm", "test-domain")].mean == 0.5
    assert first.rows()[0]["training-domain"] == "50.0"  # one seed: no interval to show
    assert experiments[1].cells[("erm", "training-domain")].mean == 0.1


def test_a_line_that_is_not_a_sensing_record_names_its_file_and_line(tmp_path):
    path = write(tmp_path, [record("erm", "a", 0, 0, 20, 0.9, 0.9, 0.5)])
    with open(path, "a") as handle:
        handle.write('{"algorithm": "erm"}\n')
    with pytest.raises(SelectionError, match=r"records.jsonl:2: not a crossedge-sensing record"):
        read_sensing_records([path])
    path.write_text('{"format": "crossedge.sensing.record/1", "jo\n')
    with pytest.raises(SelectionError, match=r"records.jsonl:1: not JSON.*rerun it to resume"):
        read_sensing_records([path])
