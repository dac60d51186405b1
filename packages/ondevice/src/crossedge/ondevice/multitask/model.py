"""A shared CNN encoder with three task decoders whose widths (and optionally the encoder's) are chosen at run time.

Every convolution keeps the first ``round(width * channels)`` of its output channels and reads
the first input channels the layer before it kept, so one set of weights serves every width.
The encoder's batch norms are switchable (one per encoder width, as in Slimmable Networks,
since each width sees different statistics); the decoders use biases and no norm, because their
input statistics would depend on the encoder's width and their own at once. A *configuration*
is an encoder width plus one decoder width per task.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from crossedge.core import CrossedgeError

from .. import model_files
from .data import TASKS

#: The ``format`` written into a saved model's safetensors metadata.
FILE_FORMAT = "crossedge.ondevice.multitask/1"
#: The classifier's feature map is pooled to at most MAX_GRID x MAX_GRID before its linear head.
MAX_GRID = 7


@dataclass
class MultiTaskConfig:
    """Shape of a multi-task network; serializes to and from a plain dict."""

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    encoder_channels: tuple[int, ...] = (16, 32)
    encoder_strides: tuple[int, ...] = (1, 2)
    decoder_channels: int = 48
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of every task decoder
    encoder_widths: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)
        self.encoder_strides = tuple(int(s) for s in self.encoder_strides)
        self.widths = tuple(sorted(float(w) for w in self.widths))
        self.encoder_widths = tuple(sorted(float(w) for w in self.encoder_widths))
        for name, values in (("widths", self.widths), ("encoder_widths", self.encoder_widths)):
            if not values or any(not 0 < w <= 1 for w in values) or len(set(values)) != len(values):
                raise CrossedgeError(f"{name} must be distinct values in (0, 1], got {list(values)}")
        if len(self.encoder_channels) != len(self.encoder_strides) or not self.encoder_channels:
            raise CrossedgeError("encoder_channels and encoder_strides need one entry per conv layer")
        if self.decoder_channels < 1 or any(c < 1 for c in self.encoder_channels):
            raise CrossedgeError("channel counts must be positive")
        if any(s not in (1, 2) for s in self.encoder_strides) or self.image_size % self.total_stride:
            raise CrossedgeError(
                f"encoder strides must be 1 or 2 and their product ({self.total_stride}) must divide the image "
                f"size {self.image_size}, so the dense decoders can up-sample back to it"
            )

    @property
    def total_stride(self) -> int:
        """How much the encoder shrinks the image (the dense decoders' up-sampling factor)."""
        return math.prod(self.encoder_strides)

    def to_dict(self) -> dict[str, Any]:
        """A plain (JSON-able) dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiTaskConfig:
        """Rebuild a configuration written by :meth:`to_dict`; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CrossedgeError(f"unknown multitask config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)

    def configurations(self) -> list[Configuration]:
        """Every (encoder width, per-task widths) configuration, smallest first."""
        return [
            Configuration(e, tuple(ws))
            for e in self.encoder_widths
            for ws in itertools.product(self.widths, repeat=len(TASKS))
        ]

    @property
    def largest(self) -> Configuration:
        """Every width at its maximum."""
        return Configuration(max(self.encoder_widths), (max(self.widths),) * len(TASKS))

    @property
    def smallest(self) -> Configuration:
        """Every width at its minimum."""
        return Configuration(min(self.encoder_widths), (min(self.widths),) * len(TASKS))

    def indices(self, configuration: Configuration) -> tuple[int, tuple[int, ...]]:
        """The encoder width's index and each task width's index, or an error naming the valid widths."""
        if len(configuration.widths) != len(TASKS):
            raise CrossedgeError(f"a configuration needs one width per task {TASKS}, got {configuration.widths}")
        try:
            encoder = self.encoder_widths.index(configuration.encoder_width)
            tasks = tuple(self.widths.index(w) for w in configuration.widths)
        except ValueError:
            raise CrossedgeError(
                f"{configuration.label} is not a configuration of this network: encoder widths "
                f"{list(self.encoder_widths)}, task widths {list(self.widths)}"
            ) from None
        return encoder, tasks


def kept(full: int, width: float) -> int:
    """Channels a layer of ``full`` channels keeps at ``width`` (at least one)."""
    return max(1, round(full * width))


@dataclass(frozen=True)
class Configuration:
    """One run-time choice: the encoder's width and each task decoder's width (in ``TASKS`` order)."""

    encoder_width: float
    widths: tuple[float, ...]

    @property
    def label(self) -> str:
        """Text such as ``e1-c0.5-r0.25-s1`` (encoder, classify, reconstruct, segment)."""
        parts = [f"e{self.encoder_width:g}"] + [f"{t[0]}{w:g}" for t, w in zip(TASKS, self.widths, strict=True)]
        return "-".join(parts)

    def width_of(self, task: str) -> float:
        """The decoder width of ``task``."""
        return self.widths[TASKS.index(task)]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: encoder width and one width per task by name."""
        return {
            "encoder_width": self.encoder_width,
            **{f"{t}_width": w for t, w in zip(TASKS, self.widths, strict=True)},
        }


class SlicedConv2d(nn.Conv2d):
    """A conv run on the first ``cin`` input and ``cout`` output channels of its full weight."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__(cin, cout, kernel, stride, kernel // 2, bias=bias)

    def forward(self, x: torch.Tensor, cout: int) -> torch.Tensor:  # type: ignore[override]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, self.weight[:cout, : x.shape[1]], bias, self.stride, self.padding)


class SharedEncoder(nn.Module):
    """3x3 convs with switchable batch norms; the width index picks the channels and the norms."""

    def __init__(self, config: MultiTaskConfig):
        super().__init__()
        self.channels = [[kept(c, w) for c in config.encoder_channels] for w in config.encoder_widths]
        previous = config.in_channels
        self.convs = nn.ModuleList()
        for channels, stride in zip(config.encoder_channels, config.encoder_strides, strict=True):
            self.convs.append(SlicedConv2d(previous, channels, 3, stride, bias=False))
            previous = channels
        self.norms = nn.ModuleList(
            nn.ModuleList(nn.BatchNorm2d(c) for c in per_width) for per_width in zip(*self.channels, strict=True)
        )

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        for conv, norms, cout in zip(self.convs, self.norms, self.channels[index], strict=True):
            x = F.relu(norms[index](conv(x, cout)))
        return x


class ClassifyDecoder(nn.Module):
    """Strided conv, conv, the feature map flattened (pooled to at most 7x7), linear: class logits.

    Flattening keeps where in the image each stroke is; with global pooling instead, a shallow
    encoder's local features learned the digits several times slower.
    """

    def __init__(self, config: MultiTaskConfig):
        super().__init__()
        c = config.decoder_channels
        self.channels = [kept(c, w) for w in config.widths]
        self.first = SlicedConv2d(config.encoder_channels[-1], c, 3, 2)
        self.second = SlicedConv2d(c, c, 3, 1)
        size = (config.image_size // config.total_stride - 1) // 2 + 1  # after the strided conv
        self.grid = min(MAX_GRID, size)
        self.head = nn.Linear(c * self.grid * self.grid, config.num_classes)

    def forward(self, features: torch.Tensor, index: int) -> torch.Tensor:
        c = self.channels[index]
        x = F.relu(self.second(F.relu(self.first(features, c)), c))
        if x.shape[-1] != self.grid:
            x = F.adaptive_avg_pool2d(x, self.grid)
        # Flattened channel-major, the first c channels are the first c * grid * grid inputs of the head.
        n = c * self.grid * self.grid
        return F.linear(x.flatten(1), self.head.weight[:, :n], self.head.bias)


class DenseDecoder(nn.Module):
    """Two convs at the features' resolution, then a learned up-sampling to one value per image pixel.

    The transposed conv (kernel = stride = the encoder's total stride) keeps the 3x3 convs at the
    coarse resolution, where they cost a fraction of what they would at full size.
    """

    def __init__(self, config: MultiTaskConfig):
        super().__init__()
        c = config.decoder_channels
        self.channels = [kept(c, w) for w in config.widths]
        self.first = SlicedConv2d(config.encoder_channels[-1], c, 3, 1)
        self.second = SlicedConv2d(c, c, 3, 1)
        factor = config.total_stride
        self.up = nn.ConvTranspose2d(c, 1, factor, factor)

    def forward(self, features: torch.Tensor, index: int) -> torch.Tensor:
        c = self.channels[index]
        x = F.relu(self.second(F.relu(self.first(features, c)), c))
        return F.conv_transpose2d(x, self.up.weight[:c], self.up.bias, self.up.stride)


class MultiTaskNetwork(nn.Module):
    """Shared encoder plus classify, reconstruct and segment decoders; ``forward`` runs one configuration.

    Outputs: class logits (N, classes), the denoised image in [0, 1] (N, 1, H, W) and foreground
    logits (N, 1, H, W).
    """

    def __init__(self, config: MultiTaskConfig | None = None):
        super().__init__()
        self.config = config or MultiTaskConfig()
        self.encoder = SharedEncoder(self.config)
        self.decoders = nn.ModuleDict(
            {
                "classify": ClassifyDecoder(self.config),
                "reconstruct": DenseDecoder(self.config),
                "segment": DenseDecoder(self.config),
            }
        )

    def encode(self, x: torch.Tensor, encoder_width: float) -> torch.Tensor:
        """The shared features at ``encoder_width``."""
        if encoder_width not in self.config.encoder_widths:
            raise CrossedgeError(
                f"encoder width {encoder_width} is not one of this network's {list(self.config.encoder_widths)}"
            )
        return self.encoder(x, self.config.encoder_widths.index(encoder_width))

    def decode(self, task: str, features: torch.Tensor, width: float) -> torch.Tensor:
        """One task's output from shared features, its decoder at ``width``."""
        if task not in self.decoders:
            raise CrossedgeError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
        if width not in self.config.widths:
            raise CrossedgeError(f"width {width} is not one of this network's {list(self.config.widths)}")
        out = self.decoders[task](features, self.config.widths.index(width))
        return torch.sigmoid(out) if task == "reconstruct" else out

    def forward(
        self, x: torch.Tensor, configuration: Configuration, tasks: Sequence[str] = TASKS
    ) -> dict[str, torch.Tensor]:
        self.config.indices(configuration)  # refuse a configuration of another network before running
        features = self.encode(x, configuration.encoder_width)
        return {task: self.decode(task, features, configuration.width_of(task)) for task in tasks}


def save_network(
    network: MultiTaskNetwork, path: Path | str, *, force: bool = False, extra: dict | None = None
) -> Path:
    """Write the weights as safetensors with the config in its metadata (never over a file that is not ours)."""
    return model_files.save_with_config(network, path, FILE_FORMAT, "a multi-task network", force=force, extra=extra)


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a model may be written there: absent, a multi-task network written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, "a multi-task network", force=force)


def load_network(path: Path | str, config: MultiTaskConfig | None = None) -> MultiTaskNetwork:
    """Rebuild a network written by :func:`save_network`; refuses other files and, given ``config``, other shapes."""
    saved = MultiTaskConfig.from_dict(
        model_files.saved_config(path, FILE_FORMAT, "a multi-task network", "crossedge ondevice multitask train")
    )
    if config is not None and config.to_dict() != saved.to_dict():
        diff = {k: v for k, v in saved.to_dict().items() if config.to_dict()[k] != v}
        raise CrossedgeError(f"{path} holds a different multi-task network ({diff}); use one trained for this config")
    return model_files.load_state_checked(MultiTaskNetwork(saved), path)


def saved_extra(path: Path | str) -> dict[str, Any]:
    """The ``extra`` metadata a model file was saved with (training record), or {}."""
    return model_files.saved_extra(path)
