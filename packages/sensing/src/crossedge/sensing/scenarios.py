"""Scenarios: which windows train, which validate and which test, per held-out domain.

A scenario names a domain column (``cross-person`` holds persons out, ``cross-room`` rooms,
...); a :class:`Fold` holds one value of it out as the test domain and splits everything
else (after DomainBed's in/out splits, with HAROOD's cross-* scenarios):

- ``train[d]`` / ``val[d]``: each training domain ``d``'s windows, minus a stratified
  ``holdout`` fraction kept for training-domain validation;
- ``support``: ``shots`` labelled windows per class of the test domain (few-shot scenarios);
- ``oracle``: a stratified ``holdout`` fraction of the rest of the test domain, scored only for
  test-domain oracle selection;
- ``test``: the remaining test-domain windows, the number every table reports.

With ``new_classes`` (label names), the training domains lose every window of those classes
and the test and oracle parts keep only theirs: a model meets them first in the support set
(CrossFi's new-class setting). ``random-split`` is for data without domain labels: one training "domain" ``all`` and a
stratified random test part. Every split depends only on the data and the trial seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDatasetError, stratified_split

if TYPE_CHECKING:
    import numpy as np

#: scenario name -> the domain column it holds out (None: a stratified random split)
SCENARIOS: dict[str, str | None] = {
    "cross-person": "person",
    "cross-position": "position",
    "cross-device": "device",
    "cross-time": "session",
    "cross-room": "room",
    "cross-dataset": "dataset",
    "random-split": None,
}
RANDOM_TEST = "random"
RANDOM_TRAIN = "all"


class ScenarioError(ArrayDatasetError):
    """A scenario does not fit the data (too few domains, an unknown domain, too few shots)."""


@dataclass(frozen=True)
class Fold:
    """One held-out test domain of a scenario, with every index set the run uses."""

    scenario: str
    column: str | None
    test_domain: str
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    support: np.ndarray
    oracle: np.ndarray
    test: np.ndarray
    shots: int = 0
    seed: int = 0
    new_classes: tuple[str, ...] = ()

    def training_domains(self) -> list[str]:
        """The training domains' names, in table order."""
        return list(self.train)

    def all_training(self) -> np.ndarray:
        """Every window a model may train on (training domains' train parts)."""
        import numpy as np

        return np.sort(np.concatenate(list(self.train.values())))

    def test_domain_windows(self) -> np.ndarray:
        """Every window of the test domain (support, oracle and test parts together)."""
        import numpy as np

        return np.sort(np.concatenate([self.support, self.oracle, self.test]))


#: columns other datasets use for the same idea (core's synthetic-shift says "subject")
ALIASES = {"person": ("subject", "user"), "session": ("day", "time")}


def scenario_column(scenario: str, data: ArrayData | None = None) -> str | None:
    """The domain column a scenario holds out (``cross-COLUMN`` works for any column the data has)."""
    column = SCENARIOS.get(scenario)
    if column is None and scenario != "random-split":
        if not scenario.startswith("cross-") or data is None or scenario[6:] not in data.domains.columns:
            from crossedge.core.errors import UnknownNameError

            raise UnknownNameError("scenario", scenario, SCENARIOS)
        column = scenario[6:]
    if column is not None and data is not None and column not in data.domains.columns:
        for alias in ALIASES.get(column, ()):
            if alias in data.domains.columns:
                return alias
        known = ", ".join(data.domains.names()) or "none"
        raise ScenarioError(
            f"scenario {scenario!r} needs a domain column {column!r}; this data has: {known}; "
            f"use --scenario random-split for data without {column} labels"
        )
    return column


def held_out_domains(data: ArrayData, scenario: str) -> list[str]:
    """The values a scenario holds out in turn: each value of its column that has windows."""
    import numpy as np

    column = scenario_column(scenario, data)
    if column is None:
        return [RANDOM_TEST]
    names = data.domains.values[column]
    counts = np.bincount(data.domains.codes(column), minlength=len(names))
    present = [name for name, count in zip(names, counts, strict=True) if count]
    if len(present) < 2:
        raise ScenarioError(
            f"scenario {scenario!r} needs at least two values of {column!r}, the data has {present or 'none'}; "
            f"use --scenario random-split for data without {column} labels"
        )
    return present


def _take_shots(y: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(support, rest): ``shots`` windows of every class present in ``pool``, drawn with a seeded generator."""
    import numpy as np

    support, rest = [], []
    for label in np.unique(y[pool]):
        members = pool[y[pool] == label]
        if len(members) <= shots:
            raise ScenarioError(
                f"class {int(label)} has only {len(members)} windows in the test domain, "
                f"too few for {shots} shots plus a test part; use fewer --shots"
            )
        members = members[np.random.default_rng([seed, 7, int(label)]).permutation(len(members))]
        support.append(members[:shots])
        rest.append(members[shots:])
    return np.sort(np.concatenate(support)), np.sort(np.concatenate(rest))


def _holdout(y: np.ndarray, pool: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a stratified split of ``pool`` that holds out at least one window when it can."""
    import numpy as np

    held, kept = stratified_split(y, fraction, seed=seed, indices=pool)
    if not len(held) and len(kept) > 1:
        held, kept = kept[:1], kept[1:]
    return np.sort(kept), np.sort(held)


def build_fold(
    data: ArrayData,
    scenario: str,
    test_domain: str,
    *,
    shots: int = 0,
    seed: int = 0,
    holdout: float = 0.2,
    new_classes: Sequence[str] = (),
) -> Fold:
    """The fold of ``scenario`` that holds ``test_domain`` out; splits are seeded by ``seed``."""
    import numpy as np

    if shots < 0:
        raise ScenarioError(f"shots must be 0 or more, got {shots}")
    unknown = [c for c in new_classes if c not in data.label_names]
    if unknown:
        raise ScenarioError(f"new classes {unknown} are not labels of this data: {', '.join(data.label_names)}")
    if new_classes and not shots:
        raise ScenarioError("new classes are learnt from the target's shots: give --shots 1 or more")
    is_new = np.isin(data.y, [data.label_names.index(c) for c in new_classes])
    if is_new.all():
        raise ScenarioError("every class is a new class; leave at least one class for training")
    column = scenario_column(scenario, data)
    y = data.y
    everything = np.arange(len(y), dtype=np.int64)
    if column is None:
        if test_domain != RANDOM_TEST:
            raise ScenarioError(f"random-split has one test domain, {RANDOM_TEST!r}, not {test_domain!r}")
        target, source = stratified_split(y, 0.3, seed=seed * 1009 + 1, indices=everything)
        sources = {RANDOM_TRAIN: source}
    else:
        present = held_out_domains(data, scenario)
        if test_domain not in present:
            raise ScenarioError(f"{test_domain!r} is not a {column} of this data; its values are: {', '.join(present)}")
        codes = data.domains.codes(column)
        target = everything[codes == data.domains.code(column, test_domain)]
        sources = {}
        for name in present:
            if name != test_domain:
                sources[name] = everything[codes == data.domains.code(column, name)]
    if shots:
        support, rest = _take_shots(y, target, shots, seed)
    else:
        support, rest = np.zeros(0, np.int64), target
    if new_classes:
        rest = rest[is_new[rest]]  # seen classes' target windows are in no part: they test nothing new
    test, oracle = _holdout(y, rest, holdout, seed * 1009 + 2)
    train, val = {}, {}
    for offset, (name, pool) in enumerate(sources.items()):
        train[name], val[name] = _holdout(y, pool[~is_new[pool]], holdout, seed * 1009 + 3 + offset)
    return Fold(
        scenario=scenario,
        column=column,
        test_domain=test_domain,
        train=train,
        val=val,
        support=support,
        oracle=oracle,
        test=test,
        shots=shots,
        seed=seed,
        new_classes=tuple(new_classes),
    )


def folds(data: ArrayData, scenario: str, *, shots: int = 0, seed: int = 0, holdout: float = 0.2) -> Iterator[Fold]:
    """Every fold of a scenario (one per test domain), in the order of :func:`held_out_domains`."""
    for name in held_out_domains(data, scenario):
        yield build_fold(data, scenario, name, shots=shots, seed=seed, holdout=holdout)
