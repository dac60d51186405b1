"""Medusa heads: residual blocks on the target's last hidden state, each guessing a token further ahead.

Head ``k`` (0-based) is ``h + SiLU(W_k h + b_k)`` followed by the target's own LM head
(shared, frozen, never copied; with ``vocab``, only its rows of the heads' tokens). ``W_k``
and ``b_k`` start at zero, so an untrained head predicts exactly what the LM head predicts
from ``h``.

Which hidden state. The heads read the state the engine records for the drafter through
:class:`~crossedge.core.contracts.drafter.TargetCacheView` at layer
``num_hidden_layers``, i.e. ``output_hidden_states[num_hidden_layers]``, which in
transformers 5 is after the final norm, so ``lm_head(h)`` equals the model's logits.
:func:`.base.final_state_is_normed` checks this on the target once; the heads apply the
final norm themselves only when the state is not normed, so it is never applied twice.

Offsets are those of :mod:`.base`: the heads read ``h[n-2]`` and head ``k`` guesses the
node at depth ``k + 1``, the token ``k + 2`` places after the state's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..exit_head import ExitData, decoder_parts
from .base import ParallelHeads, final_state_is_normed


class MedusaHeads(ParallelHeads):
    """``depth`` residual blocks sharing the target's LM head; head ``k`` guesses offset ``+(k + 2)``."""

    kind = "medusa"

    def __init__(
        self,
        model: nn.Module,
        depth: int = 3,
        *,
        rank_accuracy: list[list[float]] | None = None,
        vocab: int | None = None,
    ):
        super().__init__(model, depth, rank_accuracy=rank_accuracy, vocab=vocab)
        hidden = model.config.hidden_size
        dtype = model.dtype  # the LM head may be repacked by a backend, with no .weight
        self.weight = nn.Parameter(torch.zeros(depth, hidden, hidden, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(depth, hidden, dtype=dtype))
        self.apply_norm = not final_state_is_normed(model)

    def hidden(self, state: torch.Tensor) -> torch.Tensor:
        """(..., depth, hidden) inputs of the LM head for last-layer states (..., hidden)."""
        update = torch.einsum("...i,koi->...ko", state, self.weight) + self.bias
        out = state.unsqueeze(-2) + nn.functional.silu(update)
        if self.apply_norm:
            _, _, norm, _ = decoder_parts(self.model)
            out = norm(out)
        return out

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """(..., depth, vocab) logits: head ``k``'s guess of the token ``k + 2`` places after ``state``'s."""
        return self.project(self.hidden(state))

    def training_logits(self, data: ExitData, rows: Any, start: int) -> torch.Tensor:
        states = data.hidden[self.model.config.num_hidden_layers][rows, start:-1]
        return self(states.to(self.dtype))

    def draft_logits(self, view: Any, context_ids: list[int]) -> torch.Tensor | None:
        n = len(context_ids)
        state = view.hidden_states(self.model.config.num_hidden_layers, n - 2, n - 1)
        return None if state is None else self(state[0, -1].to(self.dtype)).float()
