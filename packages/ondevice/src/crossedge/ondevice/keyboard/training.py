"""Training the character model on the training split: next-character cross-entropy over word streams."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .model import SPACE, CharModel, CharModelConfig, encode


@dataclass(frozen=True)
class TrainConfig:
    """Steps of Adam over random windows of the training text."""

    steps: int = 2000
    batch_size: int = 32
    window: int = 64
    lr: float = 6e-3
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class TrainResult:
    """Loss per step (nats per character) and held-out bits per character."""

    losses: list[float]
    seconds: float
    characters: int
    test_bits_per_char: float | None = None
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-dict form (the loss curve thinned to 50 points)."""
        stride = max(1, len(self.losses) // 50)
        return {**asdict(self), "losses": self.losses[::stride], "final_loss": self.final_loss}

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(sum(tail) / len(tail))


def stream(documents: Sequence[Sequence[str]]) -> torch.Tensor:
    """One id stream of every document's words separated by spaces (documents too)."""
    ids: list[int] = []
    for words in documents:
        ids.extend(encode(" ".join(words)))
        ids.append(SPACE)
    return torch.tensor(ids, dtype=torch.long)


def train_char_model(
    documents: Sequence[Sequence[str]],
    config: TrainConfig | None = None,
    model_config: CharModelConfig | None = None,
    *,
    test_documents: Sequence[Sequence[str]] | None = None,
    progress: bool = False,
) -> tuple[CharModel, TrainResult]:
    """Train a fresh :class:`CharModel` on ``documents`` (lists of words); optionally report test bits/char."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    model = CharModel(model_config)
    ids = stream(documents)
    if len(ids) <= config.window + 1:
        raise CrossedgeError(f"training text has {len(ids)} characters; need more than a window of {config.window}")
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(2, config.steps), pct_start=0.1
    )
    offsets = torch.arange(config.window + 1)
    losses = []
    model.train()
    start = time.perf_counter()
    for _ in progress_bar(range(config.steps), desc="training keyboard model", enabled=progress):
        starts = torch.from_numpy(rng.integers(0, len(ids) - config.window - 1, size=config.batch_size))
        batch = ids[starts[:, None] + offsets]
        logits, _ = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    result = TrainResult(losses, seconds, len(ids), config=config.to_dict())
    if test_documents:
        result.test_bits_per_char = bits_per_char(model, test_documents)
    return model, result


@torch.no_grad()
def bits_per_char(model: CharModel, documents: Sequence[Sequence[str]], chunk: int = 512) -> float:
    """Held-out cross-entropy in bits per character, carrying the state across chunks."""
    ids = stream(documents)
    total, count, state = 0.0, 0, None
    previous = torch.tensor([[SPACE]])
    for begin in range(0, len(ids), chunk):
        piece = ids[begin : begin + chunk][None]
        logits, state = model(torch.cat([previous, piece[:, :-1]], dim=1), state)
        total += float(nn.functional.cross_entropy(logits[0], piece[0], reduction="sum"))
        count += piece.shape[1]
        previous = piece[:, -1:]
    return total / count / math.log(2)
