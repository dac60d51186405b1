"""scikit-learn's 8x8 handwritten digits as tensors, with a class-split transfer task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from crossedge.core import CrossedgeError

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


@dataclass
class Split:
    """Images ``x`` (N, 1, 8, 8, standardized) and labels ``y`` (N,) renumbered from 0."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DigitsTask:
    """A train/test pair over a subset of digit classes."""

    name: str
    classes: tuple[int, ...]
    train: Split
    test: Split

    @property
    def num_classes(self) -> int:
        """How many classes the task has."""
        return len(self.classes)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CrossedgeError("the digits tasks need scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits_task(classes: Sequence[int] = tuple(range(10)), *, test_fraction: float = 0.3, seed: int = 0) -> DigitsTask:
    """A stratified train/test split of the digits in ``classes`` (labels renumbered 0..k-1)."""
    images, targets = _digits()
    classes = tuple(int(c) for c in classes)
    if not classes or any(c not in range(10) for c in classes) or len(set(classes)) != len(classes):
        raise CrossedgeError(f"classes must be distinct digits 0-9, got {classes}")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in classes:
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        cut = int(round(len(idx) * test_fraction))
        test_idx.extend(idx[:cut])
        train_idx.extend(idx[cut:])
    remap = {c: i for i, c in enumerate(classes)}

    def split(idx: list[int]) -> Split:
        idx = np.array(sorted(idx))
        # Pixel values are 0..16; a fixed standardization keeps every task on the same scale.
        x = torch.from_numpy((images[idx] / 16.0 - 0.3) / 0.4).unsqueeze(1)
        y = torch.tensor([remap[int(t)] for t in targets[idx]], dtype=torch.long)
        return Split(x, y)

    name = "digits-" + "".join(str(c) for c in classes)
    return DigitsTask(name, classes, split(train_idx), split(test_idx))


def transfer_tasks(seed: int = 0) -> tuple[DigitsTask, DigitsTask]:
    """The transfer task: pre-train on digits 0-4, adapt to the unseen digits 5-9."""
    return digits_task(SOURCE_CLASSES, seed=seed), digits_task(TARGET_CLASSES, seed=seed)


def batches(split: Split, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches."""
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]
