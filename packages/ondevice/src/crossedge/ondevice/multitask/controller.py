"""The controller: task-importance weights and a latency budget in, per-task widths out, without retraining.

It reads a table of candidates, each a configuration with a recorded latency and its validation
quality per task, and picks the one with the highest weighted normalized quality whose latency
is within the budget. Each task's quality is normalized over the table to [0, 1] (0: the worst
width's, 1: the best's), so a weight says how much of a task's attainable range the user wants.

Two ways to build the table:

- :class:`ComponentProfile` (the controller's): time the encoder at each width and each decoder
  at each width once, score each (encoder width, task, width) once on validation, and add up.
  Quality adds up exactly (a task's output depends only on the encoder's and its own width);
  latency nearly does, and a line fitted through a few whole-network timings corrects the rest.
  For E encoder widths, T tasks and W widths that is E(1 + TW) + 3 timings and ETW scorings.
- :func:`grid_candidates` (the reference): time and score the whole network at every one of the
  E * W^T configurations.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossedge.core import CrossedgeError

from .data import TASKS, TaskSplit
from .evaluation import (
    component_latency,
    component_quality,
    configuration_latency,
    configuration_quality,
    median_ms,
)
from .model import Configuration, MultiTaskConfig, MultiTaskNetwork

#: The ``format`` key of a cached profile's JSON.
PROFILE_FORMAT = "crossedge.ondevice.multitask.profile/1"


@dataclass(frozen=True)
class Candidate:
    """A configuration with its recorded latency (ms, batch 1) and validation quality per task."""

    configuration: Configuration
    latency_ms: float
    quality: dict[str, float] = field(hash=False, compare=False)

    def to_row(self) -> dict[str, Any]:
        """A flat dict for tables and JSON."""
        return {
            "configuration": self.configuration.label,
            **self.configuration.to_dict(),
            "latency_ms": self.latency_ms,
            **{f"{t}_quality": q for t, q in self.quality.items()},
        }


@dataclass
class Choice:
    """What the controller picked for one weight vector and budget."""

    candidate: Candidate
    score: float  # weighted normalized quality, 0..1
    normalized: dict[str, float]
    weights: tuple[float, ...]
    budget_ms: float
    feasible: int  # candidates within the budget

    @property
    def configuration(self) -> Configuration:
        """The chosen configuration."""
        return self.candidate.configuration

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return {
            **self.candidate.to_row(),
            "score": self.score,
            **{f"{t}_normalized": v for t, v in self.normalized.items()},
            "weights": list(self.weights),
            "budget_ms": self.budget_ms,
            "feasible": self.feasible,
        }


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Weights as a tuple, refused unless one non-negative value per task summing to 1."""
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(TASKS):
        raise CrossedgeError(f"give one weight per task ({', '.join(TASKS)}), got {len(weights)}: {list(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise CrossedgeError(f"task weights must be non-negative numbers, got {list(weights)}")
    if not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
        raise CrossedgeError(f"task weights must sum to 1, got {list(weights)} (sum {sum(weights):g})")
    return weights


class Controller:
    """Picks the best candidate within a latency budget for given task weights."""

    def __init__(self, candidates: Iterable[Candidate], ranges: dict[str, tuple[float, float]] | None = None):
        self.candidates = sorted(candidates, key=lambda c: c.latency_ms)
        if not self.candidates:
            raise CrossedgeError("the controller needs at least one candidate configuration")
        for c in self.candidates:
            if not math.isfinite(c.latency_ms) or c.latency_ms < 0:
                raise CrossedgeError(f"{c.configuration.label} has latency {c.latency_ms}: remeasure the table")
        self.ranges = ranges or quality_ranges(self.candidates)

    def normalized(self, candidate: Candidate) -> dict[str, float]:
        """Each task's quality mapped to [0, 1] over this controller's ranges (1 when a task's range is empty)."""
        out = {}
        for task in TASKS:
            low, high = self.ranges[task]
            out[task] = (candidate.quality[task] - low) / (high - low) if high > low else 1.0
        return out

    def score(self, candidate: Candidate, weights: Sequence[float]) -> float:
        """Weighted normalized quality of ``candidate``."""
        normalized = self.normalized(candidate)
        return sum(w * normalized[t] for t, w in zip(TASKS, weights, strict=True))

    def choose(self, weights: Sequence[float], budget_ms: float, margin: float = 0.0) -> Choice:
        """The highest-scoring candidate whose recorded latency is at most ``budget_ms * (1 - margin)`` (ties: faster).

        ``margin`` keeps room for the drift between the table's timings and a later run's: on this
        machine whole timing passes moved by 7-10% between passes of one run.
        """
        weights = check_weights(weights)
        if not math.isfinite(budget_ms) or budget_ms <= 0:
            raise CrossedgeError(f"the latency budget must be a positive number of ms, got {budget_ms}")
        if not (math.isfinite(margin) and 0.0 <= margin < 1.0):
            raise CrossedgeError(f"the latency margin must be in [0, 1), got {margin}")
        planned = budget_ms * (1.0 - margin)
        feasible = [c for c in self.candidates if c.latency_ms <= planned]
        if not feasible:
            fastest = self.candidates[0]
            aim = (
                f"{budget_ms:g} ms"
                if margin == 0
                else f"{planned:.3f} ms ({budget_ms:g} ms less the {margin:g} margin)"
            )
            hint = "raise the budget" if fastest.latency_ms > budget_ms else "raise the budget or lower --margin"
            raise CrossedgeError(
                f"no configuration fits {aim}: the fastest, {fastest.configuration.label}, takes "
                f"{fastest.latency_ms:.3f} ms; {hint}"
            )
        # Sorted by latency and max() keeps the first maximum: among equal scores the fastest wins.
        best = max(feasible, key=lambda c: self.score(c, weights))
        return Choice(best, self.score(best, weights), self.normalized(best), weights, float(budget_ms), len(feasible))

    def front(self, weights: Sequence[float] | None = None) -> list[Candidate]:
        """Candidates no other is at least as fast and as good as (per task, or in weighted score), fastest first."""
        if weights is None:
            points = [(c.latency_ms, *(-c.quality[t] for t in TASKS)) for c in self.candidates]
        else:
            weights = check_weights(weights)
            points = [(c.latency_ms, -self.score(c, weights)) for c in self.candidates]
        return [self.candidates[i] for i in non_dominated(points)]

    def lookup(self, configuration: Configuration) -> Candidate:
        """The candidate of ``configuration``."""
        for c in self.candidates:
            if c.configuration == configuration:
                return c
        raise CrossedgeError(f"{configuration.label} is not in this table")


def quality_ranges(candidates: Iterable[Candidate]) -> dict[str, tuple[float, float]]:
    """(worst, best) quality of each task over ``candidates``."""
    candidates = list(candidates)
    return {t: (min(c.quality[t] for c in candidates), max(c.quality[t] for c in candidates)) for t in TASKS}


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (every objective minimized), in input order.

    A point is dominated when another is no worse in every objective and better in one; of exact
    duplicates only the first is kept.
    """
    keep = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if j == i:
                continue
            no_worse = all(b <= a for a, b in zip(p, q, strict=True))
            if no_worse and (any(b < a for a, b in zip(p, q, strict=True)) or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """Whether ``p`` dominates ``q`` (every objective minimized)."""
    return all(a <= b for a, b in zip(p, q, strict=True)) and any(a < b for a, b in zip(p, q, strict=True))


@dataclass
class ComponentProfile:
    """Per-component latencies and qualities, and the line that maps summed latencies to whole-network ones."""

    config: MultiTaskConfig
    encoder_ms: dict[float, float]
    decoder_ms: dict[tuple[float, str, float], float]
    quality: dict[tuple[float, str, float], float]
    calibration: tuple[float, float] = (0.0, 1.0)  # whole ms ~= offset + slope * summed ms
    calibration_points: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # what building the profile took
    timings: int = 0  # timed items (encoder, decoders, calibration configurations)
    scorings: int = 0  # (encoder width, task, width) validation passes
    model_sha256: str = ""
    threads: int | None = None
    repeats: int = 0

    def summed_ms(self, configuration: Configuration) -> float:
        """Encoder plus every decoder's latency at ``configuration``."""
        e = configuration.encoder_width
        return self.encoder_ms[e] + sum(
            self.decoder_ms[(e, t, w)] for t, w in zip(TASKS, configuration.widths, strict=True)
        )

    def predicted_ms(self, configuration: Configuration) -> float:
        """The whole network's latency at ``configuration``, from the components and the calibration line."""
        offset, slope = self.calibration
        return offset + slope * self.summed_ms(configuration)

    def candidates(self) -> list[Candidate]:
        """Every configuration, with predicted latency and (exact) validation quality."""
        out = []
        for configuration in self.config.configurations():
            e = configuration.encoder_width
            quality = {t: self.quality[(e, t, w)] for t, w in zip(TASKS, configuration.widths, strict=True)}
            out.append(Candidate(configuration, self.predicted_ms(configuration), quality))
        return out

    def controller(self) -> Controller:
        """A controller over this profile's candidates."""
        return Controller(self.candidates())

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuple keys written as lists)."""
        return {
            "format": PROFILE_FORMAT,
            "model_sha256": self.model_sha256,
            "threads": self.threads,
            "repeats": self.repeats,
            "config": self.config.to_dict(),
            "encoder_ms": [[e, v] for e, v in self.encoder_ms.items()],
            "decoder_ms": [[*k, v] for k, v in self.decoder_ms.items()],
            "quality": [[*k, v] for k, v in self.quality.items()],
            "calibration": list(self.calibration),
            "calibration_points": self.calibration_points,
            "seconds": self.seconds,
            "timings": self.timings,
            "scorings": self.scorings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentProfile:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != PROFILE_FORMAT:
            raise CrossedgeError(f"not a multitask profile (format {data.get('format')!r}, expected {PROFILE_FORMAT})")
        return cls(
            MultiTaskConfig.from_dict(data["config"]),
            {float(e): float(v) for e, v in data["encoder_ms"]},
            {(float(e), t, float(w)): float(v) for e, t, w, v in data["decoder_ms"]},
            {(float(e), t, float(w)): float(v) for e, t, w, v in data["quality"]},
            (float(data["calibration"][0]), float(data["calibration"][1])),
            list(data.get("calibration_points", [])),
            float(data.get("seconds", 0.0)),
            int(data.get("timings", 0)),
            int(data.get("scorings", 0)),
            str(data.get("model_sha256", "")),
            data.get("threads"),
            int(data.get("repeats", 0)),
        )

    def save(self, path: Path | str) -> Path:
        """Write the profile as JSON; an existing file is replaced only when it is a profile written here."""
        path = Path(path)
        if path.exists() and read_format(path) != PROFILE_FORMAT:
            raise CrossedgeError(f"{path} exists and is not a multitask profile; give another --table path")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str, *, model_sha256: str | None = None, threads: int | None = None) -> ComponentProfile:
        """Read a saved profile, refusing one measured for another model file or thread count."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CrossedgeError(f"cannot read the profile {path}: {exc}") from exc
        profile = cls.from_dict(data)
        if model_sha256 is not None and profile.model_sha256 != model_sha256:
            raise CrossedgeError(f"{path} was measured for another model file; delete it or give another --table path")
        if threads is not None and profile.threads != threads:
            raise CrossedgeError(
                f"{path} was measured at {profile.threads} thread(s), not {threads}; give another --table path"
            )
        return profile


def read_format(path: Path) -> str | None:
    """The ``format`` key of a JSON file, or None when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file's bytes (what ties a cached profile to its model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_configurations(config: MultiTaskConfig) -> list[Configuration]:
    """Smallest, a middle and the largest configuration: where the calibration line is fitted."""
    middle = Configuration(
        config.encoder_widths[len(config.encoder_widths) // 2],
        (config.widths[(len(config.widths) - 1) // 2],) * len(TASKS),
    )
    return list(dict.fromkeys([config.smallest, middle, config.largest]))


def fit_calibration(summed: Sequence[float], whole: Sequence[float]) -> tuple[float, float]:
    """Least-squares line whole ~= offset + slope * summed; a plain offset when the slope is implausible.

    The slope stays near 1 on a sane machine; a slope outside [0.5, 2] means a noisy point (a
    load spike during one timing), where a line would distort every prediction.
    """
    summed, whole = np.asarray(summed, float), np.asarray(whole, float)
    if len(summed) >= 2 and np.ptp(summed) > 0:
        slope, offset = np.polyfit(summed, whole, 1)
        if 0.5 <= slope <= 2.0:
            return float(offset), float(slope)
    return float(np.mean(whole - summed)), 1.0


def build_profile(
    network: MultiTaskNetwork,
    val: TaskSplit,
    image: torch.Tensor,
    *,
    repeats: int = 20,
    rounds: int = 20,
    threads: int | None = None,
    model_sha256: str = "",
    progress: bool = False,
) -> ComponentProfile:
    """Time every component once, score every (encoder width, task, width) on ``val``, fit the calibration."""
    from crossedge.core.bench import threads as pinned_threads

    start = time.perf_counter()
    with pinned_threads(threads):
        calibrate = calibration_configurations(network.config)
        encoder_ms, decoder_ms, whole = component_latency(
            network, image, whole=calibrate, repeats=repeats, rounds=rounds, progress=progress
        )
        quality = component_quality(network, val)
    profile = ComponentProfile(network.config, encoder_ms, decoder_ms, quality, model_sha256=model_sha256)
    summed = [profile.summed_ms(c) for c in calibrate]
    measured = [whole[c] for c in calibrate]
    profile.calibration = fit_calibration(summed, measured)
    profile.calibration_points = [
        {"configuration": c.label, "summed_ms": s, "measured_ms": m}
        for c, s, m in zip(calibrate, summed, measured, strict=True)
    ]
    profile.seconds = time.perf_counter() - start
    profile.timings = len(encoder_ms) + len(decoder_ms) + len(calibrate)
    profile.scorings = len(quality)
    profile.threads = threads
    profile.repeats = repeats
    return profile


@dataclass
class GridTable:
    """Every configuration timed and scored whole: the exhaustive reference."""

    candidates: list[Candidate]
    samples_ms: dict[str, list[float]]
    seconds: float
    timings: int
    scorings: int

    def controller(self) -> Controller:
        """A controller over the measured candidates (what the grid search optimizes)."""
        return Controller(self.candidates)


def grid_candidates(
    network: MultiTaskNetwork,
    val: TaskSplit,
    image: torch.Tensor,
    *,
    repeats: int = 20,
    rounds: int = 20,
    threads: int | None = None,
    configurations: Sequence[Configuration] | None = None,
    progress: bool = False,
) -> GridTable:
    """Time the whole network at every configuration and score each one on ``val`` with a full pass."""
    from crossedge.core.bench import progress_bar
    from crossedge.core.bench import threads as pinned_threads

    configurations = list(configurations or network.config.configurations())
    start = time.perf_counter()
    with pinned_threads(threads):
        samples = configuration_latency(
            network, image, configurations, repeats=repeats, rounds=rounds, progress=progress
        )
        candidates = []
        for c in progress_bar(configurations, desc="multitask grid quality", enabled=progress, unit="config"):
            candidates.append(Candidate(c, median_ms(samples[c]), configuration_quality(network, val, c)))
    return GridTable(
        candidates,
        {c.label: s for c, s in samples.items()},
        time.perf_counter() - start,
        len(configurations),
        len(configurations),
    )


def configuration_count(config: MultiTaskConfig) -> int:
    """How many configurations a network has: E * W^T."""
    return len(config.encoder_widths) * len(config.widths) ** len(TASKS)
