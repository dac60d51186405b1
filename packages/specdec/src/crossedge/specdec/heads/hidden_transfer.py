"""Hidden Transfer: pseudo hidden states of future positions, made at an intermediate layer and refined by the rest.

At layer ``l`` (``layer``; default ``num_hidden_layers - 2``, at least 1) the anchor's hidden state
``h_l[t]`` is mapped by one linear transform per depth, ``p_j = W_j h_l[t] + b_j``, into a
pseudo state for position ``t + j``. The pseudo states then go through the target's own
layers ``l .. L-1`` (frozen), attending to the real context's keys and values at those
layers and causally to each other, and the final norm and LM head turn the state at
``t + j`` into the guess of the token at ``t + j + 1``: the node at depth ``j``. ``W_j``
starts as the identity and ``b_j`` at zero.

The paper refines the pseudo states in the target's own verification forward; here the
drafter runs the upper layers itself, on the target's cache lent by
:meth:`~crossedge.core.contracts.drafter.TargetCacheView.scratch` (what it appends is
cropped away), so a proposal costs ``(L - l) / L`` of a forward of ``depth`` positions.
In training every anchor's pseudo states join the real sequence in one forward of the
upper layers, with a mask that lets pseudo state ``(t, j)`` see real positions ``<= t``
and the pseudo states ``(t, i <= j)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..exit_head import ExitData, causal_mask_with_past, decoder_parts
from . import HeadsError
from .base import ParallelHeads, additive, anchored_chains, refuse_sliding_windows


class HiddenTransferHeads(ParallelHeads):
    """Per-depth linear transfers of layer ``layer``'s anchor state, refined by the target's layers above it."""

    kind = "hidden-transfer"

    def __init__(
        self,
        model: nn.Module,
        depth: int = 3,
        *,
        layer: int | None = None,
        rank_accuracy: list[list[float]] | None = None,
        vocab: int | None = None,
    ):
        super().__init__(model, depth, rank_accuracy=rank_accuracy, vocab=vocab)
        refuse_sliding_windows(model, self.kind)
        layers = model.config.num_hidden_layers
        layer = max(1, layers - 2) if layer is None else int(layer)
        if not 1 <= layer < layers:
            raise HeadsError(f"hidden-transfer layer must be between 1 and {layers - 1} for this model, got {layer}")
        self.layer = layer
        hidden = model.config.hidden_size
        eye = torch.eye(hidden, dtype=model.dtype).expand(depth, hidden, hidden)
        self.weight = nn.Parameter(eye.clone())
        self.bias = nn.Parameter(torch.zeros(depth, hidden, dtype=model.dtype))

    def options(self) -> dict[str, Any]:
        return {**super().options(), "layer": self.layer}

    def layers_read(self) -> tuple[int, ...]:
        return (self.layer,)

    def pseudo(self, state: torch.Tensor) -> torch.Tensor:
        """(..., depth, hidden) pseudo states of the next ``depth`` positions from anchor states (..., hidden)."""
        return torch.einsum("...i,koi->...ko", state, self.weight) + self.bias

    def refine(
        self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any = None
    ) -> torch.Tensor:
        """The target's layers from ``self.layer`` up run on ``hidden``; returns the normed states (b, seq, hidden)."""
        inner, layers, norm, _ = decoder_parts(self.model)
        embeddings = inner.rotary_emb(hidden, positions)
        for block in layers[self.layer :]:
            hidden = block(
                hidden,
                attention_mask=mask,
                position_ids=positions,
                position_embeddings=embeddings,
                cache=cache,
                use_cache=cache is not None,
            )
        return norm(hidden)

    def training_logits(self, data: ExitData, rows: Any, start: int) -> torch.Tensor:
        real = data.hidden[self.layer][rows].to(self.dtype)  # (b, T, hidden)
        b, length, hidden = real.shape
        anchors = length - 1 - start
        pseudo = self.pseudo(real[:, start : length - 1]).reshape(b, anchors * self.depth, hidden)
        positions, allowed, _ = anchored_chains(length, start, self.depth)
        refined = self.refine(torch.cat([real, pseudo], dim=1), positions, additive(allowed, self.dtype)[None, None])
        return self.project(refined[:, length:]).reshape(b, anchors, self.depth, -1)

    def draft_logits(self, view: Any, context_ids: list[int]) -> torch.Tensor | None:
        n = len(context_ids)
        state = view.hidden_states(self.layer, n - 2, n - 1)
        if state is None:
            return None
        pseudo = self.pseudo(state[0, -1].to(self.dtype)).unsqueeze(0)  # (1, depth, hidden) at n-1 .. n-2+depth
        positions = torch.arange(n - 1, n - 1 + self.depth).unsqueeze(0)
        mask = causal_mask_with_past(self.depth, n - 1, self.dtype, pseudo.device)
        with view.scratch() as cache:
            refined = self.refine(pseudo, positions, mask, cache)
        return self.project(refined[0]).float()
