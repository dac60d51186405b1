"""Early-exit self-speculation: the target's own first layers plus a trained exit head draft tokens.

The drafter shares the target's weights and the KV cache of its first ``L``
layers: drafting appends to those layers of the target's own cache, and the
appended entries are cropped away again before the target verifies, so no
second prefill of the prompt is ever needed. The exit head keeps a one-layer
cache of its own, filled from the exit-layer states that the target computes
anyway during its prefill and verification passes (captured by a forward hook).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .drafters import Draft, Drafter, Sampler
from .errors import SpecdecError
from .exit_head import ExitHead, ExitHeadError, decoder_parts, default_head_folder, load_exit_head


def find_head_folder(target: Any, exit_layer: int | None) -> Path:
    """The trained head for ``target`` in the cache: the given exit layer, or the only one trained."""
    name = Path(str(getattr(target, "name_or_path", "") or "model")).name
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
    needs_target = True

    def __init__(self, target: Any = None, exit_layer: int | None = None, head: Any = None, **_: Any):
        if target is None:
            raise SpecdecError("the early-exit drafter drafts from the target model itself; it needs target=")
        self.target = target
        try:
            if isinstance(head, ExitHead):
                self.head = head
            else:
                folder = Path(head) if head is not None else find_head_folder(target, exit_layer)
                self.head = load_exit_head(target, folder)
        except ExitHeadError as exc:
            raise SpecdecError(str(exc)) from exc
        if exit_layer is not None and self.head.exit_layer != exit_layer:
            raise SpecdecError(f"the exit head was trained for layer {self.head.exit_layer}, not {exit_layer}")
        self.exit_layer = self.head.exit_layer
        self.inner, self.layers, _, _ = decoder_parts(target)
        self.window = getattr(target.config, "max_position_embeddings", None)
        self.target_cache: Any = None
        self.head_cache: Any = None
        self.states: list[torch.Tensor | None] = []
        self.capturing = True
        # The hooks hold the drafter weakly, so dropping the drafter also removes them (see __del__).
        ref = weakref.ref(self)

        def see_cache(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            drafter = ref()
            if drafter is not None:
                drafter._see_cache(module, args, kwargs)

        def capture(module: Any, args: Any, output: Any) -> None:
            drafter = ref()
            if drafter is not None:
                drafter._capture(module, args, output)

        self._hooks = [
            target.register_forward_pre_hook(see_cache, with_kwargs=True),
            self.layers[self.exit_layer - 1].register_forward_hook(capture),
        ]

    def close(self) -> None:
        """Remove the hooks this drafter put on the target."""
        for hook in getattr(self, "_hooks", ()):
            hook.remove()
        self._hooks = []

    def __del__(self) -> None:
        self.close()

    # -- hooks on the target ------------------------------------------------

    def _see_cache(self, _module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            self.target_cache = cache

    def _capture(self, _module: Any, _args: Any, output: Any) -> None:
        if not self.capturing or self.target_cache is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        end = self.target_cache.layers[self.exit_layer - 1].get_seq_length()
        start = end - hidden.shape[1]
        if len(self.states) < end:
            self.states.extend([None] * (end - len(self.states)))
        for offset in range(hidden.shape[1]):
            self.states[start + offset] = hidden[:, offset : offset + 1].detach()

    # -- drafter contract ---------------------------------------------------

    def begin(self, prompt_ids: Sequence[int], sampler: Sampler) -> None:
        from transformers import DynamicCache

        super().begin(prompt_ids, sampler)
        self.head_cache = DynamicCache()
        self.states = []
        self.target_cache = None
        self.capturing = True
        self.seconds = 0.0

    def _run_exit_layers(self, token: int, position: int) -> torch.Tensor:
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
                cache=self.target_cache,
                use_cache=True,
            )
        return hidden

    @torch.inference_mode()
    def propose(self, context_ids: Sequence[int], k: int) -> Draft:
        n = len(context_ids)
        if self.window is not None:
            k = min(k, self.window - n)
        cache = self.target_cache
        # The target's cache must hold every context token but the last (the engine feeds that one next).
        if k <= 0 or cache is None or cache.get_seq_length() != n - 1:
            return Draft([])
        start = time.perf_counter()
        head_len = min(self.head_cache.get_seq_length(), n - 1)
        self.head_cache.crop(head_len - self.head_cache.get_seq_length())
        if head_len < n - 1:
            missing = self.states[head_len : n - 1]
            if any(s is None for s in missing):
                return Draft([])
            ids = torch.tensor([list(context_ids[head_len : n - 1])])
            positions = torch.arange(head_len, n - 1).unsqueeze(0)
            self.head.hidden(torch.cat(missing, dim=1), ids, positions, self.head_cache)
        tokens: list[int] = []
        rows = []
        token = int(context_ids[-1])
        target_lengths = [layer.get_seq_length() for layer in cache.layers[: self.exit_layer]]
        head_length = self.head_cache.get_seq_length()
        self.capturing = False
        try:
            for step in range(k):
                position = n - 1 + step
                exit_hidden = self._run_exit_layers(token, position)
                logits = self.head(exit_hidden, torch.tensor([[token]]), torch.tensor([[position]]), self.head_cache)
                token, probs = self.draw(logits[0, -1], "the early-exit head", not self.sampler.config.greedy)
                if probs is not None:
                    rows.append(probs)
                tokens.append(token)
        finally:
            self.capturing = True
            # Hand the shared layers back exactly as the target left them.
            for layer, length in zip(cache.layers[: self.exit_layer], target_lengths, strict=True):
                layer.crop(length - layer.get_seq_length())
            self.head_cache.crop(head_length - self.head_cache.get_seq_length())
        self.seconds += time.perf_counter() - start
        return Draft(tokens, torch.stack(rows) if rows else None)
