"""A CNN split between a device and a server: a slimmable encoder, a quantized bottleneck and a decoder.

Every convolution of the device-side encoder keeps the first ``round(width * channels)`` of its
output channels (and reads the first input channels the previous layer kept), so one set of
weights serves every width. Batch norm statistics differ between widths, so each width owns
its batch norms (switchable batch norm, as in Slimmable Networks); ``norm="none"`` uses biases
instead. The bottleneck conv keeps as many of its channels as the width says, its output is
quantized to ``bits`` bits per value, and the server's first conv reads only the channels
that were sent. A *setting* is a (width, bits) pair.
"""

from __future__ import annotations

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
from .bottleneck import Payload, fake_quantize, payload_size, quantize

NORMS = ("switchable", "none")
#: The ``format`` written into a saved model's safetensors metadata.
FILE_FORMAT = "crossedge.ondevice.split/1"


@dataclass
class SplitConfig:
    """Shape of a split network; serializes to and from a plain dict."""

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    encoder_channels: tuple[int, ...] = (16, 32, 32)
    encoder_strides: tuple[int, ...] = (1, 2, 2)
    bottleneck_channels: int = 8
    decoder_channels: int = 64
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    bits: tuple[int, ...] = (2, 4, 8)
    norm: str = "switchable"

    def __post_init__(self) -> None:
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)
        self.encoder_strides = tuple(int(s) for s in self.encoder_strides)
        self.widths = tuple(sorted(float(w) for w in self.widths))
        self.bits = tuple(sorted(int(b) for b in self.bits))
        if self.norm not in NORMS:
            raise CrossedgeError(f"unknown norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if not self.widths or any(not 0 < w <= 1 for w in self.widths) or len(set(self.widths)) != len(self.widths):
            raise CrossedgeError(f"widths must be distinct values in (0, 1], got {self.widths}")
        if not self.bits or any(not 1 <= b <= 8 for b in self.bits):
            raise CrossedgeError(f"bits must be 1 to 8, got {self.bits}")
        if len(self.encoder_channels) != len(self.encoder_strides) or not self.encoder_channels:
            raise CrossedgeError("encoder_channels and encoder_strides need one entry per conv layer")

    def to_dict(self) -> dict[str, Any]:
        """A plain (JSON-able) dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SplitConfig:
        """Rebuild a configuration written by :meth:`to_dict`; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CrossedgeError(f"unknown split config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)

    def channels_at(self, full: int) -> list[int]:
        """Channels each width keeps of a layer with ``full`` channels (at least one)."""
        return [max(1, round(full * w)) for w in self.widths]

    @property
    def bottleneck_size(self) -> tuple[int, int]:
        """Spatial size (height, width) of the bottleneck (3x3 convs, padding 1)."""
        size = self.image_size
        for stride in self.encoder_strides:
            size = (size - 1) // stride + 1
        return size, size


@dataclass(frozen=True)
class Setting:
    """One run-time choice: a width (by index) and the bits per bottleneck value."""

    width_index: int
    width: float
    bits: int
    channels: int  # bottleneck channels sent
    payload_bytes: int

    @property
    def label(self) -> str:
        """Text such as ``w0.50-b4``."""
        return f"w{self.width:.2f}-b{self.bits}"


def settings(config: SplitConfig) -> list[Setting]:
    """Every (width, bits) setting, smallest payload of each width first."""
    h, w = config.bottleneck_size
    out = []
    for i, (width, channels) in enumerate(
        zip(config.widths, config.channels_at(config.bottleneck_channels), strict=True)
    ):
        for bits in config.bits:
            out.append(Setting(i, width, bits, channels, payload_size(channels, h, w, bits)))
    return out


class SlimmableConv2d(nn.Conv2d):
    """A 3x3 or 1x1 conv whose input and output channels are sliced per width index."""

    def __init__(self, in_per_width: Sequence[int], out_per_width: Sequence[int], kernel: int, stride: int, bias: bool):
        super().__init__(max(in_per_width), max(out_per_width), kernel, stride, kernel // 2, bias=bias)
        self.in_per_width = list(in_per_width)
        self.out_per_width = list(out_per_width)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:  # type: ignore[override]
        cin, cout = self.in_per_width[index], self.out_per_width[index]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, self.weight[:cout, :cin], bias, self.stride, self.padding)


class SwitchableBatchNorm2d(nn.Module):
    """One batch norm per width: each width normalizes with its own statistics and affine."""

    def __init__(self, channels_per_width: Sequence[int]):
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels_per_width)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.norms[index](x)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return x


def _norm(config: SplitConfig, channels: Sequence[int]) -> nn.Module:
    return SwitchableBatchNorm2d(channels) if config.norm == "switchable" else _Identity()


class SlimmableEncoder(nn.Module):
    """The device side: slimmable 3x3 convs, then a 1x1 conv to the bottleneck channels the width keeps."""

    def __init__(self, config: SplitConfig):
        super().__init__()
        bias = config.norm == "none"
        n = len(config.widths)
        previous = [config.in_channels] * n
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for channels, stride in zip(config.encoder_channels, config.encoder_strides, strict=True):
            out = config.channels_at(channels)
            self.convs.append(SlimmableConv2d(previous, out, 3, stride, bias))
            self.norms.append(_norm(config, out))
            previous = out
        kept = config.channels_at(config.bottleneck_channels)
        self.bottleneck = SlimmableConv2d(previous, kept, 1, 1, bias)
        self.bottleneck_norm = _norm(config, kept)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x, index), index))
        # ReLU6 bounds the values the quantizer's per-image scale has to cover.
        return F.relu6(self.bottleneck_norm(self.bottleneck(x, index), index))


class ServerDecoder(nn.Module):
    """The server side: reads the bottleneck channels that were sent, decodes to class logits."""

    def __init__(self, config: SplitConfig):
        super().__init__()
        bias = config.norm == "none"
        n = len(config.widths)
        c = config.decoder_channels
        self.first = SlimmableConv2d(config.channels_at(config.bottleneck_channels), [c] * n, 3, 1, bias)
        # Per-width norms after the first conv: its input statistics depend on how many channels arrived.
        self.first_norm = _norm(config, [c] * n)
        self.second = nn.Conv2d(c, c, 3, 2, 1, bias=bias)
        self.second_norm = nn.BatchNorm2d(c) if config.norm == "switchable" else nn.Identity()
        self.classifier = nn.Linear(c, config.num_classes)

    def forward(self, z: torch.Tensor, index: int) -> torch.Tensor:
        x = F.relu(self.first_norm(self.first(z, index), index))
        x = F.relu(self.second_norm(self.second(x)))
        return self.classifier(x.mean(dim=(2, 3)))


class SplitNetwork(nn.Module):
    """Encoder, quantized bottleneck and decoder; ``forward`` runs both halves at one setting."""

    def __init__(self, config: SplitConfig | None = None):
        super().__init__()
        self.config = config or SplitConfig()
        self.encoder = SlimmableEncoder(self.config)
        self.decoder = ServerDecoder(self.config)
        self.settings = settings(self.config)

    def setting(self, width: float | None = None, bits: int | None = None) -> Setting:
        """The setting at ``width`` and ``bits`` (default: the largest of each)."""
        width = max(self.config.widths) if width is None else float(width)
        bits = max(self.config.bits) if bits is None else int(bits)
        for s in self.settings:
            if math.isclose(s.width, width) and s.bits == bits:
                return s
        raise CrossedgeError(
            f"no setting with width {width} and {bits} bits: widths {list(self.config.widths)}, "
            f"bits {list(self.config.bits)}"
        )

    def forward(self, x: torch.Tensor, setting: Setting) -> torch.Tensor:
        z = self.encoder(x, setting.width_index)
        return self.decoder(fake_quantize(z, setting.bits), setting.width_index)

    @torch.no_grad()
    def device_encode(self, x: torch.Tensor, setting: Setting) -> bytes:
        """The bytes the device sends for one image (1, C, H, W): encoder, quantizer, bit packing."""
        if x.dim() != 4 or x.shape[0] != 1:
            raise CrossedgeError(f"device_encode takes one image shaped (1, C, H, W), got {tuple(x.shape)}")
        codes, scale = quantize(self.encoder(x, setting.width_index), setting.bits)
        return Payload(setting.width_index, setting.bits, float(scale[0]), codes[0].numpy()).to_bytes()

    def payload_shapes(self) -> dict[int, tuple[int, int, int]]:
        """(channels, height, width) of the bottleneck each width index sends."""
        h, w = self.config.bottleneck_size
        return {i: (c, h, w) for i, c in enumerate(self.config.channels_at(self.config.bottleneck_channels))}

    def receive(self, data: bytes) -> Payload:
        """Parse the bytes one device sent (checked against this model's shapes)."""
        payload = Payload.from_bytes(data, self.payload_shapes())
        if payload.bits not in self.config.bits:
            raise CrossedgeError(f"payload uses {payload.bits} bits; this model was trained for {self.config.bits}")
        return payload

    @torch.no_grad()
    def server_decode(self, data: bytes) -> torch.Tensor:
        """Class logits (1, classes) from the bytes alone."""
        payload = self.receive(data)
        return self.decoder(payload.values(), payload.width_index)


def save_network(network: SplitNetwork, path: Path | str, *, force: bool = False, extra: dict | None = None) -> Path:
    """Write the weights as safetensors with the config in its metadata (never over a file that is not ours)."""
    return model_files.save_with_config(network, path, FILE_FORMAT, "a split network", force=force, extra=extra)


def check_writable(path: Path | str, *, force: bool = False) -> Path:
    """``path`` if a split network may be written there: absent, one written here, or ``force``."""
    return model_files.check_writable(path, FILE_FORMAT, "a split network", force=force)


def load_network(path: Path | str, config: SplitConfig | None = None) -> SplitNetwork:
    """Rebuild a network written by :func:`save_network`; refuses other files and, given ``config``, other shapes."""
    saved = SplitConfig.from_dict(
        model_files.saved_config(path, FILE_FORMAT, "a split network", "crossedge ondevice split train")
    )
    if config is not None and config.to_dict() != saved.to_dict():
        diff = {k: v for k, v in saved.to_dict().items() if config.to_dict()[k] != v}
        raise CrossedgeError(f"{path} holds a different split network ({diff}); use one trained for this config")
    return model_files.load_state_checked(SplitNetwork(saved), path)


def saved_extra(path: Path | str) -> dict[str, Any]:
    """The ``extra`` metadata a model file was saved with (training record), or {}."""
    return model_files.saved_extra(path)
