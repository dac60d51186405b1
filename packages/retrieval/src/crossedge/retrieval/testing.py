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
