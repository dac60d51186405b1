"""Sandwich-rule training of the split network: every step trains the largest, the smallest and random settings.

As in Slimmable and Universally Slimmable Networks: the gradients of all sampled settings are
summed before one optimizer step, so the shared weights serve every width. With in-place
distillation (the default) the largest setting learns from the labels and the others from
its (detached) predictions, which keeps narrow widths from pulling the shared weights
towards their own, coarser solution.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from ..data import Split, batches
from .model import Setting, SplitNetwork


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train` with their defaults."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    random_settings: int = 2  # sampled per step besides the largest and the smallest
    distill: bool = True
    seed: int = 0
    sandwich: bool = True  # False: one random setting per step, on the labels (the ablation / separate nets)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.random_settings < 0:
            raise CrossedgeError(f"invalid training config {asdict(self)}: epochs >= 0, batch >= 1, lr > 0")


@dataclass
class TrainResult:
    """What training did, per epoch: the largest setting's cross-entropy and the smallest's training loss
    (its KL divergence from the largest when distilling, else its cross-entropy), and the time. Without the
    sandwich both lists hold the loss of the one setting each step drew."""

    epochs: int
    steps: int
    seconds: float
    largest_loss: list[float] = field(default_factory=list)
    smallest_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


def largest_setting(network: SplitNetwork) -> Setting:
    """The widest width at the most bits."""
    return network.setting(max(network.config.widths), max(network.config.bits))


def smallest_setting(network: SplitNetwork) -> Setting:
    """The narrowest width at the fewest bits."""
    return network.setting(min(network.config.widths), min(network.config.bits))


def sandwich(network: SplitNetwork, rng: random.Random, random_settings: int) -> list[Setting]:
    """The settings one step trains: largest first (the teacher), smallest, then random others."""
    big, small = largest_setting(network), smallest_setting(network)
    others = [s for s in network.settings if s not in (big, small)]
    picked = rng.sample(others, min(random_settings, len(others)))
    return [big, small, *picked] if small != big else [big, *picked]


def train_step(
    network: SplitNetwork,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    chosen: list[Setting],
    *,
    distill: bool,
) -> list[float]:
    """One sandwich step over ``chosen`` (the first is the teacher); returns each setting's loss."""
    optimizer.zero_grad(set_to_none=True)
    losses, teacher = [], None
    for i, setting in enumerate(chosen):
        logits = network(x, setting)
        if i == 0 or not distill:
            loss = F.cross_entropy(logits, y)
        else:
            loss = F.kl_div(F.log_softmax(logits, dim=1), teacher, reduction="batchmean")
        if i == 0:
            teacher = F.softmax(logits.detach(), dim=1)
        loss.backward()  # one backward per setting keeps only one graph alive at a time
        losses.append(float(loss.detach()))
    optimizer.step()
    return losses


def train(
    network: SplitNetwork, data: Split, config: TrainConfig | None = None, *, progress: bool = True
) -> TrainResult:
    """Train ``network`` in place on ``data`` with the sandwich rule; Adam, cosine learning rate."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    steps_per_epoch = -(-len(data) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * steps_per_epoch))
    result = TrainResult(config.epochs, 0, 0.0)
    start = time.perf_counter()
    network.train()
    for _ in progress_bar(range(config.epochs), desc="split train", enabled=progress, unit="epoch"):
        sums, count = [0.0, 0.0], 0
        for x, y in batches(data, config.batch_size, shuffle=True, generator=generator):
            if config.sandwich:
                chosen = sandwich(network, rng, config.random_settings)
            else:
                chosen = [rng.choice(network.settings)]
            losses = train_step(network, optimizer, x, y, chosen, distill=config.distill and config.sandwich)
            schedule.step()
            sums[0] += losses[0]
            sums[1] += losses[1] if len(losses) > 1 else losses[0]
            count += 1
        result.steps += count
        result.largest_loss.append(sums[0] / max(1, count))
        result.smallest_loss.append(sums[1] / max(1, count))
    network.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def predictions(network: SplitNetwork, data: Split, setting: Setting, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes of every image at ``setting`` (eval mode)."""
    was_training = network.training
    network.eval()
    out = [network(x, setting).argmax(dim=1) for x, _ in batches(data, batch_size, shuffle=False)]
    network.train(was_training)
    return torch.cat(out)


def accuracy(network: SplitNetwork, data: Split, setting: Setting) -> float:
    """Top-1 accuracy in percent at ``setting``."""
    return 100.0 * float((predictions(network, data, setting) == data.y).float().mean())
