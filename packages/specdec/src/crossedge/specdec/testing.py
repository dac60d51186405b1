"""Test helpers and the conformance suite every drafter runs by subclassing.

A new drafter gets its greedy-identity tests by declaring one class::

    class TestMyDrafter(DrafterConformance):
        def make_drafter(self, target):
            return MyDrafter()

The suite checks, on tiny random Llama and GPT-2 targets, under every built-in
draft-length policy, that speculative greedy output is token-identical to
``model.generate(do_sample=False)``. Importing this module needs pytest.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossedge.core.testing import tiny_causal_lm

from .drafters import Drafter
from .engine import SpeculativeDecoder

#: Prompts with repeated structure so that copy-style drafters get to draft.
CONFORMANCE_PROMPTS = (
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return",
    "the cat sat on the mat. the cat sat on the",
)


def tiny_target(arch: str, seed: int = 1) -> tuple[Any, Any]:
    """A tiny random target whose greedy output varies (large init, so not one repeated token)."""
    return tiny_causal_lm(arch, seed=seed, initializer_range=0.15, layers=2, hidden=32)


def noisy_copy(model: Any, scale: float = 0.02, seed: int = 0) -> Any:
    """A draft model: the same architecture and weights plus Gaussian noise, so it agrees often but not always."""
    import copy

    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    draft.eval()
    return draft


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


def greedy_reference(model: Any, input_ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """New tokens of plain transformers greedy decoding, up to and including EOS."""
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
        )
    tokens = out[0, input_ids.shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


class DrafterConformance:
    """Base class of drafter test classes; subclasses implement :meth:`make_drafter`."""

    max_new_tokens = 32

    def make_drafter(self, target: Any) -> Drafter | list[Drafter]:
        """A fresh drafter (or chain) for the given target model."""
        raise NotImplementedError

    @pytest.fixture(params=["llama", "gpt2"], scope="class")
    def target(self, request):
        model, tokenizer = tiny_target(request.param)
        return model, tokenizer

    @pytest.mark.parametrize(
        ("policy", "prompt"),
        [
            ("constant:k=4", CONFORMANCE_PROMPTS[0]),
            ("heuristic", CONFORMANCE_PROMPTS[1]),
            ("cost-aware", CONFORMANCE_PROMPTS[0]),
            ("cost-aware", CONFORMANCE_PROMPTS[1]),
        ],
    )
    def test_greedy_identity(self, target, policy, prompt):
        model, tokenizer = target
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = greedy_reference(model, input_ids, self.max_new_tokens)
        decoder = SpeculativeDecoder(model, self.make_drafter(model), policy)
        result = decoder.generate(input_ids, self.max_new_tokens)
        assert result.tokens == reference
        assert result.stats.new_tokens == len(reference)
        assert result.stats.mean_accepted >= 1.0

    def test_stats_account_for_every_draft(self, target):
        model, tokenizer = target
        input_ids = tokenizer(CONFORMANCE_PROMPTS[0], return_tensors="pt").input_ids
        decoder = SpeculativeDecoder(model, self.make_drafter(model), "constant:k=4")
        stats = decoder.generate(input_ids, self.max_new_tokens).stats
        drafted = sum(s.drafted for s in stats.drafters.values())
        accepted = sum(s.accepted for s in stats.drafters.values())
        assert drafted == sum(stats.drafted_at)
        assert accepted == sum(stats.accepted_at)
        # Every forward after the first yields accepted drafts plus exactly one target token.
        assert stats.new_tokens <= stats.target_forwards + accepted
