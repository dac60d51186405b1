"""Early-exit self-speculation: the target's own first layers plus a trained exit head draft tokens.

The drafter shares the target's weights and the KV cache of its first ``L``
layers: it borrows the target's cache through the :class:`TargetCacheView` the
engine hands it (``view.scratch()``), and the view crops what drafting appended
before the target verifies, so no second prefill of the prompt is ever needed.
The exit head keeps a one-layer cache of its own, filled from the exit-layer
hidden states the target computes anyway during its prefill and verification
passes, which the engine records in the view because the drafter asked for them
(``keep_hidden_states``). Nothing is hooked onto the target's modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter

from .errors import SpecdecError, check_built_for
from .exit_head import ExitHead, ExitHeadError, decoder_parts, default_head_folder, load_exit_head, target_name


def find_head_folder(target: Any, exit_layer: int | None) -> Path:
    """The trained head for ``target`` in the cache: the given exit layer, or the only one trained."""
    name = target_name(target)
    if exit_layer is not None:
        return default_head_folder(name, exit_layer)
    parent = default_head_folder(name, 1).parent
    found = sorted(parent.glob("layer-*")) if parent.exists() else []
    if len(found) != 1:
        raise SpecdecError(
            f"no single trained exit head for {name!r} in {parent} (found {[p.name for p in found]}); train one with "
            f"'crossedge specdec train-exit --model {name} --exit-layer L' or pass 'early-exit:head=DIR'"
        )
    return found[0]


class EarlyExitDrafter(Drafter):
    """Draft with the target's first ``exit_layer`` layers and a trained exit head (option head=DIR)."""

    name = "early-exit"
    description = "self-speculation from the target's first layers and a trained exit head (exit_layer=L, head=DIR)"
    provides_probs = True

    def __init__(self, head: str | Path | ExitHead | None = None, exit_layer: int | None = None):
        if exit_layer is not None and exit_layer < 1:
            raise SpecdecError(f"early-exit exit_layer must be at least 1, got {exit_layer}")
        self.head_source = head
        self.requested_layer = exit_layer
        self.head: ExitHead | None = head if isinstance(head, ExitHead) else None
        self.exit_layer: int | None = self.head.exit_layer if self.head is not None else exit_layer
        if self.head is not None and exit_layer is not None and self.head.exit_layer != exit_layer:
            raise SpecdecError(f"the exit head was trained for layer {self.head.exit_layer}, not {exit_layer}")
        self.target: Any = None
        self.head_cache: Any = None

    def _attach(self, target: Any) -> None:
        """Load (or check) the head for ``target`` and find the layers it shares; once per target."""
        try:
            if isinstance(self.head_source, ExitHead):
                check_built_for(self.head_source.model, target, "exit head was", "head")
                head = self.head_source
            else:
                if self.head_source is not None:
                    folder = Path(self.head_source)
                else:
                    folder = find_head_folder(target, self.requested_layer)
                head = load_exit_head(target, folder)
            self.inner, self.layers, _, _ = decoder_parts(target)
        except ExitHeadError as exc:
            raise SpecdecError(str(exc)) from exc
        if self.requested_layer is not None and head.exit_layer != self.requested_layer:
            raise SpecdecError(f"the exit head was trained for layer {head.exit_layer}, not {self.requested_layer}")
        self.head, self.exit_layer, self.target = head, head.exit_layer, target

    # -- drafter contract ---------------------------------------------------

    def begin(self, context: DraftContext) -> None:
        from transformers import DynamicCache

        super().begin(context)
        if context.target is not self.target:
            self._attach(context.target)
        if context.cache is None:
            raise SpecdecError("the early-exit drafter shares the target's cache: the engine must hand a cache view")
        # The head's own cache is filled from the exit layer's states, which the engine computes
        # anyway and keeps in the view for us.
        context.cache.keep_hidden_states(self.exit_layer)
        self.head_cache = DynamicCache()

    def _run_exit_layers(self, token: int, position: int, cache: Any) -> torch.Tensor:
        ids = torch.tensor([[token]])
        positions = torch.tensor([[position]])
        hidden = self.inner.embed_tokens(ids)
        position_embeddings = self.inner.rotary_emb(hidden, position_ids=positions)
        for layer in self.layers[: self.exit_layer]:
            hidden = layer(
                hidden,
                attention_mask=None,
                position_ids=positions,
                position_embeddings=position_embeddings,
                cache=cache,
                use_cache=True,
            )
        return hidden

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        n = len(context_ids)
        window = self.context.window
        if window is not None:
            k = min(k, window - n)
        view = self.context.cache
        # The target's cache must hold every context token but the last (the engine feeds that one next).
        if k <= 0 or view.length != n - 1:
            return Draft([])
        head_len = min(self.head_cache.get_seq_length(), n - 1)
        self.head_cache.crop(head_len - self.head_cache.get_seq_length())
        if head_len < n - 1:
            missing = view.hidden_states(self.exit_layer, head_len, n - 1)
            if missing is None:
                return Draft([])
            ids = torch.tensor([list(context_ids[head_len : n - 1])])
            positions = torch.arange(head_len, n - 1).unsqueeze(0)
            self.head.hidden(missing, ids, positions, self.head_cache)
        tokens: list[int] = []
        rows = []
        token = int(context_ids[-1])
        head_length = self.head_cache.get_seq_length()
        # The view lends the target's cache for the draft and crops what the exit layers append.
        with view.scratch() as cache:
            try:
                for step in range(k):
                    position = n - 1 + step
                    exit_hidden = self._run_exit_layers(token, position, cache)
                    logits = self.head(
                        exit_hidden, torch.tensor([[token]]), torch.tensor([[position]]), self.head_cache
                    )
                    token, probs = self.draw(logits[0, -1], "the early-exit head")
                    if probs is not None:
                        rows.append(probs)
                    tokens.append(token)
            finally:
                self.head_cache.crop(head_length - self.head_cache.get_seq_length())
        return Draft(tokens, torch.stack(rows) if rows else None)
