"""What the CLI and the benchmark share: the decoder, the tokenized corpus, a trained compressor (from the cache
when the same recipe was trained before), answer quality and prefill cost."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import (
    DEFAULT_SOURCES,
    ItemTemplates,
    QAItem,
    TextSplit,
    TokenStream,
    encode,
    load_split,
    question_items,
    recall_items,
    tokenize_stream,
)
from .model import FILE_FORMAT, DolphinReader, MemoryCompressor, load_compressor, new_compressor, saved_record
from .training import TrainConfig, TrainResult, train_compressor

#: The question whose prefill is timed (the recall prompt's shape: about 30 tokens with its quote).
TIMED_QUESTION = 'Question: In the text above, what comes right after "the exception is"?\nAnswer: the exception is'
RECIPE_VERSION = 1


def load_decoder(name: str) -> tuple[nn.Module, Any]:
    """The frozen decoder and its tokenizer, through crossedge's model sources (fp32, eval mode)."""
    from crossedge.core.sources import load_model

    loaded = load_model(name)
    return loaded.model.eval(), loaded.tokenizer


@dataclass
class Corpus:
    """The document split, both sides tokenized, and the prompt templates for one tokenizer."""

    split: TextSplit
    train: TokenStream
    test: TokenStream
    templates: ItemTemplates

    def to_dict(self) -> dict[str, Any]:
        """Sizes, for records and reports."""
        return {**self.split.to_dict(), "train_tokens": len(self.train), "test_tokens": len(self.test)}


def prepare_corpus(tokenizer: Any, sources: tuple[str, ...] = DEFAULT_SOURCES, *, fraction: float = 0.8) -> Corpus:
    """Split the bundled documents and tokenize both sides."""
    split = load_split(sources, fraction=fraction)
    return Corpus(
        split, tokenize_stream(split.train, tokenizer), tokenize_stream(split.test, tokenizer), ItemTemplates(tokenizer)
    )


def decoder_digest(decoder: nn.Module) -> str:
    """A short hash of some of the decoder's weights, so a cached compressor is never reused on another decoder."""
    h = hashlib.sha256()
    weight = decoder.get_input_embeddings().weight.detach()
    h.update(weight[:2048].float().contiguous().numpy().tobytes())
    for p in list(decoder.parameters())[-3:]:
        h.update(p.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def recipe_key(compressor: MemoryCompressor, train: TrainConfig, corpus: Corpus, decoder: nn.Module) -> str:
    """Everything that decides a trained compressor's weights, hashed."""
    recipe = {
        "version": RECIPE_VERSION,
        "config": compressor.config.to_dict(),
        "train": train.to_dict(),
        "corpus": corpus.to_dict(),
        "decoder": decoder_digest(decoder),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def _cache_path(key: str) -> Path:
    from crossedge.core.cache import cache_dir

    return cache_dir() / "ondevice" / "dolphin" / f"compressor-{key}.safetensors"


def _write_cached(compressor: MemoryCompressor, path: Path, record: dict[str, Any]) -> None:
    from safetensors.torch import save

    from crossedge.core.cache import atomic_file

    tensors = {k: v.detach().contiguous() for k, v in compressor.state_dict().items()}
    metadata = {"format": FILE_FORMAT, "config": json.dumps(compressor.config.to_dict()), "extra": json.dumps(record)}
    with atomic_file(path) as handle:  # a killed run never leaves half a file the next run would trust
        handle.write(save(tensors, metadata=metadata))


@dataclass
class Trained:
    """A reader with its trained compressor, the compressor as initialised, and how it was obtained."""

    reader: DolphinReader
    untrained: MemoryCompressor
    result: TrainResult
    cached: bool
    cache_path: Path | None


def trained_reader(
    decoder: nn.Module,
    name: str,
    corpus: Corpus,
    train: TrainConfig,
    *,
    options: dict[str, Any] | None = None,
    cache: bool = True,
    progress: bool = False,
) -> Trained:
    """A compressor of ``options`` trained with ``train`` on the training stream, or the cached one of the same
    recipe (keyed by config, training options, corpus sizes, decoder weights and torch version)."""
    compressor = new_compressor(decoder, name, seed=train.seed, **(options or {}))
    untrained = copy.deepcopy(compressor).eval()
    reader = DolphinReader(decoder, compressor)
    path = _cache_path(recipe_key(compressor, train, corpus, decoder)) if cache else None
    if path is not None and path.is_file():
        loaded = load_compressor(path, decoder)
        compressor.load_state_dict(loaded.state_dict())
        compressor.eval()
        return Trained(reader, untrained, TrainResult.from_dict(saved_record(path)["train"]), True, path)
    result = train_compressor(reader, corpus.train, corpus.templates, train, progress=progress)
    if path is not None:
        _write_cached(compressor, path, {"train": result.to_dict()})
    return Trained(reader, untrained, result, False, path)


def eval_items(
    corpus: Corpus,
    *,
    context_tokens: int,
    recall: int,
    prefix_tokens: int = 8,
    answer_tokens: int = 16,
    questions: bool = True,
    seed: int = 0,
) -> list[QAItem]:
    """Held-out items: ``recall`` recall items and (with ``questions``) the hand-written questions."""
    items = recall_items(
        corpus.test,
        corpus.templates,
        recall,
        context_tokens=context_tokens,
        prefix_tokens=prefix_tokens,
        answer_tokens=answer_tokens,
        seed=seed,
    )
    if questions:
        items += question_items(corpus.test, corpus.templates, context_tokens=context_tokens, seed=seed)
    return items


def timing_inputs(corpus: Corpus, lengths: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Held-out contexts of each length (from the stream's start) and the timed question's ids."""
    from crossedge.core import CrossedgeError

    if max(lengths) > len(corpus.test):
        raise CrossedgeError(f"the held-out text has {len(corpus.test)} tokens; time contexts up to that")
    return [corpus.test.ids[:n] for n in lengths], encode(corpus.templates.tokenizer, "\n\n" + TIMED_QUESTION)
