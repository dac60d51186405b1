"""Answer quality of the frozen decoder under each way of reading the context.

Conditions, each followed by the same prompt:

- ``full``: every context token;
- ``memory``: the trained compressor's ``ceil(L / ratio)`` memory embeddings;
- ``memory-untrained``: the compressor before training (mean pooling through an identity map), to show what
  training added;
- ``truncated``: the last ``ceil(L / ratio)`` context tokens (the ones nearest the question), so it reads exactly
  as many decoder positions as the memory;
- ``none``: no context at all.

Scores are teacher-forced: the reference answer's mean negative log-likelihood per token, the share of answer
tokens that are the decoder's argmax, and exact match (every argmax right: exactly when greedy decoding would
produce the reference answer).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .data import QAItem
from .model import DolphinReader, MemoryCompressor

CONDITIONS = ("full", "memory", "memory-untrained", "truncated", "none")


def _scores(reader: DolphinReader, memory: torch.Tensor | None, prefix: torch.Tensor, item: QAItem) -> dict:
    ids = torch.cat([prefix, item.answer])[None]
    start = (0 if memory is None else memory.shape[1]) + len(prefix)  # first answer position
    keep = len(item.answer) + 1  # the LM head runs only where an answer token is predicted
    out = reader.decoder(inputs_embeds=reader.inputs_embeds(memory, ids), use_cache=False, logits_to_keep=keep)
    predicted = out.logits[0, :-1].float()
    nll = F.cross_entropy(predicted, item.answer, reduction="none")
    right = predicted.argmax(-1) == item.answer
    return {
        "positions": start,  # what the decoder reads before answering
        "nll": float(nll.mean()),
        "token_accuracy": float(right.float().mean()),
        "exact": bool(right.all()),
    }


@torch.no_grad()
def score_item(
    reader: DolphinReader,
    item: QAItem,
    conditions: Sequence[str] = CONDITIONS,
    *,
    untrained: MemoryCompressor | None = None,
) -> list[dict[str, Any]]:
    """One row per condition for ``item``."""
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise CrossedgeError(f"unknown condition(s) {unknown}; valid: {list(CONDITIONS)}")
    if "memory-untrained" in conditions and untrained is None:
        raise CrossedgeError("the memory-untrained condition needs the untrained compressor")
    slots = reader.config.memory_length(len(item.context))
    features = reader.features(item.context[None]) if {"memory", "memory-untrained"} & set(conditions) else None
    rows = []
    for condition in conditions:
        if condition == "full":
            scores = _scores(reader, None, torch.cat([item.context, item.prompt]), item)
        elif condition == "memory":
            scores = _scores(reader, reader.compressor(features), item.prompt, item)
        elif condition == "memory-untrained":
            scores = _scores(reader, untrained(features), item.prompt, item)
        elif condition == "truncated":
            scores = _scores(reader, None, torch.cat([item.context[-slots:], item.prompt]), item)
        else:
            scores = _scores(reader, None, item.prompt, item)
        rows.append({"condition": condition, **item.to_dict(), "memory_slots": slots, **scores})
    return rows


def score_items(
    reader: DolphinReader,
    items: Sequence[QAItem],
    conditions: Sequence[str] = CONDITIONS,
    *,
    untrained: MemoryCompressor | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Rows for every item under every condition."""
    rows: list[dict[str, Any]] = []
    for item in progress_bar(items, desc="scoring answers", enabled=progress):
        rows.extend(score_item(reader, item, conditions, untrained=untrained))
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per condition (and per condition and item kind): mean NLL, token accuracy, exact-match rate, positions."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["condition"], []).append(row)
        groups.setdefault(f"{row['condition']}/{row['kind']}", []).append(row)
    return {
        key: {
            "items": len(group),
            "nll": statistics.fmean(r["nll"] for r in group),
            "token_accuracy": statistics.fmean(r["token_accuracy"] for r in group),
            "exact": statistics.fmean(float(r["exact"]) for r in group),
            "positions": statistics.fmean(r["positions"] for r in group),
        }
        for key, group in groups.items()
    }


def gap_closed(summary: dict[str, dict[str, Any]], kind: str | None = None) -> float | None:
    """Share of the NLL gap between truncation and full context that the memory closes (1: as good as full
    context, 0: no better than truncation, negative: worse); None when the two baselines tie."""
    suffix = f"/{kind}" if kind else ""
    try:
        full, memory, truncated = (summary[f"{c}{suffix}"]["nll"] for c in ("full", "memory", "truncated"))
    except KeyError:
        return None
    gap = truncated - full
    return None if abs(gap) < 1e-9 else (truncated - memory) / gap
