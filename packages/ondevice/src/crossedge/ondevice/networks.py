"""Small networks defined in the package: a MobileNetV2-style CNN and a tiny BERT-like encoder wrapper."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError

ACTIVATIONS = ("relu6", "hardswish")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (``relu6`` or ``hardswish``)."""
    if name == "relu6":
        return nn.ReLU6()
    if name == "hardswish":
        return nn.Hardswish()
    raise CrossedgeError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")


@dataclass
class StageConfig:
    """One stage of inverted residual blocks: expansion, output channels, depth, first stride, kernel."""

    expansion: int
    channels: int
    depth: int
    stride: int
    kernel: int = 3


def digits_stages() -> list[StageConfig]:
    """Stages sized for 8x8 inputs: 8x8 -> 4x4 -> 2x2."""
    return [
        StageConfig(1, 16, 1, 1, 3),
        StageConfig(6, 24, 2, 2, 3),
        StageConfig(6, 32, 3, 2, 3),
        StageConfig(6, 48, 2, 1, 3),
    ]


@dataclass
class MobileNetConfig:
    """Configuration of :class:`MobileNetV2`; serializes to and from a plain dict."""

    num_classes: int = 10
    in_channels: int = 1
    width_mult: float = 1.0
    stem_channels: int = 16
    last_channels: int = 96
    activation: str = "relu6"
    stages: list[StageConfig] = field(default_factory=digits_stages)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the configuration."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MobileNetConfig:
        """Rebuild a configuration written by :meth:`to_dict`."""
        data = dict(data)
        data["stages"] = [StageConfig(**s) for s in data.get("stages", [])]
        return cls(**data)


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm and an optional activation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "relu6"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(activation(act))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, depthwise kxk, linear 1x1 projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel: int = 3, act: str = "relu6"):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(cin, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act))
        layers.append(ConvBNAct(hidden, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """A MobileNetV2-style network of inverted residual blocks with a width multiplier."""

    def __init__(self, config: MobileNetConfig | None = None, **overrides: Any):
        super().__init__()
        config = config or MobileNetConfig()
        if overrides:
            config = MobileNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        w = config.width_mult
        if w <= 0:
            raise CrossedgeError(f"width multiplier must be positive, got {w}")
        cin = make_divisible(config.stem_channels * w)
        blocks: list[nn.Module] = [ConvBNAct(config.in_channels, cin, 3, act=config.activation)]
        for stage in config.stages:
            if stage.kernel % 2 == 0 or stage.depth < 1:
                raise CrossedgeError(f"stage {stage} needs an odd kernel and a depth of at least 1")
            cout = make_divisible(stage.channels * w)
            for i in range(stage.depth):
                stride = stage.stride if i == 0 else 1
                blocks.append(InvertedResidual(cin, cout, stride, stage.expansion, stage.kernel, config.activation))
                cin = cout
        last = make_divisible(config.last_channels * max(1.0, w))
        blocks.append(ConvBNAct(cin, last, 1, act=config.activation))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(x)

    def inverted_residuals(self) -> list[InvertedResidual]:
        """The inverted residual blocks, input side first."""
        return [m for m in self.features if isinstance(m, InvertedResidual)]


def tiny_bert(seed: int = 0, layers: int = 2, hidden: int = 32, vocab_size: int = 100) -> nn.Module:
    """A randomly initialized BERT encoder small enough for unit tests, in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


class EncoderOutput(nn.Module):
    """Wrap a transformers encoder so it maps tensors to ``last_hidden_state`` (exportable)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def encoder_inputs(vocab_size: int, batch: int = 2, length: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids and a mask with some padding, as example inputs for an encoder."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[-1, length // 2 :] = 0
    return ids, mask


def parameter_count(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def parameter_bytes(model: nn.Module, only: Sequence[nn.Parameter] | None = None) -> int:
    """Bytes held by parameters (or by the given ones)."""
    params = list(only) if only is not None else list(model.parameters())
    return sum(p.numel() * p.element_size() for p in params)


@torch.no_grad()
def with_batch_statistics(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """Set every batch norm's running statistics from ``inputs`` and return the model in eval mode.

    An untrained network in eval mode normalizes with mean 0 and variance 1, so its activations
    shrink layer after layer (to ~1e-4 here) and a parity check on it would compare near-zeros.
    With statistics taken from data, activations have the scale of a trained network.
    """
    momenta = {}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            momenta[m] = m.momentum
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(*inputs)
    for m, momentum in momenta.items():
        m.momentum = momentum
    return model.eval()
