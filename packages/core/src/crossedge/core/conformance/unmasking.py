"""The conformance suite every unmasking strategy runs by subclassing.

A new strategy gets its tests by declaring one class::

    from crossedge.core.conformance.unmasking import UnmaskingConformance

    class TestMyStrategy(UnmaskingConformance):
        def make_strategy(self):
            return MyStrategy()

The suite needs no model: it decodes blocks against made-up logits through
:func:`crossedge.core.contracts.unmasking.decode_block`, which enforces the contract at every
step, and checks that every block ends with no mask left within its forward budget (a block of
one position too), that the outcome is the same for the same logits, that logits favouring the
mask id never make it decode the mask, that ``describe`` is plain data, and that an unknown
option is refused. Importing this module needs pytest.
"""

from __future__ import annotations

import json

import pytest
import torch

from ..contracts.unmasking import UnmaskingStrategy, decode_block
from ..specs import Spec, SpecError, bind

VOCAB = 13
MASK = VOCAB - 1
EOS = 0


class UnmaskingConformance:
    """Base class of strategy test classes; subclasses implement :meth:`make_strategy`."""

    def make_strategy(self) -> UnmaskingStrategy:
        """A fresh strategy."""
        raise NotImplementedError

    @staticmethod
    def _forward(seed: int, sharp: float = 3.0):
        """A fake model: fixed random logits per (seed, step), sharper at some positions than others."""
        calls = {"n": 0}

        def forward(tokens: torch.Tensor):
            g = torch.Generator().manual_seed(seed * 1000 + calls["n"])
            calls["n"] += 1
            scale = torch.rand(tokens.shape[0], 1, generator=g) * sharp
            return torch.randn(tokens.shape[0], VOCAB, generator=g) * scale, torch.zeros(tokens.shape[0], 4)

        return forward

    def _decode(self, strategy: UnmaskingStrategy, length: int, seed: int):
        tokens = torch.full((length,), MASK)
        return decode_block(strategy, self._forward(seed), tokens, mask_id=MASK, eos_id=EOS)

    @pytest.mark.parametrize("length", [1, 4, 9])
    def test_every_position_is_decoded_within_the_budget(self, length):
        strategy = self.make_strategy()
        for seed in range(4):
            out, forwards = self._decode(strategy, length, seed)
            assert not bool((out == MASK).any()), f"block still masked after decoding: {out.tolist()}"
            assert 1 <= forwards <= length + (strategy.max_edit_steps if strategy.edits else 0)
            assert out.dtype == torch.long and bool(((out >= 0) & (out < VOCAB)).all())

    def test_same_logits_same_block(self):
        first = self._decode(self.make_strategy(), 8, seed=7)
        again = self._decode(self.make_strategy(), 8, seed=7)
        assert torch.equal(first[0], again[0]) and first[1] == again[1]

    def test_logits_favouring_the_mask_never_decode_it(self):
        def forward(tokens):
            logits = torch.zeros(tokens.shape[0], VOCAB)
            logits[:, MASK] = 50.0
            logits[:, 3] = 1.0
            return logits, None

        out, _ = decode_block(self.make_strategy(), forward, torch.full((5,), MASK), mask_id=MASK, eos_id=EOS)
        assert out.tolist() == [3] * 5

    def test_describe_is_plain_data(self):
        described = self.make_strategy().describe()
        assert described["name"] == self.make_strategy().name
        json.dumps(described)

    def test_an_unknown_option_is_refused(self):
        strategy = self.make_strategy()
        with pytest.raises(SpecError, match="no_such_option"):
            bind(Spec(strategy.name, {"no_such_option": "1"}), type(strategy), kind="unmasking strategy")
