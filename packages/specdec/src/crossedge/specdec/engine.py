"""The speculative decoding engine: draft, verify in one target forward, roll back, stream.

Behaviour at the edges (documented here and in docs/specdec.md):

* an empty prompt, ``max_new_tokens <= 0`` or a batch of more than one row raise
  :class:`SpecdecError`; a prompt that fills the context window raises
  :class:`PromptTooLongError`;
* when prompt plus ``max_new_tokens`` exceed the window, generation stops at the
  window with ``stop_reason == "context"``;
* an end-of-sequence token ends generation: it is emitted, nothing after it is,
  even when a draft continued past it;
* NaN, +inf or all-masked logits raise :class:`NonFiniteLogitsError`;
* drafts and the cost-aware policy's calibration stay inside the window (a GPT-2-type
  model has no positions past ``n_positions``).

Drafters get a :class:`crossedge.core.contracts.drafter.DraftContext` in ``begin``: the
target, the tokenizer, the run's sampler and a view of the target's cache. When a drafter
asks the view for a layer's hidden states, the engine runs its forwards with
``output_hidden_states`` and records them there; nothing is hooked onto the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter, Riders, TargetCacheView
from crossedge.core.contracts.policy import DraftLengthPolicy

from .calibration import StoredVerificationCosts
from .drafters import build_chain
from .errors import PromptTooLongError, SpecdecError
from .policies import build_policy
from .sampling import (
    RunSampler,
    SamplingConfig,
    check_finite,
    process_logits,
    sample,
    verify_sampled,
    verify_tree_sampled,
)

#: The engine's clock for drafting and verification times (a test may replace it).
clock = time.perf_counter


@dataclass
class DrafterStats:
    """What one drafter proposed and how much of it the target kept."""

    proposals: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class RunStats:
    """Metrics of one generation."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    target_forwards: int = 0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)
    drafters: dict[str, DrafterStats] = field(default_factory=dict)
    stop_reason: str = ""

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second of decoding (prefill included)."""
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        """New tokens per target forward: the target's own token included, so vanilla decoding is 1.00."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        """Share of drafted tokens accepted at each draft position (1-based order)."""
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at, strict=True)]

    def record(self, drafter: str, drafted: int, accepted: int, depth: int | None = None) -> None:
        """Count one verified draft of ``drafted`` tokens (a tree's nodes, ``depth`` its deepest level)."""
        depth = drafted if depth is None else depth
        while len(self.drafted_at) < depth:
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for i in range(depth):
            self.drafted_at[i] += 1
            if i < accepted:
                self.accepted_at[i] += 1
        entry = self.drafters.setdefault(drafter, DrafterStats())
        entry.proposals += 1
        entry.drafted += drafted
        entry.accepted += accepted

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for JSON output."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens_per_s,
            "target_forwards": self.target_forwards,
            "mean_accepted": self.mean_accepted,
            "acceptance_by_position": self.acceptance_by_position,
            "drafters": {
                name: {
                    "proposals": s.proposals,
                    "drafted": s.drafted,
                    "accepted": s.accepted,
                    "acceptance_rate": s.acceptance_rate,
                    "seconds": s.seconds,
                }
                for name, s in self.drafters.items()
            },
            "stop_reason": self.stop_reason,
        }


@dataclass
class GenerationResult:
    """The new tokens of one generation and its metrics."""

    tokens: list[int]
    stats: RunStats


class TokenStream:
    """Iterator over generated token ids as they are accepted; ``stats`` fills in as it runs."""

    def __init__(self, iterator: Iterator[int], stats: RunStats):
        self._iterator = iterator
        self.stats = stats
        self.tokens: list[int] = []

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        token = next(self._iterator)
        self.tokens.append(token)
        return token

    def result(self) -> GenerationResult:
        """Run to the end (if not yet) and return everything."""
        for _ in self:
            pass
        return GenerationResult(self.tokens, self.stats)


def _eos_ids(model: Any, eos_token_id: int | Sequence[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        # Same source as transformers' generate: the generation config when the model has one.
        config = getattr(model, "generation_config", None) or model.config
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


def _prompt_list(input_ids: Any) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise SpecdecError(
                    f"batch size {input_ids.shape[0]} is not supported yet: pass one prompt (shape 1 x n) at a time"
                )
            input_ids = input_ids[0]
        return [int(t) for t in input_ids.tolist()]
    return [int(t) for t in input_ids]


def check_request(prompt: Sequence[int], max_new_tokens: int | None, window: int | None) -> None:
    """Refuse, in one line, an empty prompt, no new tokens, or a prompt that fills the context window."""
    if not prompt:
        raise SpecdecError("empty prompt: give at least one token (a BOS token will do)")
    if max_new_tokens is None or max_new_tokens <= 0:
        raise SpecdecError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if window is not None and len(prompt) >= window:
        raise PromptTooLongError(
            f"prompt has {len(prompt)} tokens but the model's context window is {window}: "
            f"shorten the prompt to at most {window - 1} tokens"
        )


def record_outcome(policy: DraftLengthPolicy, stats: RunStats, drafter: Drafter, draft: Draft, accepted: int) -> None:
    """Tell the statistics, the policy and the drafter how a verified draft fared (chains and trees)."""
    depth = max(draft.depths())
    stats.record(drafter.name, len(draft), accepted, depth=depth)
    policy.observe_acceptance(drafter.name, draft.bucket, depth, accepted)
    if draft.scores is not None:
        policy.observe_nodes(drafter.name, draft.bucket, draft.scores, accepted)
    drafter.feedback(accepted)


def rider_of(drafters: Sequence[Drafter]) -> Drafter | None:
    """The one drafter of a chain that hangs riders on verification forwards (PPD), or ``None``."""
    riding = [d for d in drafters if type(d).ride is not Drafter.ride]
    if len(riding) > 1:
        names = ", ".join(d.name for d in riding)
        raise SpecdecError(f"only one drafter of a chain may ride the verification forward, got {names}: keep one")
    return riding[0] if riding else None


def concurrent_drafters(drafters: Sequence[Drafter]) -> list[Drafter]:
    """The drafters of a chain that work while the target verifies (they implement ``verifying``)."""
    return [d for d in drafters if type(d).verifying is not Drafter.verifying]


def propose_draft(
    drafters: Sequence[Drafter], policy: DraftLengthPolicy, context: list[int], budget: int, stats: RunStats
) -> tuple[Draft | None, Drafter | None]:
    """The first non-empty draft of at most ``budget`` tokens from ``drafters``, sized by ``policy``."""
    for drafter in drafters:
        # The engine's clock is the one measure of drafting time: it feeds the statistics and the policy.
        start = clock()
        if drafter.cheap:
            cap = min(budget, policy.max_k)
            if not policy.should_propose(drafter.name, cap):
                continue
            proposal = drafter.propose(context, cap)
            room = min(len(proposal), cap)
            if proposal.scores is not None:
                k = policy.choose_nodes(drafter.name, proposal.bucket, proposal.scores[:room], room)
            else:
                k = policy.choose(drafter.name, proposal.bucket, room)
            proposal = proposal.truncated(k)
        else:
            k = policy.choose(drafter.name, "", budget)
            if k <= 0:
                continue
            proposal = drafter.propose(context, k)
            proposal = proposal.truncated(k)
        seconds = clock() - start
        stats.drafters[drafter.name].seconds += seconds
        policy.observe_drafting(drafter.name, len(proposal), seconds)
        if len(proposal):
            return proposal, drafter
    return None, None


class SpeculativeDecoder:
    """Lossless speculative decoding of a transformers causal LM with a chain of drafters.

    ``drafters`` is a spec string (``"copy"``, ``"copy,draft-model:model=NAME"``,
    ``"copy@heuristic"``, ``"none"``), a drafter, a list of drafters, or ``None`` for
    plain decoding. ``tokenizer`` (the target's) is handed to drafters in their
    :class:`DraftContext` (cross-vocab needs it). ``policy`` is a draft-length policy or
    its spec (``"constant:k=5"``, ``"heuristic"``, ``"cost-aware"``); a ``@policy`` in the
    drafter spec takes precedence, so ``policy`` is the default for specs naming none.
    The policy keeps what it learned across calls, so a decoder reused over many prompts
    keeps its latency model. ``calibration_cache`` (``use``, ``refresh`` or ``off``) says
    whether the policy's calibration timings come from, and go to, this machine's stored
    costs for this decoder (:mod:`crossedge.specdec.calibration`).
    """

    def __init__(
        self,
        model: Any,
        drafters: str | Drafter | Sequence[Drafter] | None = None,
        policy: str | DraftLengthPolicy | None = None,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        tokenizer: Any = None,
        calibration_cache: str = "use",
    ):
        self.model = model
        #: The policy's calibration timings, kept on disk per decoder and machine (see :mod:`.calibration`).
        self.stored_costs = StoredVerificationCosts(model, calibration_cache)
        self.tokenizer = tokenizer
        if isinstance(drafters, str):
            drafters, own_policy = build_chain(drafters)
            if own_policy is not None:
                policy = own_policy
        elif isinstance(drafters, Drafter):
            drafters = [drafters]
        self.drafters: list[Drafter] = list(drafters or [])
        self.policy = build_policy(policy)
        self.eos = _eos_ids(model, eos_token_id)
        self.window: int | None = getattr(model.config, "max_position_embeddings", None)

    # ----------------------------------------------------------------- public

    def stream(self, input_ids: Any, max_new_tokens: int, sampling: SamplingConfig | None = None) -> TokenStream:
        """Start generating; iterate the returned stream to receive tokens as they are accepted."""
        prompt = _prompt_list(input_ids)
        check_request(prompt, max_new_tokens, self.window)
        sampling = sampling or SamplingConfig()
        stats = RunStats(prompt_tokens=len(prompt))
        limit = max_new_tokens
        if self.window is not None:
            limit = min(limit, self.window - len(prompt))
        iterator = self._decode(prompt, limit, max_new_tokens, sampling, stats)
        return TokenStream(iterator, stats)

    def generate(self, input_ids: Any, max_new_tokens: int, sampling: SamplingConfig | None = None) -> GenerationResult:
        """Generate to the end and return the new tokens with the run's metrics."""
        return self.stream(input_ids, max_new_tokens, sampling).result()

    # --------------------------------------------------------------- decoding

    def _pick(self, logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> int:
        if sampling.greedy:
            return int(logits.argmax())
        return sample(process_logits(logits, sampling), generator)

    def _decode(
        self, prompt: list[int], limit: int, requested: int, sampling: SamplingConfig, stats: RunStats
    ) -> Iterator[int]:
        from transformers import DynamicCache

        model = self.model
        generator = None if sampling.greedy else sampling.generator()
        cache = DynamicCache(config=model.config)
        # Sliding-window layers forget old keys unless told to keep them until the next crop,
        # which speculative rollback needs; crop(0) after each forward then trims them.
        self._trim_always = any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", ()))
        if self._trim_always:
            cache.activate_past_recording()
        self._view = TargetCacheView(cache)
        draft_context = DraftContext(
            target=model,
            tokenizer=self.tokenizer,
            sampler=RunSampler(sampling, generator),
            cache=self._view,
            window=self.window,
        )
        for drafter in self.drafters:
            drafter.begin(draft_context)
        for drafter in self.drafters:
            stats.drafters.setdefault(drafter.name, DrafterStats())
        self._rider = rider_of(self.drafters)
        self._concurrent = concurrent_drafters(self.drafters)
        context = list(prompt)
        eos = self.eos
        started = clock()

        with torch.inference_mode():
            logits = self._forward(model, prompt, 1)[-1]
            token = self._pick(logits, sampling, generator)
            stats.target_forwards = 1
            if self.drafters and self.policy.wants_calibration():
                # Calibration feeds k + 1 tokens after the prompt: never past the last position.
                room = None if self.window is None else self.window - len(prompt) - 1
                live = lambda k: self._time_verification(model, cache, token, k)  # noqa: E731
                self.policy.calibrate(self.stored_costs.measure(live), room)
                self.stored_costs.save()

        pending = [token]
        emitted = 0
        while True:
            for tok in pending:
                context.append(tok)
                emitted += 1
                stats.new_tokens = emitted
                # The engine clock stops while the consumer handles the token.
                stats.seconds += clock() - started
                yield tok
                started = clock()
                stop = None
                if tok in eos:
                    stop = "eos"
                elif emitted >= limit:
                    stop = "length" if limit == requested else "context"
                if stop is not None:
                    for drafter in self.drafters:
                        drafter.end(context)
                    stats.seconds += clock() - started
                    stats.stop_reason = stop
                    return
            with torch.inference_mode():
                pending = self._step(
                    model, cache, context, pending[-1], limit - emitted - 1, sampling, generator, stats
                )
            stats.target_forwards += 1

    def _forward(
        self, model: Any, feed: list[int], keep: int, parents: list[int] | None = None, riders: Riders | None = None
    ) -> torch.Tensor:
        """One target forward over ``feed`` (a tree after its first token when ``parents`` is given, with the
        riders' rows after the kept ones) on this generation's cache, through the drafters' cache view."""
        logits = self._view.forward(model, feed, keep, parents, riders).logits[0]
        check_finite(logits, "the target model")
        return logits

    def _time_verification(self, model: Any, cache: Any, token: int, k: int) -> float:
        """Seconds of one verification forward of ``k`` dummy drafted tokens; the cache is left as it was."""
        if self.window is not None and cache.get_seq_length() + k + 1 > self.window:
            raise SpecdecError(
                f"cannot time a verification of {k} tokens after {cache.get_seq_length()}: the window is {self.window}"
            )
        start = clock()
        out = model(input_ids=torch.full((1, k + 1), token), cache=cache, use_cache=True, logits_to_keep=k + 1)
        out.logits[0].argmax(dim=-1).tolist()
        seconds = clock() - start
        cache.crop(-(k + 1))
        return seconds

    def _draft(self, context: list[int], budget: int, stats: RunStats) -> tuple[Draft | None, Drafter | None]:
        return propose_draft(self.drafters, self.policy, context, budget, stats)

    def _step(
        self,
        model: Any,
        cache: Any,
        context: list[int],
        last: int,
        budget: int,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        stats: RunStats,
    ) -> list[int]:
        """One draft-and-verify step; returns the tokens to emit (accepted drafts + one target token)."""
        draft, drafter = (None, None) if budget <= 0 or not self.drafters else self._draft(context, budget, stats)
        riders = None
        for concurrent in self._concurrent:
            concurrent.verifying(context, draft if draft is not None else Draft([]))
        if self._rider is not None:
            riders = self._rider.ride(context, draft if draft is not None else Draft([]))
        if (draft is not None and draft.is_tree) or riders is not None:
            return self._step_tree(model, cache, last, draft, drafter, sampling, generator, stats, riders)
        drafted = draft.tokens if draft is not None else []
        k = len(drafted)
        start = clock()
        logits = self._forward(model, [last, *drafted], k + 1)
        if sampling.greedy:
            picks = logits.argmax(dim=-1).tolist()
            accepted = 0
            while accepted < k and drafted[accepted] == picks[accepted]:
                accepted += 1
            next_token = picks[accepted]
        else:
            probs = process_logits(logits, sampling)
            accepted, next_token = verify_sampled(probs, drafted, draft.probs if draft else None, generator)
        self.policy.observe_verification(k, clock() - start)
        if accepted < k or self._trim_always:
            # The cache holds keys for every drafted token; drop the rejected tail.
            cache.crop(accepted - k)
        if k:
            record_outcome(self.policy, stats, drafter, draft, accepted)
        return [*drafted[:accepted], next_token]

    def _step_tree(
        self,
        model: Any,
        cache: Any,
        last: int,
        draft: Draft,
        drafter: Drafter,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        stats: RunStats,
        riders: Riders | None = None,
    ) -> list[int]:
        """Verify a token tree (or a chain carrying riders) in one forward, keep the longest accepted path and
        its cache; riders' logits go back to the drafter that hung them."""
        draft = draft if draft is not None else Draft([])
        tokens = draft.tokens
        nodes = len(tokens)
        extra = len(riders) if riders is not None else 0
        start = clock()
        logits = self._forward(model, [last, *tokens], nodes + 1, draft.parent_list(), riders)
        logits, rider_logits = logits[: nodes + 1], logits[nodes + 1 :]
        if sampling.greedy:
            path, next_token = draft.greedy_path(logits.argmax(dim=-1).tolist())
        elif nodes:
            path, next_token = verify_tree_sampled(process_logits(logits, sampling), draft, generator)
        else:
            path, next_token = [], self._pick(logits[0], sampling, generator)
        self.policy.observe_verification(nodes, clock() - start)
        # Keep the fed last token and the path; a tree's rejected branches may sit between path nodes.
        self._view.keep_fed(nodes + 1 + extra, [0, *(node + 1 for node in path)])
        if self._trim_always:
            cache.crop(0)
        if riders is not None:
            self._rider.rode(rider_logits, path)
        if nodes:
            record_outcome(self.policy, stats, drafter, draft, len(path))
        return [*(tokens[node] for node in path), next_token]
