"""The unmasking-strategy contract: which positions of a masked diffusion LM's block to decode next.

A diffusion LM decodes an answer canvas in blocks, left to right; inside a block every forward
predicts all positions at once and a strategy decides what to keep. After each forward the
decoder hands the strategy a :class:`BlockState` (the block's current tokens, with the mask id
where still masked, and the forward's logits for the block) and the strategy returns the
block's new tokens. Rules the decoder checks, with a :class:`UnmaskingError` naming the
strategy when one is broken:

- the returned tensor has the block's shape and holds token ids (the mask id only where a
  position stays masked);
- while masked positions remain, each step fills at least one of them, so decoding ends;
- a strategy with ``edits = False`` never changes a position it already decoded. A strategy with
  ``edits = True`` may rewrite decoded tokens (LLaDA2.1's token-to-token edits); once its block
  has no mask left the decoder keeps calling it, one forward each, until it returns the block
  unchanged or :attr:`UnmaskingStrategy.max_edit_steps` post-edit forwards were spent.

A strategy that sets ``stop_at_eos`` has the decoder end the canvas after the block in which it
decoded end-of-text: the positions after it become end-of-text without forwards.

A strategy is built from a spec (``low-confidence:k=2``, ``threshold:tau=0.9``, docs/specs.md):
its options are ``__init__`` keyword arguments with type hints and defaults. It may keep state
within a block (``begin_block`` is called before each one). Register the class through
``register_unmasking_strategies``; the conformance suite is
:mod:`crossedge.core.conformance.unmasking`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..errors import CrossedgeError

if TYPE_CHECKING:
    from ..specs import Spec


class UnmaskingError(CrossedgeError, ValueError):
    """A strategy returned tokens that break the contract, or was built with bad options."""


@dataclass
class BlockState:
    """What a strategy sees after one forward: the block's tokens and the forward's view of them."""

    #: (L,) token ids of the block; ``mask_id`` where a position is still masked.
    tokens: torch.Tensor
    #: (L, V) logits of this forward at the block's positions (after the decoder's processing).
    logits: torch.Tensor
    mask_id: int
    eos_id: int
    #: Forwards already spent on this block before this one (0 on the block's first forward).
    step: int
    #: Index of this block in the canvas and the number of blocks.
    block: int = 0
    blocks: int = 1
    #: (L, H) last hidden states at the block's positions, for strategies that learn from them.
    hidden: torch.Tensor | None = None

    @property
    def masked(self) -> torch.Tensor:
        """(L,) True where the block is still masked."""
        return self.tokens == self.mask_id

    def confidence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L,) the most probable token at each position and its probability."""
        probs = torch.softmax(self.logits.float(), dim=-1)
        top, ids = probs.max(dim=-1)
        return ids, top


class UnmaskingStrategy:
    """Base class: ``step(state)`` returns the block's new tokens (L,)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: Whether the strategy may rewrite tokens it already decoded (then post-edit forwards follow).
    edits: ClassVar[bool] = False
    #: The most post-edit forwards a block gets once it has no mask left (editing strategies).
    max_edit_steps: int = 0
    #: Whether the decoder ends the canvas after the block in which this strategy decoded
    #: end-of-text (the rest becomes end-of-text without forwards), as in Learn2PD.
    stop_at_eos: bool = False

    def begin_block(self, length: int) -> None:
        """Called before the first forward of each block of ``length`` positions."""

    def step(self, state: BlockState) -> torch.Tensor:
        """The block's tokens after this forward: (L,) ids, ``state.mask_id`` where still masked."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(state)")

    def describe(self) -> dict[str, Any]:
        """Plain data naming the strategy and its options (for reports)."""
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def check_step(strategy: UnmaskingStrategy, state: BlockState, new: Any) -> torch.Tensor:
    """Refuse a step result that breaks the contract; returns it as a long tensor."""
    label = f"unmasking strategy {strategy.name or type(strategy).__name__!r}"
    if not isinstance(new, torch.Tensor) or tuple(new.shape) != tuple(state.tokens.shape):
        shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        want = tuple(state.tokens.shape)
        raise UnmaskingError(f"{label} returned {shape}; step() must return the block's {want} ids")
    new = new.long()
    vocab = state.logits.shape[-1]
    if bool(((new < 0) | (new >= max(vocab, state.mask_id + 1))).any()):
        raise UnmaskingError(f"{label} returned ids outside the vocabulary of {vocab}")
    was = state.masked
    if bool(was.any()) and not bool((was & (new != state.mask_id)).any()):
        raise UnmaskingError(f"{label} filled no masked position; each step must decode at least one")
    if not strategy.edits and bool((~was & (new != state.tokens)).any()):
        raise UnmaskingError(f"{label} changed decoded tokens but declares edits = False")
    if not strategy.edits and bool((~was & (new == state.mask_id)).any()):
        raise UnmaskingError(f"{label} masked a decoded position again but declares edits = False")
    return new


def decode_block(
    strategy: UnmaskingStrategy,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    tokens: torch.Tensor,
    *,
    mask_id: int,
    eos_id: int,
    block: int = 0,
    blocks: int = 1,
) -> tuple[torch.Tensor, int]:
    """Decode one block: call ``forward(tokens) -> (logits (L, V), hidden (L, H) | None)`` and the
    strategy until no mask is left (and, for an editing strategy, until it stops editing).

    The mask id's own logit is removed before the strategy sees it, so the mask is never decoded
    as a token. Returns the decoded block and the number of forwards spent. A strategy that has
    not finished after ``2 * L + max_edit_steps`` forwards (it keeps masking what it decoded) is
    an :class:`UnmaskingError`.
    """
    strategy.begin_block(int(tokens.shape[0]))
    tokens = tokens.clone().long()
    edit_budget = strategy.max_edit_steps if strategy.edits else 0
    limit = 2 * int(tokens.shape[0]) + edit_budget
    forwards = post_edits = 0
    while True:
        masked = bool((tokens == mask_id).any())
        if not masked and post_edits >= edit_budget:
            return tokens, forwards
        if forwards >= limit:
            raise UnmaskingError(
                f"unmasking strategy {strategy.name!r} left a block of {tokens.shape[0]} unfinished after "
                f"{forwards} forwards; it must decode at least one position per step and stop re-masking"
            )
        logits, hidden = forward(tokens)
        logits = logits.clone()
        logits[..., mask_id] = float("-inf")
        state = BlockState(tokens, logits, mask_id, eos_id, forwards, block, blocks, hidden)
        new = check_step(strategy, state, strategy.step(state))
        forwards += 1
        if not masked:
            post_edits += 1
            if torch.equal(new, tokens):
                return tokens, forwards
        tokens = new


def is_unmasking_class(obj: Any) -> bool:
    """True when ``obj`` is a subclass of :class:`UnmaskingStrategy`."""
    return isinstance(obj, type) and issubclass(obj, UnmaskingStrategy)


def build_unmasking(spec: str | Spec) -> UnmaskingStrategy:
    """The strategy a spec names (``threshold:tau=0.9``), looked up in the ``unmasking`` registry and built."""
    from ..registry import get_registry
    from ..specs import build, parse_spec

    parsed = parse_spec(spec, kind="unmasking strategy")
    factory = get_registry("unmasking").get(parsed.name)
    if not is_unmasking_class(factory):
        raise UnmaskingError(
            f"unmasking strategy {parsed.name!r} is {factory!r}, not a subclass of "
            "crossedge.core.contracts.unmasking.UnmaskingStrategy: the plugin must subclass it and register the class"
        )
    return build(parsed, factory, kind="unmasking strategy")
