"""CER of greedy transcriptions, and the text tower's text-only perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import asr
from .common import IGNORE
from .fused import ZipperModel, token_batch


def evaluate(model: nn.Module, corpus: asr.AsrCorpus, split: str = "test", batch_size: int = 32) -> dict:
    """``{"cer", "references", "hypotheses"}`` of greedy transcriptions of one split (Zipper, baseline or tower)."""
    chosen = corpus.indices(split)
    refs = [corpus.texts[i] for i in chosen]
    if isinstance(model, ZipperModel):
        hyps = []
        for start in range(0, len(chosen), batch_size):
            part = chosen[start : start + batch_size]
            hyps += [model.tokenizer.decode(ids) for ids in model.greedy_batch([corpus.features[i] for i in part])]
    else:
        hyps = [model.transcribe(corpus.features[i][None]) for i in chosen]
    return {"cer": asr.cer(refs, hyps), "references": refs, "hypotheses": hyps}


@torch.no_grad()
def text_perplexity(model: ZipperModel, texts: Sequence[str], batch_size: int = 32) -> float:
    """Perplexity of the text tower alone on ``BOS + text + EOS`` (the Zipper's prompt format), every token scored."""
    total, counted = 0.0, 0
    for start in range(0, len(texts), batch_size):
        inputs, targets = token_batch(
            list(texts[start : start + batch_size]), model.tokenizer, model.config.max_len, model.bos_id, model.eos_id
        )
        logits = model.decode(None, inputs)[0]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        total += float(loss)
        counted += int((targets != IGNORE).sum())
    return math.exp(total / counted)
