"""The unmasking-strategy contract: decode_block's rules, the conformance suite, and spec building."""

import pytest
import torch

from crossedge.core.conformance.unmasking import UnmaskingConformance
from crossedge.core.contracts.unmasking import (
    BlockState,
    UnmaskingError,
    UnmaskingStrategy,
    build_unmasking,
    decode_block,
)
from crossedge.core.errors import PluginError
from crossedge.core.hookspecs import hookimpl
from crossedge.core.plugins import registered
from crossedge.core.specs import SpecError

MASK, EOS, VOCAB = 9, 0, 10


class LeftToRight(UnmaskingStrategy):
    """Decode the leftmost masked position with its top token, one per forward."""

    name = "left-to-right"

    def __init__(self, width: int = 1):
        self.width = width

    def step(self, state):
        ids, _ = state.confidence()
        out = state.tokens.clone()
        where = state.masked.nonzero().squeeze(1)[: self.width]
        out[where] = ids[where]
        return out


class TestLeftToRight(UnmaskingConformance):
    def make_strategy(self):
        return LeftToRight()


class Idle(UnmaskingStrategy):
    name = "idle"

    def step(self, state):
        return state.tokens.clone()


class Rewrites(LeftToRight):
    name = "rewrites"

    def step(self, state):
        out = super().step(state)
        out[0] = (int(out[0]) + 1) % MASK if not bool(state.masked[0]) else out[0]
        return out


class Flipper(UnmaskingStrategy):
    """Edits forever: every post-edit forward changes position 0."""

    name = "flipper"
    edits = True
    max_edit_steps = 3

    def step(self, state):
        out = torch.where(state.masked, torch.ones_like(state.tokens), state.tokens)
        if not bool(state.masked.any()):
            out[0] = 1 + (int(out[0]) % 5)
        return out


def _forward(tokens):
    logits = torch.zeros(tokens.shape[0], VOCAB)
    logits[:, 4] = 2.0
    return logits, None


def test_decode_block_spends_one_forward_per_position_for_a_one_per_step_strategy():
    out, forwards = decode_block(LeftToRight(), _forward, torch.full((5,), MASK), mask_id=MASK, eos_id=EOS)
    assert out.tolist() == [4] * 5 and forwards == 5
    out, forwards = decode_block(LeftToRight(width=2), _forward, torch.full((5,), MASK), mask_id=MASK, eos_id=EOS)
    assert forwards == 3


def test_a_block_with_nothing_masked_costs_no_forward():
    out, forwards = decode_block(LeftToRight(), _forward, torch.tensor([1, 2, 3]), mask_id=MASK, eos_id=EOS)
    assert out.tolist() == [1, 2, 3] and forwards == 0


def test_a_step_that_fills_nothing_is_refused():
    with pytest.raises(UnmaskingError, match="filled no masked position"):
        decode_block(Idle(), _forward, torch.full((3,), MASK), mask_id=MASK, eos_id=EOS)


def test_changing_decoded_tokens_needs_edits():
    with pytest.raises(UnmaskingError, match="edits = False"):
        decode_block(Rewrites(), _forward, torch.full((3,), MASK), mask_id=MASK, eos_id=EOS)


def test_post_edit_forwards_are_bounded():
    out, forwards = decode_block(Flipper(), _forward, torch.full((3,), MASK), mask_id=MASK, eos_id=EOS)
    assert forwards == 1 + Flipper.max_edit_steps and not bool((out == MASK).any())


def test_wrong_shapes_and_ids_are_refused():
    state = BlockState(torch.full((3,), MASK), torch.zeros(3, VOCAB), MASK, EOS, 0)
    from crossedge.core.contracts.unmasking import check_step

    with pytest.raises(UnmaskingError, match="must return"):
        check_step(LeftToRight(), state, torch.zeros(4, dtype=torch.long))
    with pytest.raises(UnmaskingError, match="outside the vocabulary"):
        check_step(LeftToRight(), state, torch.tensor([50, MASK, MASK]))


class StrategyPlugin:
    @hookimpl
    def register_unmasking_strategies(self, register):
        register(LeftToRight, aliases=("ltr",))
        register(Idle(), name="idle-instance")


def test_specs_build_registered_strategies():
    with registered(StrategyPlugin(), name="strategy-plugin"):
        built = build_unmasking("ltr:width=3")
        assert isinstance(built, LeftToRight) and built.width == 3
        with pytest.raises(SpecError, match="no_such"):
            build_unmasking("left-to-right:no_such=1")
        with pytest.raises(PluginError, match="idle-instance"):
            build_unmasking("idle-instance")
