"""Small featurizers for windows (N, T, C) and the featurizer-plus-classifier base of domain algorithms.

DomainBed's algorithms are a featurizer and a classifier with a loss that differs per
method. :class:`FeaturizerClassifier` builds that pair from the ``backbone`` and ``width``
hyperparameters (a 1-D CNN, a small Transformer, or a 2-D CNN for CSI-like windows, all
CPU-sized) with one Adam optimizer, so a method writes only its ``update``; ``erm`` and the
algorithms of crossedge-sensing and crossedge-crossmodal share it, and so compare on equal
networks. torch is imported inside functions (registering an algorithm stays cheap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .contracts.algorithm import AlgorithmError, DomainAlgorithm, HParam

if TYPE_CHECKING:
    import torch

BACKBONES = ("cnn1d", "transformer", "csi2d")


def make_backbone(name: str, input_shape: tuple[int, int], width: int) -> torch.nn.Module:
    """The featurizer ``name`` for windows of ``input_shape`` (T, C), with ``out_features == width``."""
    import torch
    from torch import nn

    length, channels = input_shape

    class CNN1d(nn.Module):
        """Three 1-D convolutions over time (batch norm, ReLU), then mean and max pooling over time."""

        def __init__(self):
            super().__init__()
            layers, inp = [], channels
            for out, stride in ((width, 1), (width, 2), (width, 1)):
                layers += [nn.Conv1d(inp, out, 5, stride=stride, padding=2), nn.BatchNorm1d(out), nn.ReLU()]
                inp = out
            self.body = nn.Sequential(*layers)
            self.project = nn.Linear(2 * width, width)
            self.out_features = width

        def forward(self, x):
            h = self.body(x.transpose(1, 2))
            return self.project(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))

    class SmallTransformer(nn.Module):
        """Patches of 4 time steps embedded to ``width``, two encoder layers, mean pooling."""

        patch = 4

        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(self.patch * channels, width)
            self.position = nn.Parameter(torch.zeros(1, (length + self.patch - 1) // self.patch, width))
            layer = nn.TransformerEncoderLayer(
                width, nhead=4 if width % 4 == 0 else 1, dim_feedforward=2 * width, dropout=0.0, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)
            self.out_features = width

        def forward(self, x):
            n, t, c = x.shape
            pad = (-t) % self.patch
            if pad:
                x = torch.nn.functional.pad(x, (0, 0, 0, pad))
            tokens = self.embed(x.reshape(n, -1, self.patch * c)) + self.position
            return self.norm(self.encoder(tokens).mean(dim=1))

    class CSI2d(nn.Module):
        """The window as a one-channel image (time x subcarriers/channels): three 2-D convolutions, pooled."""

        def __init__(self):
            super().__init__()
            half = max(width // 2, 1)
            self.body = nn.Sequential(
                nn.Conv2d(1, half, 3, padding=1),
                nn.BatchNorm2d(half),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(half, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
            )
            self.out_features = width

        def forward(self, x):
            return self.body(x.unsqueeze(1)).mean(dim=(2, 3))

    builders = {"cnn1d": CNN1d, "transformer": SmallTransformer, "csi2d": CSI2d}
    if name not in builders:
        raise AlgorithmError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return builders[name]()


#: Hyperparameters every sensing algorithm has, with DomainBed-style seeded search distributions.
BASE_HPARAMS = {
    "lr": HParam(1e-3, lambda rng: float(10 ** rng.uniform(-4.0, -2.5)), "Adam learning rate"),
    "weight_decay": HParam(0.0, lambda rng: float(10 ** rng.uniform(-6.0, -2.0)), "Adam weight decay"),
    "width": HParam(32, lambda rng: int(rng.choice([16, 32, 64])), "feature width of the backbone"),
    "backbone": HParam("cnn1d", lambda rng: "cnn1d", f"featurizer: {', '.join(BACKBONES)}"),
}


class FeaturizerClassifier(DomainAlgorithm):
    """A featurizer and a linear classifier trained with Adam; subclasses write ``update`` (and maybe ``adapt``)."""

    HPARAMS = BASE_HPARAMS

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_domains: int,
        hparams: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__(input_shape, num_classes, num_domains, hparams, seed)
        import torch

        with self.seeded():
            self.featurizer = make_backbone(self.hparams["backbone"], self.input_shape, self.hparams["width"])
            self.classifier = torch.nn.Linear(self.featurizer.out_features, self.num_classes)
            self.build_extra()
        self.optimizer = self.make_optimizer(self.parameters())

    def build_extra(self) -> None:
        """Build method-specific networks (a domain discriminator...), under the seeded RNG; default none."""

    def parameters(self) -> list:
        """Every trainable parameter of every network."""
        return [p for module in self.networks().values() for p in module.parameters()]

    def make_optimizer(self, params) -> Any:
        """Adam with the ``lr`` and ``weight_decay`` hyperparameters."""
        import torch

        return torch.optim.Adam(params, lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])

    def train_mode(self, on: bool = True) -> None:
        """Put every network in training (or evaluation) mode."""
        for module in self.networks().values():
            module.train(on)

    def step(self, loss) -> None:
        """Zero the gradients, back-propagate ``loss`` and take one optimizer step."""
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def predict(self, x):
        """Logits (N, num_classes) from featurizer and classifier, in evaluation mode, without gradients."""
        import torch

        self.train_mode(False)
        with torch.no_grad():
            return self.classifier(self.featurizer(x))
