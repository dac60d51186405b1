"""Decoding with the cache: greedy or sampled generation, and decode latency and cache size at a context length."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from crossedge.core import CrossedgeError
from crossedge.core.bench import Measurement, measure

from .cache import DecodeCache
from .model import ByteDecoder


@torch.no_grad()
def generate(
    model: ByteDecoder, prompt: torch.Tensor, new_tokens: int, *, temperature: float = 0.0, seed: int = 0
) -> torch.Tensor:
    """``new_tokens`` bytes after ``prompt`` (1-D ids): prefill once, then one cached step per byte."""
    if len(prompt) < 1:
        raise CrossedgeError("the prompt must hold at least one byte")
    generator = torch.Generator().manual_seed(seed)
    cache = model.new_cache(1, capacity=len(prompt) + new_tokens)
    logits = model(prompt[None], cache)[:, -1]
    out = []
    for _ in range(new_tokens):
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)
        else:
            token = logits.argmax(dim=-1, keepdim=True)
        out.append(int(token))
        logits = model(token, cache)[:, -1]
    return torch.tensor(out, dtype=torch.long)


@dataclass
class DecodeCost:
    """One model at one context length: per-token decode time (median of single steps), prefill time (one run)
    and the bytes its cache holds after prefill and the decode steps."""

    kind: str
    context: int
    decode_median_ms: float
    decode_iqr_ms: float
    decode_p90_ms: float
    repeats: int
    prefill_ms: float
    cache_length: int
    kv_bytes: int
    state_bytes: int
    cache_bytes: int

    def to_row(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@torch.no_grad()
def decode_costs(
    models: Sequence[ByteDecoder], context: torch.Tensor, *, rounds: int = 4, repeats: int = 16, warmup: int = 2
) -> list[DecodeCost]:
    """Prefill ``context`` (1-D ids) into each model's cache, then time single greedy decode steps: ``rounds``
    rounds, each giving every model ``warmup`` untimed and ``repeats`` timed steps in turn, so drifting load on
    a shared machine falls on all models alike. Caches are allocated for exactly the positions used, so their
    size is what decoding needs there."""
    if rounds < 1 or repeats < 1:
        raise CrossedgeError(f"rounds and repeats must be at least 1, got {rounds} and {repeats}")
    length = len(context) + rounds * (warmup + repeats)
    runs = []
    for model in models:
        model.eval()
        cache = model.new_cache(1, capacity=length)
        start = time.perf_counter()
        logits = model(context[None], cache)
        runs.append(_Run(model, cache, logits[:, -1].argmax(dim=-1, keepdim=True), time.perf_counter() - start))
    for _ in range(rounds):
        for run in runs:
            run.samples.extend(measure(run.step, warmup=warmup, repeats=repeats).samples)
    costs = []
    for run in runs:
        timing = Measurement(run.model.config.kind, run.samples)
        size = run.cache.nbytes()
        costs.append(
            DecodeCost(
                kind=run.model.config.kind,
                context=len(context),
                decode_median_ms=1e3 * timing.median,
                decode_iqr_ms=1e3 * timing.spread,
                decode_p90_ms=1e3 * timing.p90,
                repeats=len(run.samples),
                prefill_ms=1e3 * run.prefill_s,
                cache_length=run.cache.length,
                kv_bytes=size["kv"],
                state_bytes=size["state"],
                cache_bytes=size["total"],
            )
        )
    return costs


@dataclass
class _Run:
    model: ByteDecoder
    cache: DecodeCache
    token: torch.Tensor
    prefill_s: float
    samples: list[float] = field(default_factory=list)

    def step(self) -> None:
        self.token = self.model(self.token, self.cache)[:, -1].argmax(dim=-1, keepdim=True)


def context_of(data: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` bytes of ``data``, repeated when it is shorter (latency does not depend on content)."""
    if len(data) < 1 or length < 1:
        raise CrossedgeError(f"need a positive context length and some text, got {length} and {len(data)} bytes")
    repeats = -(-length // len(data))
    return data.repeat(repeats)[:length]


def parse_lengths(text: str) -> list[int]:
    """``"256,1024"`` -> [256, 1024], refusing non-positive or non-integer lengths."""
    try:
        lengths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise CrossedgeError(f"context lengths must be integers like 256,1024,2048; got {text!r}") from exc
    if not lengths or lengths[0] < 1:
        raise CrossedgeError(f"context lengths must be positive integers like 256,1024,2048; got {text!r}")
    return lengths
