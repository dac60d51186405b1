"""Featurizers for windows (N, T, C): a 1-D CNN, a small Transformer and a 2-D CNN for CSI, all CPU-sized.

Each maps windows to features (N, width); :func:`make_backbone` builds one by name, which is
what the ``backbone`` hyperparameter of every sensing algorithm names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossedge.core.contracts.algorithm import AlgorithmError

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
