"""A tiny random BERT and a character-level WordPiece tokenizer for fast offline tests."""

from __future__ import annotations

import string
from typing import Any

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def tiny_wordpiece() -> Any:
    """A BERT-style fast tokenizer whose vocabulary is single characters (and ``##`` continuations).

    Every lowercase ASCII word is spelled out, so tests can use real strings.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_lowercase + string.digits
    vocab_list = [*SPECIALS, *chars, *string.punctuation, *(f"##{c}" for c in chars)]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_bert(seed: int = 0, *, hidden: int = 32, layers: int = 2, dropout: float = 0.0) -> tuple[Any, Any]:
    """A (BertModel, tokenizer) pair with random weights fixed by ``seed``, in eval mode."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_wordpiece()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    model.eval()
    return model, tokenizer


def toy_collection() -> Any:
    """Five one-line documents and three queries, each judged relevant to the document sharing its words."""
    from .collection import Collection

    texts = [
        "read a config file",
        "sort numbers in a list",
        "open a network socket",
        "parse json text",
        "zip two lists",
    ]
    corpus = {f"d{i}": {"title": "", "text": text} for i, text in enumerate(texts)}
    queries = {"q0": "config file reader", "q1": "sorting a list of numbers", "q2": "json parsing"}
    qrels = {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d3": 1}}
    return Collection(corpus, queries, qrels)


def tiny_bench_settings(folder: Any, **options: Any) -> Any:
    """Bench settings over :func:`toy_collection` (test and train split) and a tiny random BERT saved in ``folder``."""
    from pathlib import Path

    from .collection import write_beir
    from .pipeline import BenchSettings

    folder = Path(folder)
    model, tokenizer = tiny_bert(seed=0)
    model.save_pretrained(folder / "tiny")
    tokenizer.save_pretrained(folder / "tiny")
    write_beir(toy_collection(), folder / "beir")
    write_beir(toy_collection(), folder / "beir", split="train")
    return BenchSettings(
        collection=str(folder / "beir"),
        train_collection=str(folder / "beir"),
        model=str(folder / "tiny"),
        progress=False,
        **options,
    )
