"""Model selection over saved training records, apart from training (DomainBed's ``model_selection``).

A sweep appends one JSON line per evaluation: which algorithm with which hyperparameters and
seed, the split (the held-out test domain and, for leave-one-domain-out selection, a training
domain held out as validation), the step, and metrics per domain. Selectors read those
records later and pick, per (algorithm, test domain), the record they would have deployed.

Metric keys per domain, for a metric ``M`` (default ``acc``, higher is better):

- a training domain carries ``val_M``: the score on its own held-out windows;
- the test domain carries ``M``: the score on its windows (what the selection reports);
- the validation domain of a leave-one-domain-out run carries ``M``;
- for test-domain (oracle) selection, the test domain also carries ``oracle_M``: the score on a
  held-out part of its windows, disjoint from the part ``M`` is measured on.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CrossedgeError


class SelectionError(CrossedgeError):
    """A record file is malformed, or records lack the metrics a selector needs."""


@dataclass(frozen=True)
class Record:
    """One evaluation of one run at one step."""

    algorithm: str
    hparams: dict[str, Any]
    seed: int
    test: str
    step: int
    metrics: dict[str, dict[str, float]]
    val: str | None = None
    column: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "record") -> Record:
        """Parse and check one record; errors say where and what is missing."""
        if not isinstance(data, dict):
            raise SelectionError(f"{where}: a record is a JSON object, got {type(data).__name__}")
        try:
            split = data["split"]
            record = cls(
                algorithm=str(data["algorithm"]),
                hparams=dict(data["hparams"]),
                seed=int(data["seed"]),
                test=str(split["test"]),
                val=None if split.get("val") is None else str(split["val"]),
                column=split.get("column"),
                step=int(data["step"]),
                metrics={str(d): {str(k): float(v) for k, v in m.items()} for d, m in data["metrics"].items()},
            )
        except KeyError as exc:
            raise SelectionError(f"{where}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise SelectionError(f"{where}: malformed record ({exc})") from exc
        if record.test not in record.metrics:
            raise SelectionError(f"{where}: no metrics for the test domain {record.test!r}")
        return record

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to a records file."""
        return {
            "algorithm": self.algorithm,
            "hparams": self.hparams,
            "seed": self.seed,
            "split": {"column": self.column, "test": self.test, "val": self.val},
            "step": self.step,
            "metrics": self.metrics,
        }

    def config(self) -> tuple[str, str, int]:
        """(algorithm, hyperparameters as canonical JSON, seed): what a selector chooses between."""
        return self.algorithm, json.dumps(self.hparams, sort_keys=True), self.seed

    def training_domains(self) -> list[str]:
        """Domains the run trained on: every domain in the metrics except the test and validation ones."""
        return sorted(d for d in self.metrics if d not in (self.test, self.val))


@dataclass(frozen=True)
class Selection:
    """The record a selector picked for one (algorithm, test domain), with its validation and test scores."""

    method: str
    algorithm: str
    test: str
    val_score: float
    test_score: float
    record: Record = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the scores plus the chosen hyperparameters, seed and step."""
        row = {k: v for k, v in asdict(self).items() if k != "record"}
        row.update(hparams=self.record.hparams, seed=self.record.seed, step=self.record.step)
        return row


def append_record(path: str | Path, record: Record | Mapping[str, Any]) -> None:
    """Append one record as a JSON line (checked first, so a bad record never reaches the file)."""
    if not isinstance(record, Record):
        record = Record.from_dict(dict(record))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")


def read_records(path: str | Path) -> list[Record]:
    """Every record of a JSON-lines file; a bad line is an error naming its number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SelectionError(f"cannot read records from {path}: {exc}") from exc
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise SelectionError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        records.append(Record.from_dict(data, where=f"{path}:{number}"))
    return records


def _score(record: Record, domain: str, key: str) -> float:
    try:
        value = record.metrics[domain][key]
    except KeyError as exc:
        raise SelectionError(
            f"record of {record.algorithm!r} (seed {record.seed}, test {record.test!r}, step {record.step}) "
            f"has no metric {key!r} for domain {domain!r}"
        ) from exc
    if math.isnan(value):
        return -math.inf  # a diverged run is never the best one
    return value


def _best(candidates: Iterable[tuple[float, Record]]) -> tuple[float, Record]:
    # ties go to the earliest step, then to the first configuration in sorted order (max keeps the first
    # of equals), so the same records always give the same pick whatever order the file lists them in
    ordered = sorted(candidates, key=lambda c: (json.dumps(c[1].config()), c[1].step))
    return max(ordered, key=lambda c: (c[0], -c[1].step))


def training_domain_validation(records: Iterable[Record], metric: str = "acc") -> list[Selection]:
    """Per (algorithm, test domain): the run and step with the best mean ``val_METRIC`` over training domains."""
    runs: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        if record.val is None:
            runs[(record.algorithm, record.test, record.config())].append(record)
    best: dict[tuple[str, str], tuple[float, Record]] = {}
    for (algorithm, test, _), steps in sorted(runs.items()):
        scored = []
        for record in steps:
            domains = record.training_domains()
            if not domains:
                raise SelectionError(f"record of {algorithm!r} for test {test!r} names no training domain")
            scored.append((sum(_score(record, d, f"val_{metric}") for d in domains) / len(domains), record))
        choice = _best(scored)
        key = (algorithm, test)
        best[key] = _best([best[key], choice]) if key in best else choice
    return [
        Selection("training-domain", a, t, score, _score(record, t, metric), record)
        for (a, t), (score, record) in sorted(best.items())
    ]


def leave_one_domain_out(records: Iterable[Record], metric: str = "acc") -> list[Selection]:
    """Per (algorithm, test domain): the configuration whose runs score best on a held-out training domain.

    A configuration (hyperparameters and seed) qualifies when it has a run with only the test
    domain held out (which gives the test score) and at least one run that also held out a
    validation domain; its validation score is the mean, over those runs at their last step,
    of the validation domain's ``METRIC``.
    """
    final: dict[tuple, Record] = {}
    for record in records:
        key = (record.algorithm, record.test, record.config(), record.val)
        if key not in final or record.step > final[key].step:
            final[key] = record
    configs: dict[tuple, dict[str | None, Record]] = defaultdict(dict)
    for (algorithm, test, config, val), record in final.items():
        configs[(algorithm, test, config)][val] = record
    best: dict[tuple[str, str], tuple[float, Record]] = {}
    for (algorithm, test, _), by_val in sorted(configs.items(), key=lambda item: item[0]):
        held_out = [r for v, r in by_val.items() if v is not None]
        if None not in by_val or not held_out:
            continue
        score = sum(_score(r, r.val, metric) for r in held_out) / len(held_out)
        choice = (score, by_val[None])
        key = (algorithm, test)
        best[key] = _best([best[key], choice]) if key in best else choice
    return [
        Selection("leave-one-domain-out", a, t, score, _score(record, t, metric), record)
        for (a, t), (score, record) in sorted(best.items())
    ]


def oracle_test_domain(records: Iterable[Record], metric: str = "acc") -> list[Selection]:
    """Per (algorithm, test domain): the configuration whose last step scores best on ``oracle_METRIC``.

    DomainBed's oracle: it peeks at held-out windows of the test domain, so it is an upper
    bound on what selection can do, reported apart from the honest selectors. Only the last
    step of each run counts (early stopping on the test domain would be a second peek).
    """
    final: dict[tuple, Record] = {}
    for record in records:
        if record.val is not None:
            continue
        key = (record.algorithm, record.test, record.config())
        if key not in final or record.step > final[key].step:
            final[key] = record
    best: dict[tuple[str, str], tuple[float, Record]] = {}
    for (algorithm, test, _), record in sorted(final.items(), key=lambda item: item[0]):
        choice = (_score(record, test, f"oracle_{metric}"), record)
        key = (algorithm, test)
        best[key] = _best([best[key], choice]) if key in best else choice
    return [
        Selection("test-domain", a, t, score, _score(record, t, metric), record)
        for (a, t), (score, record) in sorted(best.items())
    ]


SELECTORS: dict[str, Callable[..., list[Selection]]] = {
    "training-domain": training_domain_validation,
    "leave-one-domain-out": leave_one_domain_out,
    "test-domain": oracle_test_domain,
}


def select(records: Iterable[Record], method: str, metric: str = "acc") -> list[Selection]:
    """Run the selector named ``method`` (``training-domain``, ``leave-one-domain-out`` or ``test-domain``)."""
    if method not in SELECTORS:
        from .errors import UnknownNameError

        raise UnknownNameError("selection method", method, SELECTORS)
    return SELECTORS[method](list(records), metric=metric)
