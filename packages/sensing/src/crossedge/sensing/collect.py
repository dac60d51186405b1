"""Tables from sweep records alone (DomainBed's ``collect_results``): one row per algorithm and selection method.

Records are grouped by experiment (dataset, scenario, shots and training budget: the job
fields that are not the algorithm, the test domain or a seed). Within an experiment and for
each trial seed, a selector (:mod:`crossedge.core.selection`) picks one record per
(algorithm, test domain) among the hyperparameter seeds and checkpoints; the seed's score is
the mean over test domains of the picked records' test accuracy; a table cell is the mean
+- standard deviation of that score over trial seeds. Training-domain validation and the
test-domain oracle are never mixed: each is its own column.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossedge.core.selection import Record, SelectionError, select

from .sweep import RECORD_FORMAT
from .windows import natural_key

METHODS = ("training-domain", "test-domain")
#: job fields that vary inside one experiment
_PER_RUN = ("algorithm", "test_domain", "hparams_seed", "trial_seed")


@dataclass
class Cell:
    """Mean and sample standard deviation over trial seeds, and how many seeds and test domains went in."""

    mean: float
    std: float
    seeds: int
    domains: int
    per_seed: list[float] = field(default_factory=list)

    def text(self, scale: float = 100.0) -> str:
        """``mean +- std`` in percent (std omitted for one seed)."""
        if math.isnan(self.mean):
            return "-"
        if self.seeds < 2:
            return f"{scale * self.mean:.1f}"
        return f"{scale * self.mean:.1f} +- {scale * self.std:.1f}"


def read_sensing_records(paths: Sequence[str | Path]) -> list[tuple[dict[str, Any], Record]]:
    """(job, record) for every line of the files; a line that is not a sensing record names file and line."""
    out = []
    for path in paths:
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SelectionError(f"cannot read records from {path}: {exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise SelectionError(
                    f"{where}: not JSON ({exc.msg}); was the sweep interrupted? rerun it to resume"
                ) from exc
            if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or "job" not in data:
                raise SelectionError(f"{where}: not a crossedge-sensing record")
            out.append((data["job"], Record.from_dict(data, where=where)))
    return out


def experiment_key(job: dict[str, Any]) -> str:
    """The job fields shared by every run of one experiment, as canonical JSON."""
    return json.dumps({k: v for k, v in sorted(job.items()) if k not in _PER_RUN}, sort_keys=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Experiment:
    """Collected results of one experiment: cells per (algorithm, method) and per (algorithm, method, domain)."""

    settings: dict[str, Any]
    algorithms: list[str]
    domains: list[str]
    cells: dict[tuple[str, str], Cell]
    per_domain: dict[tuple[str, str, str], Cell]

    def rows(self) -> list[dict[str, Any]]:
        """One row per algorithm: a column per selection method, in percent."""
        return [
            {"algorithm": a, **{m: self.cells[(a, m)].text() for m in METHODS if (a, m) in self.cells}}
            for a in self.algorithms
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: settings, and every cell with its per-seed scores."""

        def cell(c: Cell) -> dict[str, Any]:
            return {"mean": c.mean, "std": c.std, "seeds": c.seeds, "domains": c.domains, "per_seed": c.per_seed}

        return {
            "settings": self.settings,
            "algorithms": self.algorithms,
            "test_domains": self.domains,
            "results": {
                a: {m: cell(self.cells[(a, m)]) for m in METHODS if (a, m) in self.cells} for a in self.algorithms
            },
            "per_domain": {
                a: {
                    m: {d: cell(self.per_domain[(a, m, d)]) for d in self.domains if (a, m, d) in self.per_domain}
                    for m in METHODS
                }
                for a in self.algorithms
            },
        }


def collect(pairs: Iterable[tuple[dict[str, Any], Record]], methods: Sequence[str] = METHODS) -> list[Experiment]:
    """Every experiment in the records, with both selection methods applied per trial seed."""
    groups: dict[str, list[tuple[dict[str, Any], Record]]] = defaultdict(list)
    for job, record in pairs:
        groups[experiment_key(job)].append((job, record))
    experiments = []
    for key, members in sorted(groups.items()):
        algorithms = list(dict.fromkeys(r.algorithm for _, r in members))
        domains = sorted({r.test for _, r in members}, key=natural_key)
        by_seed: dict[int, list[Record]] = defaultdict(list)
        for _, record in members:
            by_seed[record.seed].append(record)
        cells, per_domain = {}, {}
        for method in methods:
            seed_scores: dict[str, list[float]] = defaultdict(list)
            domain_scores: dict[tuple[str, str], list[float]] = defaultdict(list)
            domains_seen: dict[str, set[str]] = defaultdict(set)
            for _seed, records in sorted(by_seed.items()):
                picked: dict[str, list[float]] = defaultdict(list)
                for selection in select(records, method):
                    picked[selection.algorithm].append(selection.test_score)
                    domain_scores[(selection.algorithm, selection.test)].append(selection.test_score)
                    domains_seen[selection.algorithm].add(selection.test)
                for algorithm, scores in picked.items():
                    seed_scores[algorithm].append(sum(scores) / len(scores))
            for algorithm in algorithms:
                mean, std = _mean_std(seed_scores[algorithm])
                cells[(algorithm, method)] = Cell(
                    mean, std, len(seed_scores[algorithm]), len(domains_seen[algorithm]), seed_scores[algorithm]
                )
                for domain in domains:
                    values = domain_scores.get((algorithm, domain), [])
                    if values:
                        m, s = _mean_std(values)
                        per_domain[(algorithm, method, domain)] = Cell(m, s, len(values), 1, values)
        experiments.append(Experiment(json.loads(key), algorithms, domains, cells, per_domain))
    return experiments


def plot(experiment: Experiment, path: str | Path) -> Path:
    """A bar chart (mean +- std per algorithm, one bar per selection method) written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    algorithms = experiment.algorithms
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(algorithms) + 2), 3.2))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        cells = [experiment.cells.get((a, method)) for a in algorithms]
        means = [100 * c.mean if c else float("nan") for c in cells]
        stds = [100 * c.std if c else 0.0 for c in cells]
        ax.bar(
            [k + (i - 0.5) * width for k in range(len(algorithms))], means, width, yerr=stds, label=method, capsize=2
        )
    ax.set_xticks(range(len(algorithms)), algorithms, rotation=30, ha="right")
    ax.set_ylabel("test-domain accuracy (%)")
    settings = experiment.settings
    ax.set_title(
        f"{Path(str(settings.get('dataset'))).name} {settings.get('scenario')} (shots {settings.get('shots')})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
