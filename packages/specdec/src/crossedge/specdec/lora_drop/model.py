"""Drop patterns, LoRA adapters on the kept layers, and the layer-dropping forward passes.

Drop patterns (the one spec grammar; layers are numbered from 0)::

    block                     the default: a contiguous block of num_layers // 4 layers in the
                              middle (SmolLM2-135M, 30 layers: 11..17)
    block:count=8,start=14    an explicit block
    layers:ids=3+5+7          an explicit list

Why a middle block by default: layer-skipping work on Llama-family models finds the first
and last layers essential. Measured on SmolLM2-135M (4 held-out corpus cuts, 32 greedy
tokens each, no adapters, no refresh), teacher-forced top-1 agreement with the full model
was 0.71 dropping 7 layers from 11, 0.63 from 8, 0.41 from 14 and 0.08 from 20 (22..28
scored 0.03 on one chat prompt); measure other patterns with ``train-lora-drop --drop``.

The adapters never touch the target's modules. Each kept layer gets a *view*: a shallow
copy of the decoder layer (and of its attention and MLP) that shares every parameter and
buffer of the original and whose seven projections are :class:`LoRALinear` wrappers around
the original linears. The target runs exactly as before; the views run only when this
module calls them, on whatever cache it is handed.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossedge.core.specs import build, parse_spec

from ..exit_head import ExitHeadError, causal_mask_with_past, decoder_parts
from . import LoraDropError, is_full_step

#: The projections of a Llama-family decoder layer that get an adapter (parent module, linear).
PROJECTIONS = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)


@dataclass(frozen=True)
class BlockDrop:
    """``count`` contiguous layers from ``start``; by default num_layers // 4 layers in the middle."""

    count: int | None = None
    start: int | None = None

    def layers(self, num_layers: int) -> tuple[int, ...]:
        """The dropped layer indices for a model of ``num_layers`` layers."""
        count = self.count if self.count is not None else max(1, num_layers // 4)
        start = self.start if self.start is not None else (num_layers - count) // 2
        return tuple(range(start, start + count))


@dataclass(frozen=True)
class ListDrop:
    """Exactly the layers ``ids`` (0-based)."""

    ids: tuple[int, ...] = ()

    def layers(self, num_layers: int) -> tuple[int, ...]:
        """The dropped layer indices (as given)."""
        return tuple(self.ids)


DROP_PATTERNS = {"block": BlockDrop, "layers": ListDrop}


def dropped_layers(pattern: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
    """The sorted layer indices a drop pattern (spec text, or indices from Python) names for ``num_layers`` layers."""
    if isinstance(pattern, str):
        spec = parse_spec(pattern, kind="drop")
        factory = DROP_PATTERNS.get(spec.name)
        if factory is None:
            raise spec.error(f"unknown drop pattern {spec.name!r}; the patterns: {', '.join(DROP_PATTERNS)}")
        layers = build(spec, factory, kind="drop").layers(num_layers)
    else:
        layers = tuple(int(i) for i in pattern)
    if len(set(layers)) != len(layers):
        raise LoraDropError(f"the drop pattern names a layer twice: {list(layers)}")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise LoraDropError(f"the model has layers 0..{num_layers - 1}; the drop pattern names {bad}")
    if not layers:
        raise LoraDropError("the drop pattern names no layer; drop at least one (e.g. 'block:count=1')")
    if len(layers) == num_layers:
        raise LoraDropError(f"the drop pattern drops all {num_layers} layers; keep at least one")
    return tuple(sorted(layers))


def decoder_parts_of(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module, nn.Module]:
    """(inner model, layers, final norm, LM head) of a Llama-family decoder; a :class:`LoraDropError` otherwise."""
    try:
        return decoder_parts(model)
    except ExitHeadError as exc:
        raise LoraDropError(str(exc).replace("early-exit drafting", "LoRA-Drop")) from exc


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))``, with ``B`` zero at the start; the base linear is shared, never copied.

    ``gate`` (broadcast over the output, e.g. (batch, tokens, 1)) switches the correction per
    position; the training forward uses it to keep full-step positions exact.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        weight = base.weight
        self._base = {"linear": base}  # not a submodule: the target's weights stay the target's
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # A random, B zero: LoRA's initialisation
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype))
        self.scale = alpha / rank
        self.gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base projection plus the low-rank correction."""
        delta = (x @ self.lora_a.T) @ self.lora_b.T * self.scale
        if self.gate is not None:
            delta = delta * self.gate
        return self._base["linear"](x) + delta


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object sharing ``module``'s parameters, buffers and children, with none of its hooks."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    for name, value in vars(module).items():
        if "hook" in name and isinstance(value, OrderedDict):
            setattr(clone, name, OrderedDict())
    return clone


class LoraDrop(nn.Module):
    """A target with droppable layers and LoRA adapters (rank ``rank``) on every projection of the kept layers."""

    def __init__(self, model: nn.Module, dropped: Sequence[int], rank: int = 8, alpha: float | None = None):
        super().__init__()
        _, layers, _, _ = decoder_parts_of(model)
        if rank < 1:
            raise LoraDropError(f"the LoRA rank must be at least 1, got {rank}")
        self.dropped = dropped_layers(dropped, len(layers))
        self.kept = tuple(i for i in range(len(layers)) if i not in self.dropped)
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else 2 * rank)
        self.adapters = nn.ModuleDict()
        self._shared = {"model": model}  # not a submodule: only the adapters are this module's weights
        self._views: dict[int, nn.Module] = {}
        for i in self.kept:
            view = _shallow(layers[i])
            for parent_name, _ in PROJECTIONS:
                if not isinstance(view._modules.get(parent_name), nn.Module):
                    raise LoraDropError(f"layer {i} of {type(model).__name__} has no {parent_name}")
                view._modules[parent_name] = _shallow(layers[i]._modules[parent_name])
            for parent_name, name in PROJECTIONS:
                parent = view._modules[parent_name]
                adapter = LoRALinear(parent._modules[name], rank, self.alpha)
                parent._modules[name] = adapter
                self.adapters[f"{i}_{name}"] = adapter
            self._views[i] = view

    @property
    def model(self) -> nn.Module:
        """The target whose layers this module runs (shared, frozen)."""
        return self._shared["model"]

    def view(self, layer: int) -> nn.Module:
        """Kept layer ``layer`` with its adapters (the target's layer object is left as it is)."""
        return self._views[layer]

    @contextmanager
    def gated(self, gate: torch.Tensor | None) -> Iterator[None]:
        """Scale every adapter's correction by ``gate`` for the duration of a block."""
        for adapter in self.adapters.values():
            adapter.gate = gate
        try:
            yield
        finally:
            for adapter in self.adapters.values():
                adapter.gate = None

    def _mask(self, tokens: int, past: int, dtype: torch.dtype) -> torch.Tensor | None:
        # SDPA is causal by itself when no mask is given and there is no past; eager attention needs the mask.
        if tokens == 1 or (past == 0 and getattr(self.model.config, "_attn_implementation", "sdpa") == "sdpa"):
            return None
        return causal_mask_with_past(tokens, past, dtype, torch.device("cpu"))

    def forward(
        self, input_ids: torch.Tensor, full: Sequence[bool] | torch.Tensor, *, lora: bool = True
    ) -> torch.Tensor:
        """Logits (batch, tokens, vocab) of a whole sequence as step-by-step dropped decoding computes them.

        ``full[t]`` says whether position ``t`` was fed by a full step (see
        :func:`~crossedge.specdec.lora_drop.full_positions`). A dropped layer computes only the
        full positions, attending to full positions only (its cache holds nothing else); a kept
        layer computes every position, with its adapters on the dropped positions (``lora=False``:
        without adapters). One parallel pass, so training sees exactly what decoding does.
        """
        inner, layers, norm, lm_head = decoder_parts(self.model)
        full = torch.as_tensor(full, dtype=torch.bool)
        batch, length = input_ids.shape
        if full.shape != (length,):
            raise LoraDropError(f"full must hold one flag per position ({length}), got shape {tuple(full.shape)}")
        positions = torch.arange(length).unsqueeze(0).expand(batch, -1)
        hidden = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(hidden, position_ids=positions)
        index = full.nonzero().squeeze(-1)
        gate = (~full).to(hidden.dtype)[None, :, None]
        with self.gated(gate):
            for i, layer in enumerate(layers):
                if i in self.dropped:
                    if index.numel() == 0:
                        continue
                    part = layer(
                        hidden[:, index],
                        attention_mask=self._mask(index.numel(), 0, hidden.dtype),
                        position_ids=positions[:, index],
                        position_embeddings=(cos[:, index], sin[:, index]),
                    )
                    hidden = hidden.index_copy(1, index, part)
                else:
                    block = self._views[i] if lora else layer
                    hidden = block(
                        hidden,
                        attention_mask=self._mask(length, 0, hidden.dtype),
                        position_ids=positions,
                        position_embeddings=(cos, sin),
                    )
        return lm_head(norm(hidden))

    def step(self, tokens: Sequence[int], start: int, cache: Any, *, full: bool) -> torch.Tensor:
        """Feed ``tokens`` at positions ``start..`` on ``cache``; logits (tokens, vocab) of each.

        A full step runs the target's own layers; a dropped step skips the dropped layers (they
        write no KV) and runs the kept ones with their adapters. Several tokens at once are only
        for a prefill on an empty cache or a full step.
        """
        if len(tokens) > 1 and not full:
            raise LoraDropError("a dropped step feeds one token at a time")
        inner, layers, norm, lm_head = decoder_parts(self.model)
        ids = torch.tensor([list(tokens)])
        positions = torch.arange(start, start + len(tokens)).unsqueeze(0)
        hidden = inner.embed_tokens(ids)
        position_embeddings = inner.rotary_emb(hidden, position_ids=positions)
        for i, layer in enumerate(layers):
            if not full and i in self.dropped:
                continue
            past = cache.layers[i].get_seq_length() if i < len(cache.layers) else 0
            hidden = (layer if full else self._views[i])(
                hidden,
                attention_mask=self._mask(len(tokens), past, hidden.dtype),
                position_ids=positions,
                position_embeddings=position_embeddings,
                cache=cache,
                use_cache=True,
            )
        return lm_head(norm(hidden))[0]

    @torch.inference_mode()
    def generate(self, input_ids: Sequence[int] | torch.Tensor, max_new_tokens: int, refresh: int) -> list[int]:
        """Lossy greedy decoding: the dropped model on most steps, the full model on every ``refresh``-th.

        Returns the new tokens (up to and including EOS). Output differs from the full model's.
        """
        from transformers import DynamicCache

        prompt = [int(t) for t in (input_ids[0].tolist() if isinstance(input_ids, torch.Tensor) else input_ids)]
        if max_new_tokens < 1:
            raise LoraDropError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        is_full_step(1, refresh)  # refuses a negative refresh before any work
        eos = self.model.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos or ())
        cache = DynamicCache(config=self.model.config)
        logits = self.step(prompt, 0, cache, full=True)[-1]
        out: list[int] = []
        for step in range(1, max_new_tokens + 1):
            token = int(logits.argmax())
            out.append(token)
            if token in eos or step == max_new_tokens:
                break
            logits = self.step([token], len(prompt) + step - 1, cache, full=is_full_step(step, refresh))[-1]
        return out
