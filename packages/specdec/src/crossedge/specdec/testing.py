"""Test helpers, and the core drafter conformance suite run on specdec's engine.

The suite itself lives in :mod:`crossedge.core.conformance.drafter` (a third-party drafter
needs crossedge-core alone to run it). :class:`DrafterConformance` here is that suite with
its ``engine`` fixture replaced by :class:`crossedge.specdec.SpeculativeDecoder` under every
built-in draft-length policy, so the built-in drafters are checked on both verifiers::

    class TestMyDrafter(DrafterConformance):
        def make_drafter(self, target):
            return MyDrafter()

Importing this module needs pytest.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossedge.core.conformance.drafter import CONFORMANCE_PROMPTS, greedy_reference, tiny_target
from crossedge.core.conformance.drafter import DrafterConformance as CoreDrafterConformance

from .engine import SpeculativeDecoder
from .policies import ConstantPolicy, CostAwarePolicy, HeuristicPolicy

__all__ = [
    "CONFORMANCE_PROMPTS",
    "DrafterConformance",
    "greedy_reference",
    "noisy_copy",
    "permuted_byte_tokenizer",
    "permuted_copy",
    "tiny_target",
]

#: Texts the draft-head tests cut their training prompts from (their prompts are this many tokens).
HEAD_TEXTS = [
    "Speculative decoding drafts several tokens cheaply and verifies them in one pass of the large model. " * 6,
    "A quantized linear layer stores int8 weights with one scale per output channel, saving memory. " * 6,
]
HEAD_PROMPT_TOKENS = 12

#: The engine settings the suite runs under: every built-in policy, reference-verifier lengths too.
POLICIES = {
    "constant-k4": lambda: ConstantPolicy(k=4),
    "heuristic": HeuristicPolicy,
    "cost-aware": CostAwarePolicy,
}


def record_proposals(drafter: Any) -> list[Any]:
    """A list that every draft ``drafter`` proposes from now on is appended to (its ``propose`` is wrapped)."""
    proposals: list[Any] = []
    propose = drafter.propose

    def recording(context_ids: Any, k: int) -> Any:
        draft = propose(context_ids, k)
        proposals.append(draft)
        return draft

    drafter.propose = recording
    return proposals


def add_noise(module: Any, scale: float, seed: int = 0) -> Any:
    """``module`` in eval mode after adding seeded Gaussian noise of std ``scale`` to every parameter in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return module.eval()


def noisy_copy(model: Any, scale: float = 0.02, seed: int = 0) -> Any:
    """A draft model: the same architecture and weights plus Gaussian noise, so it agrees often but not always."""
    import copy

    return add_noise(copy.deepcopy(model), scale, seed)


def permuted_byte_tokenizer(seed: int = 0) -> tuple[Any, list[int]]:
    """A byte tokenizer whose 256 byte ids are shuffled: same text, a different vocabulary.

    Returns the tokenizer and ``perm`` with ``perm[i]`` the new id of the byte that
    :func:`crossedge.core.testing.byte_tokenizer` numbers ``i``.
    """
    import random

    from crossedge.core.testing import byte_tokenizer

    perm = list(range(256))
    random.Random(seed).shuffle(perm)
    tokenizer = byte_tokenizer(permutation=perm)
    tokenizer.chat_template = None
    return tokenizer, perm


def permuted_copy(model: Any, perm: list[int]) -> Any:
    """The same model speaking the permuted vocabulary: embedding (and tied head) rows moved by ``perm``."""
    import copy

    draft = copy.deepcopy(model)
    with torch.no_grad():
        weight = draft.get_input_embeddings().weight
        original = weight[: len(perm)].clone()
        weight[torch.tensor(perm)] = original
        head = draft.get_output_embeddings().weight
        if head.data_ptr() != weight.data_ptr():
            original_head = head[: len(perm)].clone()
            head[torch.tensor(perm)] = original_head
    return draft


class DrafterConformance(CoreDrafterConformance):
    """The core drafter suite, verified by specdec's engine under each built-in policy."""

    @pytest.fixture(params=list(POLICIES))
    def engine(self, request: Any) -> Any:
        """Greedy generation with :class:`SpeculativeDecoder` under one policy."""
        make_policy = POLICIES[request.param]

        def run(model: Any, tokenizer: Any, drafters: list[Any], input_ids: Any, max_new_tokens: int) -> list[int]:
            decoder = SpeculativeDecoder(model, drafters, make_policy(), tokenizer=tokenizer)
            result = decoder.generate(input_ids, max_new_tokens)
            assert result.stats.new_tokens == len(result.tokens)
            assert result.stats.mean_accepted >= 1.0
            return result.tokens

        return run

    def test_stats_account_for_every_draft(self, target: Any) -> None:
        """The engine's per-drafter statistics add up to its per-position ones.

        Per-position counts are per depth, so a token tree adds its depth there and its
        node count to the drafter's ``drafted``; for chains the two are equal.
        """
        model, tokenizer = target
        input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
        chain = self._chain(model)
        trees: list[bool] = []
        for drafter in chain:
            propose = drafter.propose

            def noting_trees(context_ids: Any, k: int, propose: Any = propose) -> Any:
                draft = propose(context_ids, k)
                trees.append(draft.is_tree)
                return draft

            drafter.propose = noting_trees
        decoder = SpeculativeDecoder(model, chain, ConstantPolicy(k=4), tokenizer=tokenizer)
        stats = decoder.generate(input_ids, self.max_new_tokens).stats
        drafted = sum(s.drafted for s in stats.drafters.values())
        accepted = sum(s.accepted for s in stats.drafters.values())
        if any(trees):
            assert sum(stats.drafted_at) <= drafted
        else:
            assert drafted == sum(stats.drafted_at)
        assert accepted == sum(stats.accepted_at)
        # Every forward after the first yields accepted drafts plus exactly one target token.
        assert stats.new_tokens <= stats.target_forwards + accepted
