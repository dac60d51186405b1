"""The small CNN, in three forms with one topology: fp32, 4-bit for training, and integer for saved models.

Three blocks of 3x3 convolution, batch norm and activation (``width``, ``2*width``,
``4*width`` channels, max pooling after the last two, and after the first on images larger
than 8x8), then one linear classifier. Every form takes raw pixel values (digits 0..16,
MNIST 0..255) and builds its modules in the same order, so one seed gives the fp32 and the
4-bit model the same initial weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .config import FourBitTrainingConfig
from .layers import ActivationQuantizer, FourBitConv2d, FourBitLinear

FORMS = ("fp32", "fourbit", "integer")


@dataclass(frozen=True)
class CNNShape:
    """What the network's tensors depend on: the images and the classes."""

    in_channels: int
    image_size: int
    num_classes: int
    pixel_max: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _pools(image_size: int) -> tuple[bool, bool, bool]:
    return (image_size > 8, True, True)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; ``form`` picks float, 4-bit training or integer layers."""

    def __init__(self, shape: CNNShape, config: FourBitTrainingConfig, form: str = "fourbit") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.shape = shape
        self.form = form
        self.pixel_scale = 1.0 / shape.pixel_max
        quantized_acts = form != "fp32" and config.act_bits > 0
        step = config.act_max / (2**config.act_bits - 1) if quantized_acts else 1.0
        channels = [config.width, 2 * config.width, 4 * config.width]
        blocks: list[nn.Module] = []
        size, previous = shape.image_size, shape.in_channels
        for i, (out, pool) in enumerate(zip(channels, _pools(shape.image_size), strict=True)):
            input_scale = self.pixel_scale if i == 0 else step
            zero_point = 128 if i == 0 and shape.pixel_max > 127 else 0
            blocks.append(self._conv(form, previous, out, config, input_scale, zero_point))
            blocks.append(nn.BatchNorm2d(out))
            blocks.append(ActivationQuantizer(config.act_bits, config.act_max) if quantized_acts else nn.ReLU())
            if pool:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            previous = out
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()
        self.classifier = self._linear(form, previous * size * size, shape.num_classes, config, step)

    @staticmethod
    def _conv(form: str, cin: int, cout: int, config: FourBitTrainingConfig, input_scale: float, zero_point: int):
        if form == "fp32":
            return nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        if form == "fourbit":
            return FourBitConv2d(cin, cout, 3, padding=1, bias=False, qmax=config.qmax, input_scale=input_scale)
        from .inference import IntegerConv2d

        return IntegerConv2d(cin, cout, 3, padding=1, input_scale=input_scale, input_zero_point=zero_point)

    @staticmethod
    def _linear(form: str, fin: int, fout: int, config: FourBitTrainingConfig, input_scale: float):
        if form == "fp32":
            return nn.Linear(fin, fout)
        if form == "fourbit":
            return FourBitLinear(fin, fout, qmax=config.qmax, input_scale=input_scale)
        from .inference import IntegerLinear

        return IntegerLinear(fin, fout, input_scale=input_scale)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for raw pixel values of shape (N, C, H, W)."""
        x = pixels * self.pixel_scale if self.form == "fp32" else pixels
        return self.classifier(self.flatten(self.features(x)))


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's 4-bit (or integer) convolutions and linears by name."""
    from .inference import IntegerConv2d, IntegerLinear

    kinds = (FourBitConv2d, FourBitLinear, IntegerConv2d, IntegerLinear)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}
