"""Links, the deadline controller and a run over a link whose bandwidth changes with time.

An inference's latency is ``device + transmit + rtt + server`` where transmit is the time the
payload's bits take at the link's bandwidth (integrated over the trace when the bandwidth
changes mid-transfer) and ``rtt`` covers the request's propagation and the tiny reply. The
controller sees only the measured medians and a bandwidth estimate; the simulator charges
each inference a device and server time drawn from the measured samples, so jitter and a
stale bandwidth estimate can both make a chosen setting miss.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossedge.core import CrossedgeError

from .evaluation import SettingCost, check_costs

ESTIMATORS = ("last", "oracle")
RANKS = ("width", "accuracy")


@dataclass
class BandwidthTrace:
    """Piecewise-constant bandwidth: ``mbps[i]`` Mbit/s from ``times_s[i]`` on (the last one forever)."""

    times_s: list[float]
    mbps: list[float]

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.mbps) or self.times_s[0] != 0:
            raise CrossedgeError("a bandwidth trace needs matching times and rates, starting at time 0")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise CrossedgeError("a bandwidth trace's times must increase")
        if any(not (m > 0 and math.isfinite(m)) for m in self.mbps):
            raise CrossedgeError(f"bandwidths must be positive Mbit/s, got {min(self.mbps)}")

    @classmethod
    def constant(cls, mbps: float) -> BandwidthTrace:
        """A link that never changes."""
        return cls([0.0], [float(mbps)])

    @classmethod
    def random_walk(
        cls, seconds: float, *, step_s: float = 1.0, low: float = 0.02, high: float = 5.0, seed: int = 0
    ) -> BandwidthTrace:
        """A seeded mean-reverting random walk in log bandwidth between ``low`` and ``high`` Mbit/s."""
        if not 0 < low < high:
            raise CrossedgeError(f"need 0 < low < high Mbit/s, got {low}, {high}")
        rng = random.Random(seed)
        lo, hi = math.log(low), math.log(high)
        centre, sd = (lo + hi) / 2, (hi - lo) / 4
        rho = 0.85  # about 6 steps of memory: a drop lasts a few seconds, as on a moving phone
        x, rates = centre, []
        for _ in range(max(1, math.ceil(seconds / step_s))):
            x = centre + rho * (x - centre) + sd * math.sqrt(1 - rho * rho) * rng.gauss(0, 1)
            rates.append(math.exp(min(hi, max(lo, x))))
        return cls([i * step_s for i in range(len(rates))], rates)

    @classmethod
    def from_csv(cls, path: Path | str) -> BandwidthTrace:
        """Read ``time_s,mbps`` rows (a header row is skipped)."""
        times, rates = [], []
        try:
            with open(path, newline="") as f:
                for row in csv.reader(f):
                    if not row or row[0].strip().startswith("#"):
                        continue
                    try:
                        t, m = float(row[0]), float(row[1])
                    except (ValueError, IndexError):
                        if times:
                            raise CrossedgeError(f"{path}: bad row {row}; rows are time_s,mbps") from None
                        continue  # header
                    times.append(t)
                    rates.append(m)
        except OSError as exc:
            raise CrossedgeError(f"cannot read bandwidth trace {path}: {exc}") from exc
        return cls(times, rates)

    def at(self, t: float) -> float:
        """Bandwidth at time ``t`` seconds."""
        return self.mbps[max(0, bisect.bisect_right(self.times_s, t) - 1)]

    def transmit_s(self, start_s: float, nbytes: int) -> float:
        """Seconds to push ``nbytes`` starting at ``start_s``, following the bandwidth as it changes."""
        bits, t = 8.0 * nbytes, start_s
        i = max(0, bisect.bisect_right(self.times_s, t) - 1)
        while True:
            rate = self.mbps[i] * 1e6
            end = self.times_s[i + 1] if i + 1 < len(self.times_s) else math.inf
            if bits <= rate * (end - t):
                return t + bits / rate - start_s
            bits -= rate * (end - t)
            t, i = end, i + 1


@dataclass
class Choice:
    """A setting the controller picked, its predicted latency and whether it fits the deadline."""

    cost: SettingCost
    predicted_ms: float
    fits: bool
    fallback: bool = False
    note: str = ""


class DeadlineController:
    """Per inference, the best-ranked setting whose predicted latency meets the deadline.

    ``rank="width"`` (the default) prefers the widest encoder, then the most bits: the
    slimmable network's own order, which needs no held-out data. ``rank="accuracy"`` prefers
    the highest validation accuracy (ties: more bytes); on a small validation split, one
    image decides between near-equal settings, which is why it is not the default. When
    nothing fits, the controller falls back to the smallest payload (the narrowest width at
    the fewest bits) and says so in the choice's note.
    """

    def __init__(self, costs: Sequence[SettingCost], *, deadline_ms: float, rtt_ms: float, rank: str = "width"):
        check_costs(list(costs))
        if deadline_ms <= 0 or rtt_ms < 0:
            raise CrossedgeError(f"need a positive deadline and a non-negative RTT, got {deadline_ms}, {rtt_ms}")
        if rank not in RANKS:
            raise CrossedgeError(f"unknown rank {rank!r}: choose one of {', '.join(RANKS)}")
        split = [c for c in costs if c.kind == "split"]
        if rank == "width":
            self.costs = sorted(split, key=lambda c: (c.width, c.bits or 0), reverse=True)
        else:
            self.costs = sorted(split, key=lambda c: (c.val_accuracy, c.payload_bytes), reverse=True)
        self.rank = rank
        self.deadline_ms = float(deadline_ms)
        self.rtt_ms = float(rtt_ms)
        self.smallest = min(self.costs, key=lambda c: (c.payload_bytes, c.width, c.device_ms + c.server_ms))

    def predicted_ms(self, cost: SettingCost, mbps: float) -> float:
        """Median device + transmit + RTT + median server time at ``mbps`` Mbit/s."""
        if not cost.uses_link:
            return cost.device_ms
        return cost.device_ms + 8.0 * cost.payload_bytes / (mbps * 1e3) + self.rtt_ms + cost.server_ms

    def choose(self, mbps: float) -> Choice:
        """The setting for one inference at an estimated ``mbps`` Mbit/s."""
        for cost in self.costs:
            predicted = self.predicted_ms(cost, mbps)
            if predicted <= self.deadline_ms:
                return Choice(cost, predicted, True)
        predicted = self.predicted_ms(self.smallest, mbps)
        note = (
            f"no setting meets the {self.deadline_ms:g} ms deadline at {mbps:.3g} Mbit/s; "
            f"sending the smallest, {self.smallest.name} ({self.smallest.payload_bytes} B, "
            f"{predicted:.1f} ms predicted)"
        )
        return Choice(self.smallest, predicted, False, fallback=True, note=note)


class FixedPolicy:
    """Always the same setting (the baseline the controller is compared with)."""

    def __init__(self, cost: SettingCost, controller: DeadlineController):
        self.cost, self.controller = cost, controller
        self.name = f"fixed {cost.name}"
        self.estimator = "last"  # unused: a fixed policy ignores the bandwidth

    def choose(self, mbps: float) -> Choice:
        """The fixed setting, with its predicted latency."""
        predicted = self.controller.predicted_ms(self.cost, mbps)
        return Choice(self.cost, predicted, predicted <= self.controller.deadline_ms)


class AdaptivePolicy:
    """The deadline controller, fed by an estimator of the current bandwidth.

    ``headroom`` below 1 plans with that fraction of the estimate, so a link that drops by
    less than that between two inferences does not make the next one late.
    """

    def __init__(self, controller: DeadlineController, estimator: str = "last", *, headroom: float = 1.0):
        if estimator not in ESTIMATORS:
            raise CrossedgeError(f"unknown bandwidth estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}")
        if not 0 < headroom <= 1:
            raise CrossedgeError(f"headroom is the fraction of the estimate planned with, in (0, 1]; got {headroom}")
        self.controller, self.estimator, self.headroom = controller, estimator, float(headroom)
        self.name = "adaptive" if estimator == "last" else "adaptive (oracle bandwidth)"
        if headroom < 1:
            self.name += f", plans at {100 * headroom:.0f}%"

    def choose(self, mbps: float) -> Choice:
        """The controller's choice at ``headroom`` times the estimate."""
        return self.controller.choose(mbps * self.headroom)


@dataclass
class SimulationResult:
    """Per-policy outcome of a run: misses, accuracy, bytes and latency, and what was chosen."""

    policy: str
    steps: int
    deadline_misses: int
    accuracy: float  # percent of inferences answered correctly, late or not
    on_time_accuracy: float  # percent answered correctly within the deadline
    mean_bytes: float
    mean_latency_ms: float
    p95_latency_ms: float
    fallbacks: int
    choices: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list, repr=False)
    chosen: list[str] = field(default_factory=list, repr=False)

    @property
    def miss_rate(self) -> float:
        """Fraction of inferences over the deadline."""
        return self.deadline_misses / max(1, self.steps)

    def to_row(self) -> dict[str, Any]:
        """A report row (no per-step data)."""
        return {
            "policy": self.policy,
            "steps": self.steps,
            "deadline_misses": self.deadline_misses,
            "miss_rate": self.miss_rate,
            "accuracy": self.accuracy,
            "on_time_accuracy": self.on_time_accuracy,
            "mean_bytes": self.mean_bytes,
            "mean_latency_ms": self.mean_latency_ms,
            "p95_latency_ms": self.p95_latency_ms,
            "fallbacks": self.fallbacks,
            "choices": dict(self.choices),
        }


def simulate(
    policy: FixedPolicy | AdaptivePolicy,
    trace: BandwidthTrace,
    *,
    steps: int,
    period_ms: float = 100.0,
    seed: int = 0,
) -> SimulationResult:
    """Run ``steps`` inferences, one every ``period_ms``, over ``trace``; test image ``i % n`` at step ``i``.

    The policy's estimator says what bandwidth it is told: ``last`` is the throughput the
    previous transfer achieved (the first inference sees the trace's starting bandwidth, as
    after a probe); ``oracle`` is the bandwidth at the moment of sending.
    """
    estimator = policy.estimator
    if steps < 1 or period_ms <= 0:
        raise CrossedgeError(f"need at least one step and a positive period, got {steps}, {period_ms}")
    controller = policy.controller
    rng = random.Random(seed)  # one stream per run, so every policy draws the same jitter sequence
    estimate = trace.at(0.0)
    latencies, chosen, notes = [], [], []
    misses = correct = on_time = fallbacks = total_bytes = 0
    for i in range(steps):
        t = i * period_ms / 1000.0
        choice = policy.choose(trace.at(t) if estimator == "oracle" else estimate)
        cost = choice.cost
        device = rng.choice(cost.device_samples_ms)
        server = rng.choice(cost.server_samples_ms) if cost.server_samples_ms else 0.0
        latency = device + server
        if cost.uses_link:
            transmit_ms = 1000.0 * trace.transmit_s(t + device / 1000.0, cost.payload_bytes)
            latency += transmit_ms + controller.rtt_ms
            estimate = 8.0 * cost.payload_bytes / (transmit_ms * 1e3)
            total_bytes += cost.payload_bytes
        ok = bool(cost.correct[i % len(cost.correct)])
        late = latency > controller.deadline_ms
        misses += late
        correct += ok
        on_time += ok and not late
        if choice.fallback:
            fallbacks += 1
            if len(notes) < 3:  # the first few are enough to say what happened
                notes.append(f"step {i} (t={t:.1f} s): {choice.note}")
        latencies.append(latency)
        chosen.append(cost.name)
    return SimulationResult(
        policy=policy.name,
        steps=steps,
        deadline_misses=misses,
        accuracy=100.0 * correct / steps,
        on_time_accuracy=100.0 * on_time / steps,
        mean_bytes=total_bytes / steps,
        mean_latency_ms=float(np.mean(latencies)),
        p95_latency_ms=float(np.percentile(latencies, 95)),
        fallbacks=fallbacks,
        choices=dict(Counter(chosen).most_common()),
        notes=notes,
        latency_ms=latencies,
        chosen=chosen,
    )


def policies(
    costs: Sequence[SettingCost], controller: DeadlineController, *, oracle: bool = True, headroom: float = 1.0
) -> list[FixedPolicy | AdaptivePolicy]:
    """The policies to compare: adaptive (last transfer's throughput; with ``headroom`` < 1 also planning
    at that fraction of it; optionally the oracle bandwidth) and every fixed setting."""
    out: list[FixedPolicy | AdaptivePolicy] = [AdaptivePolicy(controller, "last")]
    if headroom < 1:
        out.append(AdaptivePolicy(controller, "last", headroom=headroom))
    if oracle:
        out.append(AdaptivePolicy(controller, "oracle"))
    out.extend(FixedPolicy(c, controller) for c in costs)
    return out
