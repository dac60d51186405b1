"""PPD (parallel prompt decoding): trained prompt tokens that ride the target's verification forward.

``depth`` prompt embeddings ``E_1 .. E_depth`` (in the space of the target's input
embedding layer) are hung as a chain under every position the verification forward
feeds: the last context token and each draft node (:class:`~crossedge.core.contracts.
drafter.Riders`). ``E_j`` under a node at position ``p`` sits at ``p + j`` and attends to
the context, the node's ancestors and the prompt tokens before it; nothing attends to the
prompt tokens, so the draft's own logits are untouched, and their keys and values are
dropped with the rejected branches. After verification the chain under the last
accepted node gives the next proposal: the target's own logits there yield the bonus
token, ``E_1``'s output guesses the token after it (depth 1), ``E_j``'s the token at depth
``j``. So the guesses cost no forward of their own, only the extra positions.

The first proposal of a generation has no chain to read (the prompt's forward carried
none), so the first step is a plain one that carries the chain. The prompt tokens start
as the mean input embedding and are trained through the frozen target, every anchor's
chain joining the real sequence in one forward (:func:`.base.anchored_chains`). The
sparse tree is built from the measured per-depth rank accuracies, as in PPD's
hardware-aware tree; the engine's cost-aware policy cuts it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossedge.core.contracts.drafter import Riders

from ..exit_head import ExitData
from .base import ParallelHeads, additive, anchored_chains, refuse_sliding_windows


class PromptHeads(ParallelHeads):
    """``depth`` trained prompt embeddings whose outputs in the target's forward guess the tokens after the next."""

    kind = "ppd"
    reduced_vocab = False

    def __init__(
        self,
        model: nn.Module,
        depth: int = 3,
        *,
        rank_accuracy: list[list[float]] | None = None,
        vocab: int | None = None,
    ):
        super().__init__(model, depth, rank_accuracy=rank_accuracy, vocab=vocab)  # refuses a vocab
        refuse_sliding_windows(model, self.kind)
        table = model.get_input_embeddings()
        with torch.no_grad():
            mean = table(torch.arange(model.config.vocab_size)).float().mean(0)
        self.prompts = nn.Parameter(mean.to(model.dtype).expand(depth, -1).clone())

    def layers_read(self) -> tuple[int, ...]:
        return ()

    def training_logits(self, data: ExitData, rows: Any, start: int) -> torch.Tensor:
        ids = data.input_ids[rows]
        b, length = ids.shape
        anchors = length - 1 - start
        positions, allowed, _ = anchored_chains(length, start, self.depth)
        real = self.model.get_input_embeddings()(ids)
        chains = self.prompts.to(real.dtype).repeat(anchors, 1).expand(b, -1, -1)
        attention = getattr(self.model.config, "_attn_implementation", "sdpa")
        mask = allowed if attention == "sdpa" else additive(allowed, real.dtype)
        out = self.model(
            inputs_embeds=torch.cat([real, chains], dim=1),
            attention_mask=mask[None, None],
            position_ids=positions.expand(b, -1),
        )
        return out.logits[:, length:].reshape(b, anchors, self.depth, -1)

    def draft_logits(self, view: Any, context_ids: list[int]) -> torch.Tensor | None:
        # Prompt tokens guess only inside a forward that carries them: the drafter keeps those logits.
        return None

    def riders(self, nodes: int) -> Riders:
        """A chain of the prompt embeddings under the fed last token and under each of ``nodes`` draft nodes."""
        parents = []
        for anchor in range(-1, nodes):
            base = nodes + len(parents)  # index of this chain's first rider among fed positions after the last token
            parents.extend([anchor, *range(base, base + self.depth - 1)])
        return Riders(self.prompts.detach().repeat(nodes + 1, 1), parents)
