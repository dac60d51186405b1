"""The comparison both the CLI and the benchmark run: train the matched pair on the same bytes, then held-out
bits per byte, decode latency and cache bytes at each context length."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crossedge.core.bench import threads as pinned_threads

from .data import ByteCorpus
from .decoding import context_of, decode_costs
from .model import ByteDecoder, DecoderConfig, parameter_count
from .training import TrainConfig, TrainResult, bits_per_byte, train_decoder


def train_variant(
    config: DecoderConfig, corpus: ByteCorpus, train: TrainConfig, *, progress: bool = False
) -> tuple[ByteDecoder, TrainResult]:
    """A fresh decoder of ``config`` (initialised from ``train.seed``) trained on the corpus's training bytes."""
    torch.manual_seed(train.seed)
    model = ByteDecoder(config)
    return model, train_decoder(model, corpus.train, train, progress=progress)


def quality_rows(models: Sequence[ByteDecoder], corpus: ByteCorpus, seq_len: int) -> list[dict]:
    """Parameters and held-out bits per byte (windows of ``seq_len``) of each model."""
    return [
        {
            "kind": m.config.kind,
            "parameters": parameter_count(m.config),
            "test_bits_per_byte": bits_per_byte(m, corpus.test, seq_len),
            "layer_kinds": ",".join(m.config.layer_kinds),
        }
        for m in models
    ]


def latency_rows(
    models: Sequence[ByteDecoder],
    corpus: ByteCorpus,
    contexts: Sequence[int],
    *,
    rounds: int = 4,
    repeats: int = 16,
    warmup: int = 2,
    threads: int = 1,
) -> list[dict]:
    """Decode cost of every model at every context length (held-out bytes as the context), timed interleaved."""
    rows = []
    with pinned_threads(threads):
        for length in contexts:
            costs = decode_costs(models, context_of(corpus.test, length), rounds=rounds, repeats=repeats, warmup=warmup)
            rows.extend(cost.to_row() for cost in costs)
    return rows
