"""Speech-to-text data made here: espeak-ng utterances of short word sequences, characters, CER.

Shared by the Zipper model and the encoder-decoder model of the attention audit.

Texts are sequences of 1..``max_words`` words drawn (seeded) from the ``vocab`` most frequent
lowercase words of the prose on this machine (the same sources as the retrieval benchmark:
Python's ``pydoc_data.topics`` and ``/usr/share/common-licenses``); nothing is committed.
Each text is spoken by espeak-ng with a seeded voice, rate and pitch; features are 40 log-mel
bands per 10 ms frame, with every two frames stacked (20 ms, 80 values) to halve the length.

Splits are by text: a test text is never trained on (voices are shared).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from crossedge.core.errors import CrossedgeError

from . import speech

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
PAD, BOS, EOS = 0, 1, 2
STACK = 2
N_MELS = 40


class AsrDataError(CrossedgeError, ValueError):
    """An ASR corpus that cannot be built as asked (too few distinct texts, bad sizes)."""


class CharTokenizer:
    """Characters of :data:`ALPHABET` as ids 3.. ; 0 pad, 1 begin, 2 end. Other characters are dropped."""

    def __init__(self) -> None:
        self.ids = {c: i + 3 for i, c in enumerate(ALPHABET)}
        self.chars = {i: c for c, i in self.ids.items()}

    @property
    def vocab_size(self) -> int:
        return len(ALPHABET) + 3

    def encode(self, text: str) -> list[int]:
        return [self.ids[c] for c in text.lower() if c in self.ids]

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            if int(i) == EOS:
                break
            if int(i) in self.chars:
                out.append(self.chars[int(i)])
        return "".join(out)


def word_pool(vocab: int) -> list[str]:
    """The ``vocab`` most frequent lowercase words (3+ letters) of the machine's prose, most frequent first."""
    from .retrieval_bench import _source_texts

    counts = Counter(w for text in _source_texts() for w in re.findall(r"\b[a-z]{3,}\b", text))
    words = [w for w, _ in counts.most_common(vocab)]
    if len(words) < vocab:
        raise AsrDataError(f"only {len(words)} distinct words found on this machine; ask for vocab <= {len(words)}")
    return words


def make_texts(n: int, vocab: int = 40, max_words: int = 3, seed: int = 0) -> list[str]:
    """``n`` distinct texts of 1..``max_words`` pool words (seeded)."""
    words = word_pool(vocab)
    capacity = sum(vocab**k for k in range(1, max_words + 1))
    if n > capacity:
        raise AsrDataError(f"{vocab} words in at most {max_words} words make {capacity} texts; ask for fewer")
    rng = np.random.default_rng(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        k = int(rng.integers(1, max_words + 1))
        texts.setdefault(" ".join(words[i] for i in rng.integers(0, vocab, k)), None)
    return list(texts)


def random_voice(rng: np.random.Generator) -> speech.Voice:
    return speech.Voice(
        speech.VOICES[int(rng.integers(len(speech.VOICES)))], int(rng.integers(130, 200)), int(rng.integers(30, 70))
    )


def features(audio) -> torch.Tensor:
    """(frames // STACK, STACK * N_MELS) stacked log-mel frames, normalized per utterance."""
    mel = speech.log_mel(audio, N_MELS)
    usable = mel.shape[0] // STACK * STACK
    stacked = mel[:usable].reshape(-1, STACK * N_MELS)
    return (stacked - stacked.mean()) / (stacked.std() + 1e-5)


@dataclass
class AsrCorpus:
    """Utterances: features (list of (frames, 80)), texts, token ids and which split each is in."""

    features: list[torch.Tensor]
    texts: list[str]
    split: list[str]  # "train" or "test"

    def indices(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.split) if s == split]


def build_corpus(
    texts: int = 400,
    test_fraction: float = 0.2,
    per_text: int = 1,
    vocab: int = 40,
    max_words: int = 3,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    audio_fn: Callable[[str, speech.Voice], np.ndarray] | None = None,
) -> AsrCorpus:
    """Speak ``texts`` distinct texts ``per_text`` times each (seeded voices); split by text.

    ``audio_fn`` replaces espeak-ng (tests use it to run without espeak-ng); by default the
    audio comes from :func:`speech.synthesize_many`, which caches it.
    """
    if not 0.0 < test_fraction < 1.0 or texts < 2 or per_text < 1:
        raise AsrDataError("need texts >= 2, per_text >= 1 and 0 < test_fraction < 1")
    chosen = make_texts(texts, vocab, max_words, seed)
    rng = np.random.default_rng(seed + 1)
    test = set(rng.choice(texts, max(1, int(round(test_fraction * texts))), replace=False).tolist())
    items = [(t, random_voice(rng)) for t in chosen for _ in range(per_text)]
    split = ["test" if i // per_text in test else "train" for i in range(len(items))]
    audio = speech.synthesize_many(items, progress=progress) if audio_fn is None else [audio_fn(*i) for i in items]
    return AsrCorpus([features(a) for a in audio], [t for t, _ in items], split)


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Character error rate over the whole set (jiwer): edits / reference characters."""
    import jiwer

    if len(references) != len(hypotheses) or not references:
        raise ValueError("cer needs as many hypotheses as references, at least one")
    return float(jiwer.cer(list(references), list(hypotheses)))
