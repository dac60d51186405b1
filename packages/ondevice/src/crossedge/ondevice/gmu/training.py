"""Training a decoder on random windows of the training bytes, and held-out bits per byte.

Both variants of a comparison get the same batches in the same order (the batch sampler's seed is independent
of the model's initialisation), so they see exactly the same bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .model import ByteDecoder


@dataclass(frozen=True)
class TrainConfig:
    """AdamW steps over random windows: batch, window length, peak learning rate with warmup and cosine decay."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 0

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class TrainResult:
    """Loss per step (nats per byte), wall time and the bytes seen."""

    losses: list[float]
    seconds: float
    tokens: int
    config: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(sum(tail) / len(tail))

    def to_dict(self) -> dict:
        """Plain-dict form (the loss curve thinned to about 60 points)."""
        stride = max(1, len(self.losses) // 60)
        return {
            "losses": self.losses[::stride],
            "loss_stride": stride,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.final_loss,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "config": self.config,
        }


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_decoder(
    model: ByteDecoder, data: torch.Tensor, config: TrainConfig | None = None, *, progress: bool = False
) -> TrainResult:
    """Train ``model`` in place on next-byte cross-entropy over random windows of ``data`` (1-D byte ids)."""
    config = config or TrainConfig()
    if len(data) <= config.seq_len + 1:
        raise CrossedgeError(f"training text has {len(data)} bytes; need more than a window of {config.seq_len}")
    sampler = torch.Generator().manual_seed(config.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    offsets = torch.arange(config.seq_len + 1)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for i in progress_bar(range(config.steps), desc=f"training {model.config.kind}", enabled=progress):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, i)
        starts = torch.randint(0, len(data) - config.seq_len - 1, (config.batch_size,), generator=sampler)
        batch = data[starts[:, None] + offsets]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    seconds = time.perf_counter() - start
    return TrainResult(losses, seconds, config.steps * config.batch_size * config.seq_len, config.to_dict())


@torch.no_grad()
def bits_per_byte(model: ByteDecoder, data: torch.Tensor, seq_len: int = 128, *, batch_size: int = 32) -> float:
    """Held-out cross-entropy in bits per byte over consecutive, non-overlapping windows of ``seq_len`` bytes
    (each window predicted from its own start: the context the model was trained with)."""
    windows = (len(data) - 1) // seq_len
    if windows < 1:
        raise CrossedgeError(f"held-out text has {len(data)} bytes; need more than one window of {seq_len}")
    inputs = data[: windows * seq_len].view(windows, seq_len)
    targets = data[1 : windows * seq_len + 1].view(windows, seq_len)
    model.eval()
    total = 0.0
    for begin in range(0, windows, batch_size):
        logits = model(inputs[begin : begin + batch_size])
        total += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets[begin : begin + batch_size].reshape(-1), reduction="sum"
            )
        )
    return total / (windows * seq_len) / math.log(2)
