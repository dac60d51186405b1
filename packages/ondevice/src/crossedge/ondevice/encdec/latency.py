"""First-token latency (read the input, predict the first token) and per-token decode cost with the cache, at
several input lengths, for anything with the students' ``prefill``/``step`` verbs (the teacher included)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from crossedge.core import CrossedgeError
from crossedge.core.bench import Measurement, measure
from crossedge.core.bench import threads as pinned_threads


@dataclass
class Timed:
    """One model to time: a name, the object with ``prefill``/``step``, its parameter count, and how many
    timed first-token repeats (and, optionally, untimed warmup runs) it gets per round: the teacher is slow,
    give it fewer."""

    name: str
    runner: Any
    parameters: int
    repeats: int = 5
    warmup: int | None = None  # untimed first-token runs per round; None: the call's warmup
    first: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    cache_bytes: dict | None = None


def input_of(source: torch.Tensor, length: int) -> torch.Tensor:
    """(1, length) ids: ``source`` (1-D held-out tokens) repeated as needed (latency does not read content)."""
    if len(source) < 1 or length < 1:
        raise CrossedgeError(f"need a positive input length and some tokens, got {length} and {len(source)}")
    return source.repeat(-(-length // len(source)))[:length][None]


def parse_lengths(text: str) -> list[int]:
    """``"128,512"`` -> [128, 512], refusing non-positive or non-integer lengths."""
    try:
        lengths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError as exc:
        raise CrossedgeError(f"input lengths must be integers like 128,512,1024; got {text!r}") from exc
    if not lengths or lengths[0] < 1:
        raise CrossedgeError(f"input lengths must be positive integers like 128,512,1024; got {text!r}")
    return lengths


@torch.no_grad()
def latency_rows(
    models: Sequence[Timed],
    source: torch.Tensor,
    lengths: Sequence[int],
    *,
    decode_steps: int = 16,
    rounds: int = 2,
    warmup: int = 1,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Per input length, ``rounds`` rounds giving every model in turn its ``warmup`` untimed and ``repeats``
    timed prefill-plus-first-token runs (a fresh cache each), then ``decode_steps`` timed single cached steps
    continuing the last of those runs (after ``warmup`` untimed ones), so load drifting on a shared machine
    falls on all models alike. Medians of the samples."""
    if rounds < 1 or decode_steps < 1:
        raise CrossedgeError(f"rounds and decode steps must be at least 1, got {rounds} and {decode_steps}")
    capacity = decode_steps + warmup + 2
    rows = []
    with pinned_threads(threads) as used:
        for length in lengths:
            ids = input_of(source, length)
            timed = [replace(m, first=[], decode=[], cache_bytes=None) for m in models]
            for _ in range(rounds):
                for t in timed:
                    last: list = []

                    def first_token(t: Timed = t, ids: torch.Tensor = ids, last: list = last) -> None:
                        state, logits = t.runner.prefill(ids, capacity)
                        last[:] = [state, logits.argmax(-1, keepdim=True)]  # the token ends the timed work

                    first_warmup = warmup if t.warmup is None else t.warmup
                    t.first.extend(measure(first_token, warmup=first_warmup, repeats=t.repeats).samples)
                    state = last[0]

                    def step(t: Timed = t, state: Any = state, last: list = last) -> None:
                        last[1] = t.runner.step(state, last[1]).argmax(-1, keepdim=True)

                    t.decode.extend(measure(step, warmup=warmup, repeats=decode_steps).samples)
                    nbytes = getattr(state, "nbytes", None)
                    t.cache_bytes = nbytes() if callable(nbytes) else None
            for t in timed:
                first, decode = Measurement(t.name, t.first), Measurement(t.name, t.decode)
                rows.append(
                    {
                        "model": t.name,
                        "parameters": t.parameters,
                        "input_tokens": length,
                        "threads": used,
                        "first_token_ms": 1e3 * first.median,
                        "first_token_iqr_ms": 1e3 * first.spread,
                        "first_token_repeats": len(first.samples),
                        "decode_ms_per_token": 1e3 * decode.median,
                        "decode_iqr_ms": 1e3 * decode.spread,
                        "decode_tokens_per_s": 1.0 / decode.median,
                        "decode_repeats": len(decode.samples),
                        "cache_bytes": (t.cache_bytes or {}).get("total"),
                        "cross_kv_bytes": (t.cache_bytes or {}).get("cross_kv"),
                    }
                )
    return rows
