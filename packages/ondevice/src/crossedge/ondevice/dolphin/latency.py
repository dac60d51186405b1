"""Prefill cost of reading a long context three ways: wall time and CPU time (the energy proxy).

A prefill is everything before the first answer token: the decoder's forward over its input that builds the KV
cache and the last position's logits. ``full`` reads context + question; ``truncated`` reads the last
``ceil(L / ratio)`` context tokens + question; ``memory`` runs the encoder (the decoder's embeddings and first
layers) over the whole context, the compressor, then the decoder over the memory embeddings + question. CPU time is
``time.process_time`` (every thread of the process) around each call: on a CPU it tracks energy better than wall
time, because it counts all the cores kept busy.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from crossedge.core import CrossedgeError
from crossedge.core.bench import measure
from crossedge.core.bench import threads as pinned_threads

from .model import DolphinReader

MODES = ("full", "truncated", "memory")


def parse_lengths(text: str) -> list[int]:
    """``"512,1024"`` -> [512, 1024]; a one-line error for anything else."""
    try:
        lengths = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError as exc:
        raise CrossedgeError(f"context lengths must be comma-separated integers, got {text!r}") from exc
    if not lengths or any(n < 1 for n in lengths):
        raise CrossedgeError(f"context lengths must be positive integers, got {text!r}")
    return lengths


def _prefill(reader: DolphinReader, mode: str, context: torch.Tensor, question: torch.Tensor) -> Callable[[], Any]:
    decoder = reader.decoder
    slots = reader.config.memory_length(len(context))
    if mode == "full":
        ids = torch.cat([context, question])[None]
        return lambda: decoder(input_ids=ids, use_cache=True, logits_to_keep=1)
    if mode == "truncated":
        ids = torch.cat([context[-slots:], question])[None]
        return lambda: decoder(input_ids=ids, use_cache=True, logits_to_keep=1)

    def memory_prefill() -> Any:
        inputs = reader.inputs_embeds(reader.memory(context[None]), question[None])
        return decoder(inputs_embeds=inputs, use_cache=True, logits_to_keep=1)

    return memory_prefill


def _timed(fn: Callable[[], Any], cpu: list[float]) -> Callable[[], Any]:
    def call() -> Any:
        began = time.process_time()
        out = fn()
        cpu.append(time.process_time() - began)
        return out

    return call


@torch.inference_mode()
def prefill_rows(
    reader: DolphinReader,
    contexts: Sequence[torch.Tensor],
    question: torch.Tensor,
    *,
    rounds: int = 3,
    repeats: int = 1,
    warmup: int = 1,
    threads: int = 1,
    modes: Sequence[str] = MODES,
) -> list[dict[str, Any]]:
    """Wall and CPU time of each mode's prefill per context: ``rounds`` interleaved rounds of ``repeats`` timed
    calls per mode (so load on a shared machine hits every mode alike), medians over all of them."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise CrossedgeError(f"unknown prefill mode(s) {unknown}; valid: {list(MODES)}")
    rows = []
    with pinned_threads(threads) as used:
        for context in contexts:
            fns = {mode: _prefill(reader, mode, context, question) for mode in modes}
            for fn in fns.values():
                for _ in range(warmup):
                    fn()
            wall: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(rounds):
                for mode, fn in fns.items():
                    wall[mode] += measure(_timed(fn, cpu[mode]), warmup=0, repeats=repeats).samples
            slots = reader.config.memory_length(len(context))
            positions = {"full": len(context), "truncated": slots, "memory": slots}
            for mode in modes:
                q = statistics.quantiles(wall[mode], n=4, method="inclusive") if len(wall[mode]) > 1 else [0, 0, 0]
                rows.append(
                    {
                        "mode": mode,
                        "context": len(context),
                        "decoder_positions": positions[mode] + len(question),
                        "encoder_tokens": len(context) if mode == "memory" else 0,
                        "prefill_median_ms": statistics.median(wall[mode]) * 1e3,
                        "prefill_iqr_ms": (q[2] - q[0]) * 1e3,
                        "cpu_median_ms": statistics.median(cpu[mode]) * 1e3,
                        "samples": len(wall[mode]),
                        "threads": used,
                    }
                )
    return rows


def speedups(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per context: how many times less wall and CPU time the memory and truncated prefills take than full."""
    by = {(r["mode"], r["context"]): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (mode, length), row in by.items():
        full = by.get(("full", length))
        if mode == "full" or full is None:
            continue
        out.setdefault(str(length), {})[f"{mode}_wall"] = full["prefill_median_ms"] / row["prefill_median_ms"]
        out[str(length)][f"{mode}_cpu"] = full["cpu_median_ms"] / max(row["cpu_median_ms"], 1e-9)
    return out
