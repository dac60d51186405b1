"""Scenario folds: held-out domains never leak into training or validation; shots and oracle parts are disjoint."""

import numpy as np
import pytest

from crossedge.core.builtins.datasets import SyntheticShift
from crossedge.core.contracts.array_dataset import ArrayData, DomainTable
from crossedge.sensing.scenarios import SCENARIOS, ScenarioError, build_fold, folds, held_out_domains, scenario_column
from crossedge.sensing.windows import DOMAIN_COLUMNS, Recording, Windowing, windows_from_recordings


def sensing_data(persons=4, rooms=3, classes=3, per=6, seed=0) -> ArrayData:
    """Windows with every sensing domain column: persons x rooms x classes recordings."""
    rng = np.random.default_rng(seed)
    recordings = []
    for p in range(persons):
        for r in range(rooms):
            for c in range(classes):
                signal = rng.standard_normal((8 * per, 2)) + c
                domains = {"person": f"p{p}", "room": f"room{r}", "device": f"d{(p + r) % 2}"}
                recordings.append(Recording(signal, f"c{c}", 10.0, domains, source=f"rec{p}{r}{c}"))
    return windows_from_recordings(recordings, Windowing(8), dataset="fixture")


def assert_no_leak(data, fold):
    column = fold.column
    target = set(fold.test_domain_windows().tolist())
    used = set(fold.all_training().tolist()) | {int(i) for v in fold.val.values() for i in v}
    assert not (target & used), "a window of the held-out domain is in training or validation"
    if column is not None:
        code = data.domains.code(column, fold.test_domain)
        assert set(np.flatnonzero(data.domains.codes(column) == code).tolist()) == target
    parts = [fold.support, fold.oracle, fold.test, *fold.train.values(), *fold.val.values()]
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())), "two parts share a window"
    assert len(joined) == len(data.y), "a window is in no part"


@pytest.mark.parametrize("scenario", ["cross-person", "cross-room", "cross-device"])
def test_every_fold_of_a_scenario_keeps_the_held_out_domain_out_of_training_and_validation(scenario):
    data = sensing_data()
    seen = []
    for fold in folds(data, scenario, seed=3):
        assert_no_leak(data, fold)
        assert fold.test_domain not in fold.training_domains()
        seen.append(fold.test_domain)
    assert seen == list(data.domains.values[SCENARIOS[scenario]])


def test_few_shot_folds_take_k_windows_per_class_of_the_test_domain_only():
    data = sensing_data()
    fold = build_fold(data, "cross-person", "p1", shots=2, seed=0)
    assert_no_leak(data, fold)
    assert np.bincount(data.y[fold.support], minlength=3).tolist() == [2, 2, 2]
    assert set(data.domains.codes("person")[fold.support].tolist()) == {data.domains.code("person", "p1")}
    again = build_fold(data, "cross-person", "p1", shots=2, seed=0)
    other = build_fold(data, "cross-person", "p1", shots=2, seed=1)
    assert np.array_equal(fold.support, again.support) and not np.array_equal(fold.support, other.support)
    with pytest.raises(ScenarioError, match="too few for 40 shots"):
        build_fold(data, "cross-person", "p1", shots=40)


def test_random_split_needs_no_domain_labels_and_is_stratified():
    data = SyntheticShift(subjects=2, windows=10).recipe()
    fold = build_fold(data, "random-split", "random", seed=2)
    assert_no_leak(data, fold)
    assert fold.training_domains() == ["all"]
    counts = np.bincount(data.y[fold.test_domain_windows()], minlength=3)
    assert counts.max() - counts.min() <= 1


def test_scenarios_that_do_not_fit_the_data_say_what_to_use():
    data = sensing_data(rooms=1)
    with pytest.raises(ScenarioError, match="at least two values of 'room'.*random-split"):
        held_out_domains(data, "cross-room")
    with pytest.raises(ScenarioError, match="'p9' is not a person"):
        build_fold(data, "cross-person", "p9")
    with pytest.raises(Exception, match="unknown scenario 'cross-moon'"):
        scenario_column("cross-moon", data)
    # core's synthetic-shift names persons "subject": cross-person finds it, and any column works as cross-COLUMN
    shift = SyntheticShift().recipe()
    assert scenario_column("cross-person", shift) == "subject"
    assert held_out_domains(shift, "cross-session") == ["session0", "session1"]
    assert set(DOMAIN_COLUMNS) == set(data.domains.names())


def test_a_domain_with_a_single_window_still_gets_a_validation_window_when_it_can():
    x = np.zeros((7, 4, 1), np.float32)
    y = np.array([0, 1, 0, 1, 0, 1, 0])
    person = np.array([0, 0, 0, 0, 1, 1, 1])
    data = ArrayData(x, y, ("a", "b"), DomainTable({"person": person}, {"person": ("p0", "p1")}))
    fold = build_fold(data, "cross-person", "p1", holdout=0.05)
    assert len(fold.val["p0"]) == 1 and len(fold.train["p0"]) == 3
    assert_no_leak(data, fold)


def test_new_classes_never_train_and_are_the_only_classes_tested():
    data = sensing_data()
    fold = build_fold(data, "cross-person", "p0", shots=1, seed=0, new_classes=("c2",))
    new = data.label_names.index("c2")
    trained = np.concatenate([fold.all_training(), *fold.val.values()])
    assert new not in set(data.y[trained].tolist())
    assert set(data.y[fold.test].tolist()) == {new} == set(data.y[fold.oracle].tolist())
    assert new in set(data.y[fold.support].tolist())
    target = set(fold.test_domain_windows().tolist())
    assert not target & set(trained.tolist())
    with pytest.raises(ScenarioError, match="give --shots"):
        build_fold(data, "cross-person", "p0", new_classes=("c2",))
    with pytest.raises(ScenarioError, match="not labels of this data"):
        build_fold(data, "cross-person", "p0", shots=1, new_classes=("c9",))
