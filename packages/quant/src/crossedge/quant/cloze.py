"""A zero-shot cloze task built from evaluation text, so that perplexity is not a quantized model's only judge.

Each item is a sentence of the evaluation text with its last word taken away and four
candidates for it: that word and three others of similar length drawn from the same text. The
model picks the candidate whose tokens it gives the highest log-probability per character (the
per-character normalization keeps long words from losing by length alone). Chance is 25%.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from torch import nn

from crossedge.core import CrossedgeError

#: Candidates per item (the answer and its distractors).
CHOICES = 4
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]")
_WORD = re.compile(r"[A-Za-z]{4,}")


@dataclass(frozen=True)
class ClozeItem:
    """A context, its candidate endings and which one the text had."""

    context: str
    choices: tuple[str, ...]
    answer: int


def cloze_items(text: str, count: int, *, seed: int = 0) -> list[ClozeItem]:
    """Up to ``count`` items from sentences of ``text`` of 8+ words that end in a plain word of 4+ letters."""
    if count < 1:
        raise CrossedgeError(f"cloze needs at least one item, got {count}")
    candidates = []
    for match in _SENTENCE.finditer(text):
        sentence = " ".join(match.group(0).split())
        words = sentence[:-1].split(" ")
        if len(words) >= 8 and _WORD.fullmatch(words[-1]):
            candidates.append((" ".join(words[:-1]), words[-1]))
    vocabulary = sorted({w for w in _WORD.findall(text)})
    if len(candidates) < 1 or len(vocabulary) < CHOICES * 4:
        raise CrossedgeError(
            "the evaluation text has too few sentences of 8+ words for the cloze task: give a longer --corpus"
        )
    rng = random.Random(seed)
    rng.shuffle(candidates)
    by_length: dict[int, list[str]] = {}
    for word in vocabulary:
        by_length.setdefault(len(word), []).append(word)
    items = []
    for context, answer in candidates[:count]:
        pool = [w for n in range(len(answer) - 1, len(answer) + 2) for w in by_length.get(n, []) if w != answer]
        if len(pool) < CHOICES - 1:
            pool = [w for w in vocabulary if w != answer]
        choices = [answer, *rng.sample(pool, CHOICES - 1)]
        rng.shuffle(choices)
        items.append(ClozeItem(context, tuple(choices), choices.index(answer)))
    return items


@torch.no_grad()
def continuation_logprob(model: nn.Module, tokenizer, context: str, ending: str) -> float:
    """Sum of the log-probabilities the model gives the tokens of ``" " + ending`` after ``context``."""
    prefix = tokenizer(context, return_tensors="pt").input_ids[0]
    full = tokenizer(context + " " + ending, return_tensors="pt").input_ids[0]
    keep = len(prefix)
    # Tokenizers may merge the space into the context's last token; score from the first token that differs.
    while keep > 0 and (keep > len(full) or full[keep - 1] != prefix[keep - 1]):
        keep -= 1
    if keep == 0 or keep >= len(full):
        raise CrossedgeError(f"cannot split the cloze ending {ending!r} from its context with this tokenizer")
    logits = model(full[None]).logits[0, keep - 1 : -1].float()
    return float(torch.log_softmax(logits, -1).gather(1, full[keep:, None]).sum())


def cloze_accuracy(model: nn.Module, tokenizer, items: list[ClozeItem]) -> float:
    """Fraction of items whose answer gets the best log-probability per character."""
    right = 0
    for item in items:
        scores = [continuation_logprob(model, tokenizer, item.context, c) / len(c) for c in item.choices]
        right += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return right / len(items)
