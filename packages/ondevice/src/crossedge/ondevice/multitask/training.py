"""Sandwich-rule training: every step trains the largest, the smallest and random per-task width configurations.

Each sampled configuration runs the shared encoder and all three decoders at its widths, and the
weighted sum of the three task losses is back-propagated; the gradients of all sampled
configurations add up before one optimizer step, so the shared weights serve every width of
every decoder (and of the encoder, when it is slimmable). Random configurations draw each task's
width independently, which is what lets the controller later mix widths across tasks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .data import TASKS, MultiTaskData, TaskSplit, batches
from .model import Configuration, MultiTaskNetwork


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train` with their defaults."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    random_configs: int = 2  # sampled per step besides the largest and the smallest
    loss_weights: tuple[float, ...] = (1.0, 10.0, 1.0)  # classify, reconstruct (MSE is ~10x smaller), segment
    seed: int = 0

    def __post_init__(self) -> None:
        self.loss_weights = tuple(float(w) for w in self.loss_weights)
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.random_configs < 0:
            raise CrossedgeError(f"invalid training config {asdict(self)}: epochs >= 0, batch >= 1, lr > 0")
        if len(self.loss_weights) != len(TASKS) or any(w < 0 for w in self.loss_weights):
            raise CrossedgeError(f"loss_weights needs {len(TASKS)} non-negative values ({', '.join(TASKS)})")


@dataclass
class TrainResult:
    """Per epoch, each task's mean loss at the largest and at the smallest configuration, and the time."""

    epochs: int
    steps: int
    seconds: float
    largest: list[dict[str, float]] = field(default_factory=list)
    smallest: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


def task_losses(
    outputs: dict[str, torch.Tensor], labels: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Cross-entropy on the class, MSE of the denoised image, binary cross-entropy of the foreground mask."""
    return {
        "classify": F.cross_entropy(outputs["classify"], labels),
        "reconstruct": F.mse_loss(outputs["reconstruct"], clean),
        "segment": F.binary_cross_entropy_with_logits(outputs["segment"], masks),
    }


def sandwich(network: MultiTaskNetwork, rng: random.Random, random_configs: int) -> list[Configuration]:
    """The configurations one step trains: largest, smallest, then ``random_configs`` drawn per task."""
    config = network.config
    chosen = [config.largest]
    if config.smallest != config.largest:
        chosen.append(config.smallest)
    for _ in range(random_configs):
        chosen.append(Configuration(rng.choice(config.encoder_widths), tuple(rng.choice(config.widths) for _ in TASKS)))
    return chosen


def train_step(
    network: MultiTaskNetwork,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor,
    clean: torch.Tensor,
    masks: torch.Tensor,
    chosen: Sequence[Configuration],
    loss_weights: Sequence[float],
) -> list[dict[str, float]]:
    """One step over ``chosen``: summed gradients, one optimizer step; returns each configuration's task losses."""
    optimizer.zero_grad(set_to_none=True)
    out = []
    for configuration in chosen:
        losses = task_losses(network(x, configuration), labels, clean, masks)
        total = sum(w * losses[t] for t, w in zip(TASKS, loss_weights, strict=True))
        total.backward()  # one backward per configuration keeps only one graph alive at a time
        out.append({t: float(v.detach()) for t, v in losses.items()})
    optimizer.step()
    return out


def train(
    network: MultiTaskNetwork, data: MultiTaskData, config: TrainConfig | None = None, *, progress: bool = True
) -> TrainResult:
    """Train ``network`` in place on ``data.train`` with the sandwich rule; Adam, cosine learning rate."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    split: TaskSplit = data.train
    steps_per_epoch = -(-len(split) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * steps_per_epoch))
    result = TrainResult(config.epochs, 0, 0.0)
    start = time.perf_counter()
    network.train()
    for _ in progress_bar(range(config.epochs), desc="multitask train", enabled=progress, unit="epoch"):
        largest = dict.fromkeys(TASKS, 0.0)
        smallest = dict.fromkeys(TASKS, 0.0)
        count = 0
        for clean, labels, masks, _ in batches(split, config.batch_size, shuffle=True, generator=generator):
            x = data.noisy(clean, generator)  # fresh noise every batch: the decoder learns to denoise
            chosen = sandwich(network, rng, config.random_configs)
            losses = train_step(network, optimizer, x, labels, clean, masks, chosen, config.loss_weights)
            schedule.step()
            for t in TASKS:
                largest[t] += losses[0][t]
                smallest[t] += losses[1 if len(losses) > 1 else 0][t]
            count += 1
        result.steps += count
        result.largest.append({t: v / max(1, count) for t, v in largest.items()})
        result.smallest.append({t: v / max(1, count) for t, v in smallest.items()})
    network.eval()
    result.seconds = time.perf_counter() - start
    return result
