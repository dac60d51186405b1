"""Logit processing and the exact speculative rejection sampler.

Target probabilities ``p`` and draft probabilities ``q`` must come out of the same
processing (temperature, then top-k, then top-p): accepting with ``min(1, p/q)``
and resampling from ``norm(max(0, p - q))`` only reproduces the target's sampling
distribution when both sides describe the distribution that is actually sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crossedge.core.contracts.drafter import Draft, Sampler
from crossedge.core.contracts.drafter import check_finite as core_check_finite

from .errors import NonFiniteLogitsError, SpecdecError


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are chosen: greedy when ``temperature`` is 0, else sampled after top-k/top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.temperature != self.temperature:
            raise SpecdecError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise SpecdecError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SpecdecError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when decoding picks the argmax."""
        return self.temperature == 0.0

    def generator(self) -> torch.Generator:
        """A fresh CPU random generator, seeded when ``seed`` is set."""
        gen = torch.Generator()
        if self.seed is not None:
            gen.manual_seed(self.seed)
        else:
            gen.seed()
        return gen


def check_finite(logits: torch.Tensor, where: str) -> None:
    """Core's check (NaN, +inf or a row of only -inf), raising specdec's :class:`NonFiniteLogitsError`."""
    core_check_finite(logits, where, NonFiniteLogitsError)


def process_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Probabilities (float32, last dim normalized) after temperature, top-k and top-p."""
    logits = logits.float() / config.temperature
    vocab = logits.shape[-1]
    if 0 < config.top_k < vocab:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # A token is dropped when the tokens ranked above it already reach top_p; the first always stays.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop_sorted = before >= config.top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


class RunSampler(Sampler):
    """The sampler the engine hands drafters: the run's :class:`SamplingConfig` and random generator."""

    def __init__(self, config: SamplingConfig | None = None, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.config = config or SamplingConfig()
        self.greedy = self.config.greedy

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and top-p as the target's logits get them."""
        return process_logits(logits, self.config)

    def draw(self, logits: torch.Tensor, where: str) -> tuple[int, torch.Tensor | None]:
        """As :meth:`Sampler.draw`, raising specdec's :class:`NonFiniteLogitsError`."""
        check_finite(logits, where)
        return super().draw(logits, where)


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from a probability vector."""
    return int(torch.multinomial(probs, 1, generator=generator))


def verify_sampled(
    target_probs: torch.Tensor,
    draft_tokens: Sequence[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[int, int]:
    """Exact speculative rejection sampling over one draft chain.

    ``target_probs`` has ``k + 1`` rows (row ``i`` is the target distribution for
    draft position ``i``, the last row is for the bonus token); ``draft_probs`` has
    ``k`` rows, or is ``None`` for a deterministic drafter (a point mass on each
    drafted token). Returns ``(number accepted, next token)`` where the next token
    is the resampled correction or, when everything was accepted, the bonus token.
    """
    path, next_token = verify_tree_sampled(target_probs, Draft(list(draft_tokens), draft_probs), generator)
    return len(path), next_token


def verify_tree_sampled(
    target_probs: torch.Tensor,
    draft: Draft,
    generator: torch.Generator,
) -> tuple[list[int], int]:
    """Exact multi-candidate rejection sampling over a token tree (SpecInfer's).

    ``target_probs`` row ``j`` is the target's processed distribution after fed token ``j``
    (0 = the last context token, ``i + 1`` = node ``i``); ``draft.probs`` row ``i`` is the
    distribution node ``i`` was drawn from, ``None`` for point masses. At each node the
    children are tried in order: a child is accepted with ``min(1, p(x) / q(x))``; on a
    rejection ``p`` becomes ``norm(max(0, p - q))`` (a point mass just removes its token)
    and the next child is tried against it. When no child is accepted the next token is
    drawn from what is left of ``p``. Each step is one exact speculative-sampling step
    against the current ``p``, so the emitted tokens follow the target's distribution as
    long as sampled siblings are independent draws from their ``q``. Returns the accepted
    node indices and the next token.
    """
    children, tokens, draft_probs = draft.children(), draft.tokens, draft.probs
    node, path = -1, []
    while True:
        p = target_probs[node + 1]
        for child in children.get(node, ()):
            token = tokens[child]
            q_x = 1.0 if draft_probs is None else float(draft_probs[child, token])
            # q_x == 0 cannot happen for a token the drafter sampled, but a buggy drafter must not divide by zero.
            accept = 1.0 if q_x <= 0.0 else min(1.0, float(p[token]) / q_x)
            if float(torch.rand((), generator=generator)) < accept:
                path.append(child)
                node = child
                break
            if draft_probs is None:
                residual = p.clone()
                residual[token] = 0.0
            else:
                residual = (p - draft_probs[child]).clamp_min(0.0)
            total = float(residual.sum())
            # total == 0 only when p == q up to rounding, where rejection has probability ~0; p is then exact.
            if total > 0:
                p = residual / total
        else:
            return path, sample(p, generator)
