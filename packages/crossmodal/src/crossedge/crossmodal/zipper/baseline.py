"""The speech-only baseline: the same speech tower with a character decoder of matched size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import asr, encdec
from .common import IGNORE, train_split
from .fused import OnSpeechTower, teacher_forced
from .speech_tower import SpeechTower


class SpeechOnlyAsr(OnSpeechTower, encdec.CharacterDecoding):
    """The speech tower and a small character decoder (encoder-decoder layers) cross-attending to it.

    Like :class:`ZipperModel` it takes the tower as given (frozen unless ``tune_speech``): give
    each model its own copy when the tower is tuned.
    """

    def __init__(self, speech: SpeechTower, config: encdec.EncDecConfig, tune_speech: bool = False) -> None:
        super().__init__()
        self.config, self.tune_speech = config, tune_speech
        self.speech = speech.requires_grad_(tune_speech)
        self.tokenizer = asr.CharTokenizer()
        self.bos_id, self.eos_id = asr.BOS, asr.EOS
        self.project = nn.Linear(speech.config.width, config.width)
        self.build_character_decoder(config, 512)
        self.train(False)

    def train(self, mode: bool = True) -> SpeechOnlyAsr:
        super().train(mode)
        if not self.tune_speech:
            self.speech.eval()
        return self

    def trainable(self) -> list[nn.Parameter]:
        """The decoder (and the speech tower when tuned)."""
        own = [p for name, p in self.named_parameters() if not name.startswith("speech.")]
        return own + self.speech.body_parameters() if self.tune_speech else own

    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.speech(features, frame_mask))


def count(params: Sequence[nn.Parameter]) -> int:
    """Number of values in ``params``."""
    return sum(p.numel() for p in params)


def matched_decoder(
    speech: SpeechTower, target: int, layers: int = 2, heads: int = 4, dropout: float = 0.1
) -> encdec.EncDecConfig:
    """The character decoder (``layers`` layers, ff = 2 x width) whose trainable count is closest to ``target``."""
    best: tuple[int, encdec.EncDecConfig] | None = None
    for width in range(heads * 4, 1025, heads * 4):
        config = encdec.EncDecConfig(width=width, heads=heads, decoder_layers=layers, ff=2 * width, dropout=dropout)
        with torch.device("meta"):  # sizes only: nothing is allocated
            n = count(SpeechOnlyAsr(SpeechTower(speech.config), config).trainable())
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, config)
    assert best is not None
    return best[1]


def train_baseline(
    speech: SpeechTower,
    corpus: asr.AsrCorpus,
    config: encdec.EncDecConfig,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    tune_speech: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[SpeechOnlyAsr, list[float]]:
    """Train the speech-only baseline's decoder from scratch on the same data, batches and steps as the Zipper."""
    from ..training import train_steps, unwrap

    train = train_split(corpus)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SpeechOnlyAsr(speech, config, tune_speech)
    tokenizer = model.tokenizer

    def tokens(texts):
        inputs, targets = encdec.token_batch(list(texts), tokenizer, config.max_len)
        return inputs, targets.masked_fill(targets == asr.PAD, IGNORE)

    model.train()
    loss_fn = teacher_forced(model, corpus, train, rng, batch_size, tokens)
    losses = train_steps(model, model.trainable(), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(model).cpu().eval(), losses
