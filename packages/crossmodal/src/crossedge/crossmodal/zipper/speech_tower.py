"""The speech tower: a small causal transformer over log-mel frames, pretrained with CTC."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import asr, encdec
from .common import ZipperError, feature_batch, train_split


@dataclass
class SpeechTowerConfig:
    """Sizes of :class:`SpeechTower` (plain values, stored in the saved metadata)."""

    input_dim: int = asr.STACK * asr.N_MELS
    width: int = 144
    heads: int = 4
    layers: int = 4
    ff: int = 288
    stride: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.heads < 1 or self.width % self.heads:
            raise ZipperError(f"speech width {self.width} does not split into {self.heads} heads; pick a divisible one")
        if min(self.layers, self.stride, self.ff) < 1:
            raise ZipperError("speech layers, stride and ff must be at least 1")


class SpeechTower(nn.Module):
    """Features (N, T, F) -> causal states (N, ceil(T / stride), width); :meth:`ctc_logits` over characters."""

    def __init__(self, config: SpeechTowerConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or SpeechTowerConfig()
        layer = encdec.EncDecConfig(width=c.width, heads=c.heads, ff=c.ff, dropout=c.dropout)
        self.subsample = nn.Conv1d(c.input_dim, c.width, kernel_size=2 * c.stride - 1, stride=c.stride,
                                   padding=c.stride - 1)  # fmt: skip
        self.layers = nn.ModuleList(encdec.EncoderLayer(layer) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.ctc = nn.Linear(c.width, asr.CharTokenizer().vocab_size)  # blank = asr.PAD
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("positions", encdec.sinusoids(4096, c.width), persistent=False)

    def memory_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(N, S) valid positions of an (N, T) frame mask."""
        return frame_mask[:, :: self.config.stride]

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.nn.functional.gelu(self.subsample(features.transpose(1, 2))).transpose(1, 2)
        length = x.shape[1]
        if length > self.positions.shape[0]:
            raise ZipperError(f"{length} speech positions is more than the {self.positions.shape[0]} the tower has")
        x = self.dropout(x + self.positions[:length])
        allowed = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()[None, None]
        if frame_mask is not None:
            # a padded query still sees itself, so no softmax row is empty
            allowed = allowed & (self.memory_mask(frame_mask)[:, None, None, :] | torch.eye(length, dtype=torch.bool))
        for layer in self.layers:
            x = layer(x, allowed)
        return self.norm(x)

    def body_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the CTC head's (what a fused model fine-tunes: it never uses the head)."""
        return [p for name, p in self.named_parameters() if not name.startswith("ctc.")]

    def ctc_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(N, S, characters) CTC logits of the tower's states."""
        return self.ctc(states)

    @torch.no_grad()
    def transcribe(self, features: torch.Tensor) -> str:
        """Greedy CTC transcription of one utterance (1, T, F): repeats collapsed, blanks dropped."""
        best = self.ctc_logits(self(features))[0].argmax(-1).tolist()
        kept = [b for i, b in enumerate(best) if b != asr.PAD and (i == 0 or b != best[i - 1])]
        return asr.CharTokenizer().decode(kept)


def train_speech_tower(
    corpus: asr.AsrCorpus,
    steps: int = 600,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 2e-3,
    config: SpeechTowerConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[SpeechTower, list[float]]:
    """Pretrain a speech tower alone with CTC on the train split; returns ``(tower in eval mode, losses)``."""
    from ..training import Objective, device, train_steps, unwrap

    train = train_split(corpus)
    torch.manual_seed(seed)
    tower = SpeechTower(config)
    tokenizer = asr.CharTokenizer()
    rng = np.random.default_rng(seed)

    def loss(module: SpeechTower, features, mask, targets, target_lengths) -> torch.Tensor:
        log_probs = module.ctc_logits(module(features, mask)).log_softmax(-1).transpose(0, 1)
        lengths = module.memory_mask(mask).sum(1)
        return nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, blank=asr.PAD, zero_infinity=True)

    def loss_fn(prepared: nn.Module, step: int) -> torch.Tensor:
        chosen = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        features, mask = feature_batch(corpus, chosen)
        ids = [tokenizer.encode(corpus.texts[i]) for i in chosen]
        where = device()
        targets = torch.tensor([t for i in ids for t in i], dtype=torch.long)
        target_lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        return prepared(features.to(where), mask.to(where), targets.to(where), target_lengths.to(where))

    objective = Objective(tower, loss).train()
    losses = train_steps(objective, list(tower.parameters()), loss_fn, steps, lr=lr, clip=1.0, progress=progress)
    return unwrap(objective).module.cpu().eval(), losses
