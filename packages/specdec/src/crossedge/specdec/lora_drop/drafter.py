"""The ``lora-drop`` drafter: the target itself with its droppable layers skipped drafts; the full target verifies.

It shares the target's weights and borrows the target's KV cache through
:meth:`TargetCacheView.scratch` (as the early-exit drafter does): the kept layers, with
their adapters, attend to the target's own cache of the context and append the draft's
keys and values; the dropped layers append nothing; the view crops everything the draft
appended before the target verifies. Nothing is hooked onto the target's modules.

Draft step ``j`` (1 = feeding the last context token) runs the full target when
``is_full_step(j, refresh)``; the default ``refresh=0`` never does, because the target's
verification of every draft is the refresh: after it, every layer's cache holds the whole
accepted context.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from crossedge.core.contracts.drafter import Draft, DraftContext, Drafter

from ..errors import SpecdecError, check_built_for
from ..exit_head import target_name
from . import LoraDropError, is_full_step
from .model import LoraDrop


class LoraDropDrafter(Drafter):
    """Self-speculation with the droppable layers skipped and LoRA on the kept ones (adapters=DIR, drop, refresh)."""

    name = "lora-drop"
    description = (
        "self-speculation: the target minus its droppable layers, LoRA-corrected (adapters=DIR, refresh=K; "
        "drop=PATTERN for untrained adapters)"
    )
    provides_probs = True

    def __init__(
        self,
        adapters: str | Path | LoraDrop | None = None,
        refresh: int = 0,
        drop: str | None = None,
        rank: int = 8,
    ):
        if adapters is not None and drop is not None:
            raise SpecdecError("lora-drop takes adapters=DIR (trained, with their pattern) or drop=PATTERN, not both")
        try:
            is_full_step(1, refresh)
        except LoraDropError as exc:
            raise SpecdecError(f"lora-drop {exc}") from exc
        self.source = adapters
        self.pattern = drop
        self.rank = rank
        self.refresh = refresh
        self.drop: LoraDrop | None = adapters if isinstance(adapters, LoraDrop) else None
        self.target: Any = None

    def _attach(self, target: Any) -> None:
        """Load (or check, or build zero) adapters for ``target``; once per target."""
        from .training import default_adapters_folder, load_adapters

        try:
            if isinstance(self.source, LoraDrop):
                check_built_for(self.source.model, target, "LoRA-Drop adapters were", "adapters")
                drop = self.source
            elif self.pattern is not None:
                drop = LoraDrop(target, self.pattern, self.rank).eval()  # zero adapters: plain layer skipping
            else:
                folder = Path(self.source) if self.source is not None else default_adapters_folder(target_name(target))
                drop, _ = load_adapters(target, folder)
        except LoraDropError as exc:
            raise SpecdecError(str(exc)) from exc
        self.drop, self.target = drop, target

    # -- drafter contract ---------------------------------------------------

    def begin(self, context: DraftContext) -> None:
        super().begin(context)
        if context.target is not self.target:
            self._attach(context.target)
        if context.cache is None:
            raise SpecdecError("the lora-drop drafter shares the target's cache: the engine must hand a cache view")

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
        tokens: list[int] = []
        rows = []
        token = int(context_ids[-1])
        with view.scratch() as cache:
            for step in range(1, k + 1):
                logits = self.drop.step([token], n - 2 + step, cache, full=is_full_step(step, self.refresh))[-1]
                token, probs = self.draw(logits, "the LoRA-Drop drafter")
                if probs is not None:
                    rows.append(probs)
                tokens.append(token)
        return Draft(tokens, torch.stack(rows) if rows else None)
