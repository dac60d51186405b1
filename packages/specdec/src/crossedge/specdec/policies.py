"""Draft-length policies: how many tokens to draft before each verification.

``constant`` always drafts ``k``; ``heuristic`` grows the length by 2 after a fully
accepted draft and shrinks it by 1 otherwise (transformers' schedule); ``cost-aware``
measures the target's verification latency ``t(k)`` and each drafter's acceptance
online and drafts the ``k`` (possibly 0) that maximises expected tokens per second.

The contract (:class:`DraftLengthPolicy`) lives in :mod:`crossedge.core.contracts.policy`;
policies register their classes through the ``register_draft_policies`` hook, the
built-ins included (see :mod:`crossedge.specdec.plugin`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from crossedge.core.contracts.policy import DraftLengthPolicy
from crossedge.core.specs import Spec, build, parse_spec

from .errors import SpecdecError

__all__ = [
    "AcceptanceModel",
    "ConstantPolicy",
    "CostAwarePolicy",
    "DraftLengthPolicy",
    "HeuristicPolicy",
    "VerificationCostModel",
    "build_policy",
    "check_policy_spec",
]


def _check_k(value: int, what: str) -> int:
    value = int(value)
    if value < 1:
        raise SpecdecError(f"{what} must be at least 1, got {value}")
    return value


class ConstantPolicy(DraftLengthPolicy):
    """Always draft ``k`` tokens (fewer when the drafter has fewer)."""

    name = "constant"
    description = "always draft k tokens (fewer when the drafter has fewer)"

    def __init__(self, k: int = 5):
        self.k = self.max_k = _check_k(k, "constant policy k")

    def choose(self, drafter: str, bucket: str, max_k: int) -> int:
        return min(self.k, max_k)


class HeuristicPolicy(DraftLengthPolicy):
    """Per drafter: +2 after a fully accepted draft, -1 otherwise, within [1, max_k]."""

    name = "heuristic"
    description = "+2 after a fully accepted draft, -1 otherwise (transformers' schedule)"

    def __init__(self, k: int = 4, max_k: int = 16):
        self.initial = _check_k(k, "heuristic policy k")
        self.max_k = _check_k(max_k, "heuristic policy max_k")
        self.current: dict[str, int] = {}

    def choose(self, drafter: str, bucket: str, max_k: int) -> int:
        return min(self.current.setdefault(drafter, self.initial), max_k)

    def observe_acceptance(self, drafter: str, bucket: str, drafted: int, accepted: int) -> None:
        k = self.current.setdefault(drafter, self.initial)
        k = k + 2 if accepted >= drafted else k - 1
        self.current[drafter] = max(1, min(self.max_k, k))


class VerificationCostModel:
    """Online estimate of the target's forward latency t(k) when verifying k drafted tokens."""

    def __init__(self, smoothing: float = 0.2, prior_slope: float = 0.05):
        self.smoothing = smoothing
        #: Before measurements exist, each drafted token is assumed to add this fraction of t(0).
        self.prior_slope = prior_slope
        self.seconds: dict[int, float] = {}
        self.counts: dict[int, int] = defaultdict(int)

    def observe(self, k: int, seconds: float) -> None:
        """Fold one measured forward into the estimate for ``k``."""
        old = self.seconds.get(k)
        # The first few samples are averaged plainly; afterwards an EMA follows the context-length drift.
        self.counts[k] += 1
        weight = max(self.smoothing, 1.0 / self.counts[k])
        self.seconds[k] = seconds if old is None else old + weight * (seconds - old)

    def __call__(self, k: int) -> float:
        """Predicted seconds for verifying ``k`` tokens (interpolated between measured lengths)."""
        if k in self.seconds:
            # A coarse clock can measure 0 s; the policy divides by this.
            return max(1e-9, self.seconds[k])
        if not self.seconds:
            return 1.0 + self.prior_slope * k
        known = sorted(self.seconds)
        below = [j for j in known if j < k]
        above = [j for j in known if j > k]
        if below and above:
            lo, hi = below[-1], above[0]
            return self.seconds[lo] + (self.seconds[hi] - self.seconds[lo]) * (k - lo) / (hi - lo)
        base_k = below[-1] if below else above[0]
        base = self.seconds[base_k]
        slope = self._slope() if len(known) >= 2 else self.prior_slope * base / (1 + self.prior_slope * base_k)
        return max(1e-6, base + slope * (k - base_k))

    def _slope(self) -> float:
        known = sorted(self.seconds)
        lo, hi = known[0], known[-1]
        return max(0.0, (self.seconds[hi] - self.seconds[lo]) / (hi - lo))

    def table(self) -> dict[int, float]:
        """Measured mean seconds per k."""
        return dict(sorted(self.seconds.items()))


class AcceptanceModel:
    """Per-position conditional acceptance rates with a Beta prior and exponential forgetting."""

    def __init__(self, max_k: int, prior_accept: float = 1.0, prior_reject: float = 1.0, decay: float = 0.98):
        self.accepted = [0.0] * (max_k + 1)
        self.reached = [0.0] * (max_k + 1)
        self.prior = (prior_accept, prior_reject)
        self.decay = decay

    def observe(self, drafted: int, accepted: int) -> None:
        """Record one verification: positions 1..accepted accepted, position accepted+1 rejected."""
        for i in range(1, len(self.reached)):
            self.accepted[i] *= self.decay
            self.reached[i] *= self.decay
        for i in range(1, min(drafted, accepted + 1, len(self.reached) - 1) + 1):
            self.reached[i] += 1.0
            if i <= accepted:
                self.accepted[i] += 1.0

    def rates(self, k: int) -> list[float]:
        """Acceptance probability of positions 1..k, each given that the positions before it were accepted.

        Deep positions are observed rarely, so each position's prior is the previous position's
        estimate (worth ``a + b`` observations) rather than a fixed value: a drafter whose first
        tokens are almost always right is expected to keep being right until data says otherwise.
        """
        a, b = self.prior
        weight = a + b
        prior = a / weight
        out = []
        for i in range(1, k + 1):
            j = min(i, len(self.reached) - 1)
            prior = (self.accepted[j] + weight * prior) / (self.reached[j] + weight)
            out.append(prior)
        return out

    def rate(self, i: int) -> float:
        """Probability that position ``i`` is accepted given positions before it were."""
        return self.rates(i)[-1]

    def expected_tokens(self, k: int) -> float:
        """Expected tokens per verification with ``k`` drafted, the target's own token included."""
        total, survive = 1.0, 1.0
        for rate in self.rates(k):
            survive *= rate
            total += survive
        return total


@dataclass
class _Probe:
    """A switched-off drafter's probe in progress: steps left, and what verification gave so far."""

    steps: int
    tokens: float = 0.0
    seconds: float = 0.0
    #: Per bucket: the verified nodes' scores summed, and the tokens accepted.
    totals: dict[str, tuple[float, float]] = field(default_factory=dict)


class CostAwarePolicy(DraftLengthPolicy):
    """Draft the k in [0, max_k] maximising expected accepted tokens per second, learned online."""

    name = "cost-aware"
    description = "the k maximising expected tokens per second, from measured t(k) and acceptance"

    #: Draft lengths timed by :meth:`calibrate`; lengths in between are interpolated.
    CALIBRATION_LENGTHS: ClassVar[tuple[int, ...]] = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

    def __init__(
        self,
        max_k: int = 16,
        probe_every: int = 16,
        calibrate: bool = True,
        calibration_rounds: int = 2,
        probe_steps: int = 4,
    ):
        self.max_k = _check_k(max_k, "cost-aware policy max_k")
        #: Time t(k) for a spread of k once, before the first draft. Without it, t(k) is only known for
        #: lengths the policy already chose, and on CPUs t(k) is far from linear (matrix kernels switch
        #: algorithm with the row count: here 2-3 rows cost more than 4-16), so extrapolating from the
        #: first few lengths keeps the policy away from long drafts that are in fact cheap.
        self.calibrate_first = bool(calibrate)
        self.calibration_rounds = _check_k(calibration_rounds, "cost-aware policy calibration_rounds")
        self.calibrated = False
        #: After this many consecutive zero-length choices for one drafter and bucket, draft a little
        #: anyway so acceptance estimates keep tracking the text (costs at most a few percent).
        self.probe_every = _check_k(probe_every, "cost-aware policy probe_every")
        self.cost = VerificationCostModel()
        self.acceptance: dict[tuple[str, str], AcceptanceModel] = {}
        self.draft_seconds_per_token: dict[str, float] = {}
        self.zero_streak: dict[tuple[str, str], int] = defaultdict(int)
        # Probes that find nothing double the wait before the next one (up to 16x), so text where
        # drafting never pays costs almost nothing; an accepted probe resets the wait.
        self.probe_interval: dict[tuple[str, str], int] = {}
        self.probing: set[tuple[str, str]] = set()
        #: Per drafter and bucket: how the drafter's node scores compare with what was accepted.
        self.node_totals: dict[tuple[str, str], tuple[float, float]] = {}
        self.score_scale: dict[tuple[str, str], float] = {}
        self.decay = 0.98
        #: Per cheap drafter: seconds per ``propose`` call (smoothed), whatever it proposed.
        self.draft_seconds_per_call: dict[str, float] = {}
        #: Per scored drafter: tokens per second with its chosen draft, its drafting included, over
        #: plain decoding's (smoothed). Below 1 the drafter is not asked, except to probe, with
        #: the same doubling wait as zero-length probes.
        self.draft_gain: dict[str, float] = {}
        self.skip_streak: dict[str, int] = defaultdict(int)
        self.skip_interval: dict[str, int] = {}
        #: A switched-off drafter's estimates stop changing, since nothing it drafts is verified, so
        #: they cannot tell when its drafts would pay again. A probe measures instead: the drafter
        #: drafts ``probe_steps`` times at the size its own scores suggest, and what verification
        #: accepted over those steps decides whether it is asked again.
        self.probe_steps = _check_k(probe_steps, "cost-aware policy probe_steps")
        self.skip_probes: dict[str, _Probe] = {}

    def _model(self, drafter: str, bucket: str) -> AcceptanceModel:
        key = (drafter, bucket)
        if key not in self.acceptance:
            self.acceptance[key] = AcceptanceModel(self.max_k)
        return self.acceptance[key]

    def expected_rate(self, drafter: str, bucket: str, k: int) -> float:
        """Expected tokens per second when drafting ``k`` tokens now."""
        drafting = self.draft_seconds_per_token.get(drafter, 0.0) * k
        return self._model(drafter, bucket).expected_tokens(k) / (self.cost(k) + drafting)

    def choose(self, drafter: str, bucket: str, max_k: int) -> int:
        max_k = min(max_k, self.max_k)
        if max_k <= 0:
            return 0
        per_token = self.draft_seconds_per_token.get(drafter, 0.0)
        best_k, best = 0, 1.0 / self.cost(0)
        expected, survive = 1.0, 1.0
        for k, rate in enumerate(self._model(drafter, bucket).rates(max_k), start=1):
            survive *= rate
            expected += survive
            value = expected / (self.cost(k) + per_token * k)
            if value > best:
                best_k, best = k, value
        key = (drafter, bucket)
        if best_k == 0:
            self.zero_streak[key] += 1
            if self.zero_streak[key] >= self.probe_interval.get(key, self.probe_every):
                self.zero_streak[key] = 0
                self.probing.add(key)
                return min(2, max_k)
        else:
            self.zero_streak[key] = 0
        return best_k

    def choose_nodes(self, drafter: str, bucket: str, scores: Sequence[float], max_k: int) -> int:
        """The node count maximising expected tokens per second of verification.

        A node's score is the drafter's estimate that its whole path is accepted, and nodes
        at one depth exclude each other, so ``n`` nodes are expected to yield ``1 + c * sum``
        of their scores (the target's own token included); ``c`` rescales the drafter's estimates
        by what verification actually accepted (:meth:`observe_nodes`). Drafting is already paid
        for when this is asked, so only the measured t(n) counts here; whether the drafting pays
        for itself is kept for :meth:`should_propose`. During a probe ``c`` is at least 1: the
        probe asks whether the drafter's own estimates hold again.
        """
        probe = self.skip_probes.get(drafter)
        scale = self.score_scale.get((drafter, bucket), 1.0)
        if probe is not None:
            scale = max(scale, 1.0)
        plain = 1.0 / self.cost(0)
        best_n, best, best_expected = 0, plain, 1.0
        expected = 1.0
        for n, score in enumerate(scores[: min(max_k, self.max_k)], start=1):
            expected += scale * max(0.0, float(score))
            value = expected / self.cost(n)
            if value > best:
                best_n, best, best_expected = n, value, expected
        drafting = self.draft_seconds_per_call.get(drafter)
        if probe is not None:
            probe.seconds += self.cost(best_n) + (drafting or 0.0)
            if best_n == 0:  # nothing is verified, so the step ends here: the target's token alone
                self._probe_step(drafter, bucket, 0.0, 0)
        elif drafting is not None:  # the first proposal's time is not known yet
            self._observe_gain(drafter, best_expected / (self.cost(best_n) + drafting) / plain)
        return best_n

    def _observe_gain(self, drafter: str, gain: float) -> None:
        old = self.draft_gain.get(drafter)
        self.draft_gain[drafter] = gain if old is None else 0.8 * old + 0.2 * gain
        if self.draft_gain[drafter] >= 1.0:
            self.skip_interval.pop(drafter, None)

    def should_propose(self, drafter: str, max_k: int) -> bool:
        """False while a scored drafter's drafting has cost more than its drafts saved, but for probes."""
        if max_k <= 0:
            return False
        if drafter in self.skip_probes:
            return True
        gain = self.draft_gain.get(drafter)
        if gain is None or gain >= 1.0:
            self.skip_streak[drafter] = 0
            return True
        self.skip_streak[drafter] += 1
        interval = self.skip_interval.get(drafter, self.probe_every)
        if self.skip_streak[drafter] < interval:
            return False
        self.skip_streak[drafter] = 0
        self.skip_interval[drafter] = min(16 * self.probe_every, 2 * interval)
        self.skip_probes[drafter] = _Probe(self.probe_steps)
        return True

    def _probe_step(self, drafter: str, bucket: str, predicted: float, accepted: int) -> None:
        """Count one probe step (its verified scores summed to ``predicted``); after the last, the
        tokens per second it measured set the drafter's gain."""
        probe = self.skip_probes[drafter]
        probe.tokens += 1 + accepted
        probe.steps -= 1
        total_predicted, total_actual = probe.totals.get(bucket, (0.0, 0.0))
        probe.totals[bucket] = (total_predicted + predicted, total_actual + accepted)
        if probe.steps > 0:
            return
        del self.skip_probes[drafter]
        gain = probe.tokens / probe.seconds * self.cost(0) if probe.seconds > 0 else 0.0
        self.draft_gain[drafter] = gain
        if gain >= 1.0:
            # The drafter pays again: its score scale restarts from what the probe saw, not from
            # the stretch that switched it off.
            self.skip_interval.pop(drafter, None)
            for seen, (predicted, actual) in probe.totals.items():
                self._set_node_totals((drafter, seen), predicted, actual)

    def _set_node_totals(self, key: tuple[str, str], predicted: float, actual: float) -> None:
        self.node_totals[key] = (predicted, actual)
        # One pseudo-draft at scale 1 keeps the scale defined before any outcome.
        self.score_scale[key] = (actual + 1.0) / (predicted + 1.0)

    def observe_nodes(self, drafter: str, bucket: str, scores: Sequence[float], accepted: int) -> None:
        predicted_now = sum(max(0.0, float(s)) for s in scores)
        predicted, actual = self.node_totals.get((drafter, bucket), (0.0, 0.0))
        # Forgetting as the acceptance model does.
        self._set_node_totals((drafter, bucket), self.decay * predicted + predicted_now, self.decay * actual + accepted)
        if drafter in self.skip_probes:
            self._probe_step(drafter, bucket, predicted_now, accepted)

    def observe_acceptance(self, drafter: str, bucket: str, drafted: int, accepted: int) -> None:
        key = (drafter, bucket)
        self._model(drafter, bucket).observe(drafted, accepted)
        if key in self.probing:
            self.probing.discard(key)
            interval = self.probe_interval.get(key, self.probe_every)
            self.probe_interval[key] = self.probe_every if accepted else min(16 * self.probe_every, 2 * interval)

    def observe_verification(self, drafted: int, seconds: float) -> None:
        self.cost.observe(drafted, seconds)

    def wants_calibration(self) -> bool:
        return self.calibrate_first and not self.calibrated

    def calibrate(self, measure: Callable[[int], float], max_k: int | None = None) -> None:
        """Time every calibration length up to ``max_k`` (rounds interleaved, fastest kept) into the cost model.

        ``max_k`` (from the engine) is the longest verification the model's window allows after
        the prompt; lengths past it are left to the next generation, so a prompt near the window
        neither overflows the positions nor marks the policy calibrated on a partial table.
        """
        top = self.max_k if max_k is None else max(0, min(self.max_k, max_k))
        lengths = sorted({k for k in self.CALIBRATION_LENGTHS if k < top} | {top})
        samples: dict[int, list[float]] = defaultdict(list)
        measure(0)  # the first forward after a prefill pays allocation costs
        for _ in range(self.calibration_rounds):
            for k in lengths:
                samples[k].append(measure(k))
        # Interference only ever adds time, so the fastest round is the best estimate of the cost itself.
        for k, seconds in samples.items():
            self.cost.observe(k, min(seconds))
        self.calibrated = top >= self.max_k

    def observe_drafting(self, drafter: str, drafted: int, seconds: float) -> None:
        old = self.draft_seconds_per_call.get(drafter)
        self.draft_seconds_per_call[drafter] = seconds if old is None else 0.8 * old + 0.2 * seconds
        if drafted <= 0:
            return
        per_token = seconds / drafted
        old = self.draft_seconds_per_token.get(drafter)
        self.draft_seconds_per_token[drafter] = per_token if old is None else 0.8 * old + 0.2 * per_token

    def describe(self) -> dict[str, Any]:
        return {
            "verify_seconds": {k: round(v, 5) for k, v in self.cost.table().items()},
            "acceptance": {
                f"{d}/{b}" if b else d: [round(m.rate(i), 3) for i in range(1, 6)]
                for (d, b), m in sorted(self.acceptance.items())
            },
            "score_scale": {f"{d}/{b}" if b else d: round(v, 3) for (d, b), v in sorted(self.score_scale.items())},
            "draft_gain": {d: round(v, 3) for d, v in sorted(self.draft_gain.items())},
        }


DEFAULT_POLICY = "cost-aware"
POLICY_KIND = "draft-length policy"


def _policy_class(spec: Spec) -> type[DraftLengthPolicy]:
    from crossedge.core import get_registry

    return get_registry("draft_policy").get(spec.name)


def check_policy_spec(spec: str | Spec) -> Spec:
    """Parse a policy spec and check its name and options against the registry, building nothing."""
    from crossedge.core.specs import bind

    parsed = parse_spec(spec, kind=POLICY_KIND)
    bind(parsed, _policy_class(parsed), kind=POLICY_KIND)
    return parsed


def build_policy(spec: str | Spec | DraftLengthPolicy | None) -> DraftLengthPolicy:
    """A policy from ``name[:key=value,...]`` (``constant:k=5``, ``heuristic``, ``cost-aware:max_k=12``).

    Names come from the ``draft_policy`` registry (the ``register_draft_policies`` hook);
    ``None`` gives the default, ``cost-aware``.
    """
    if isinstance(spec, DraftLengthPolicy):
        return spec
    if spec is None:
        return CostAwarePolicy()
    parsed = parse_spec(spec, kind=POLICY_KIND)
    return build(parsed, _policy_class(parsed), kind=POLICY_KIND)
