"""Block-wise semi-autoregressive decoding of a masked diffusion LM, and greedy decoding of its AR twin.

The canvas is ``prompt [SEP]`` followed by ``gen_length`` mask tokens. Blocks of
``block_length`` positions are decoded left to right; inside a block every forward sees the
whole canvas (later blocks still masked, as in LLaDA) and the unmasking strategy decides which
positions to keep (:func:`crossedge.core.contracts.unmasking.decode_block`). The prompt is never
written to. An answer ends at the first end-of-text token; with ``stop_at_eos`` (or a strategy
whose ``stop_at_eos`` is set) a block that decodes one ends the canvas there: the positions after
it become end-of-text without forwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from crossedge.core.contracts.unmasking import UnmaskingStrategy, build_unmasking, decode_block
from crossedge.core.errors import CrossedgeError

from .model import DiffusionLM


@dataclass
class Decoded:
    """One decoded answer: its text, the canvas ids after the prompt, and the forwards it cost."""

    text: str
    tokens: list[int]
    forwards: int


def prompt_ids(model: DiffusionLM, prompt: str | list[int]) -> list[int]:
    """The prompt's ids followed by the separator (when the model has one)."""
    ids = model.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not ids:
        raise CrossedgeError("empty prompt: give the task text to decode an answer for")
    sep = model.info.sep_token_id
    return ids + ([sep] if sep is not None else [])


@torch.inference_mode()
def decode(
    model: DiffusionLM,
    prompt: str | list[int],
    strategy: UnmaskingStrategy | str | None = None,
    *,
    gen_length: int | None = None,
    block_length: int | None = None,
    stop_at_eos: bool = False,
    tau: float = 0.9,
) -> Decoded:
    """Decode an answer to ``prompt``: block-wise with ``strategy`` for a diffusion LM, greedy for an AR one,
    lexical units above confidence ``tau`` for a lexical model (:mod:`.lexical`)."""
    info = model.info
    gen_length = gen_length or info.gen_length
    block_length = block_length or info.block_length
    if gen_length % block_length:
        raise CrossedgeError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    head = prompt_ids(model, prompt)
    if model.info.objective == "autoregressive":
        return _greedy(model, head, gen_length)
    if model.info.objective == "lexical":
        from .lexical import decode_lexical

        return decode_lexical(model, head, gen_length, tau)
    if strategy is None:
        raise CrossedgeError("a diffusion LM needs an unmasking strategy, such as 'low-confidence:k=1'")
    strategy = build_unmasking(strategy) if isinstance(strategy, str) else strategy
    start = len(head)
    x = torch.tensor(head + [info.mask_token_id] * gen_length)
    blocks = gen_length // block_length
    forwards = 0
    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length

        def forward(block: torch.Tensor, lo: int = lo, hi: int = hi):
            x[lo:hi] = block
            logits, hidden = model(x[None], hidden=True)
            return logits[0, lo:hi], hidden[0, lo:hi]

        new, spent = decode_block(
            strategy, forward, x[lo:hi], mask_id=info.mask_token_id, eos_id=info.eos_token_id, block=b, blocks=blocks
        )
        x[lo:hi] = new
        forwards += spent
        if (stop_at_eos or strategy.stop_at_eos) and bool((new == info.eos_token_id).any()):
            x[hi:] = info.eos_token_id
            break
    answer = x[start:].tolist()
    return Decoded(model.decode(answer), answer, forwards)


def _greedy(model: DiffusionLM, head: list[int], gen_length: int) -> Decoded:
    """One token per forward with a KV cache, until end-of-text or ``gen_length`` tokens."""
    from transformers import DynamicCache

    cache = DynamicCache()
    ids = torch.tensor([head])
    out: list[int] = []
    forwards = 0
    while len(out) < gen_length:
        logits = model.model(input_ids=ids, cache=cache, use_cache=True).logits[0, -1]
        forwards += 1
        logits[model.info.mask_token_id] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        if token == model.info.eos_token_id:
            break
        ids = torch.tensor([[token]])
    out += [model.info.eos_token_id] * (gen_length - len(out))
    return Decoded(model.decode(out), out, forwards)


def decode_speculative(model: DiffusionLM, prompt: str | list[int], decoder: Any) -> Decoded:
    """Greedy decoding of an AR model through a :class:`~crossedge.specdec.engine.SpeculativeDecoder`
    built on ``model.model``: the tokens plain greedy decoding gives, in fewer target forwards when
    the drafters guess right."""
    info = model.info
    if info.objective != "autoregressive":
        raise CrossedgeError(f"speculative decoding needs the autoregressive twin; this model is {info.objective!r}")
    result = decoder.generate(torch.tensor([prompt_ids(model, prompt)]), info.gen_length)
    out = list(result.tokens[: info.gen_length])
    out += [info.eos_token_id] * (info.gen_length - len(out))
    return Decoded(model.decode(out), out, result.stats.target_forwards)
