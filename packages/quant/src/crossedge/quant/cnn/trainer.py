"""Seeded training from scratch and test accuracy, the same for the fp32 and the 4-bit model."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from crossedge.core.bench import progress_bar

from .config import FourBitTrainingConfig
from .datasets import ImageSet
from .model import SmallCNN


@dataclass
class TrainingRun:
    """A trained model, its seconds of training and the per-epoch loss and test accuracy."""

    model: nn.Module
    seconds: float
    losses: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)


def build_model(data: ImageSet, config: FourBitTrainingConfig, form: str) -> SmallCNN:
    """A freshly initialized model; the seed makes every form start from the same weights."""
    torch.manual_seed(config.seed)
    return SmallCNN(data.shape, config, form)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Percent of ``x`` classified as ``y`` in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )
    model.train(was_training)
    return 100.0 * correct / max(1, len(y))


def train(model: nn.Module, data: ImageSet, config: FourBitTrainingConfig, *, desc: str = "train") -> TrainingRun:
    """Adam with a cosine schedule for ``config.epochs``; batches in an order fixed by ``config.seed``."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    run = TrainingRun(model=model, seconds=0.0)
    bar = progress_bar(range(config.epochs), desc=desc, unit="epoch")
    for _ in bar:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.train_y), generator=generator)
        total = 0.0
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        run.seconds += time.perf_counter() - start  # the per-epoch test pass below is not training time
        run.losses.append(total / len(order))
        run.test_accuracy.append(accuracy(model, data.test_x, data.test_y))
        bar.set_postfix(loss=f"{run.losses[-1]:.3f}", acc=f"{run.test_accuracy[-1]:.1f}")
    model.eval()
    return run
