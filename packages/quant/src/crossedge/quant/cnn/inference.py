"""Integer layers for a saved 4-bit CNN: int8 codes multiplied by ``torch._int_mm`` into int32.

A convolution unfolds its input codes (im2col, channels last) into an int8 matrix and multiplies it by
the int8 weight codes with ``torch._int_mm``; the int32 sums are scaled in float32 by the
same :func:`~crossedge.quant.cnn.layers.output_scale` the trained model uses, so the
outputs match the trained model bit for bit. Inputs above 127 (8-bit pixels) are shifted
by a zero point of 128, which the weight column sums add back exactly. Where activations
are float (``act_bits=0``) or ``torch._int_mm`` is missing, ``kernel="float"`` convolves
the codes in float32 instead (exact too: the products and sums are small integers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import output_scale

KERNELS = ("int_mm", "float")


def int_mm_available() -> bool:
    """Whether this torch has the int8 x int8 -> int32 matmul on CPU."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except RuntimeError:
        return False
    return True


class IntegerConv2d(nn.Module):
    """A 3x3 convolution over integer input codes with int8 weight codes and per-channel float32 scales."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        input_scale: float = 1.0,
        input_zero_point: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.padding = padding
        self.input_scale = float(input_scale)
        self.input_zero_point = int(input_zero_point)
        self.kernel = "int_mm"
        self.register_buffer(
            "codes", torch.zeros(out_channels, in_channels, kernel_size, kernel_size, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = output_scale(self.input_scale, self.weight_scale)
        if self.kernel == "float":
            y = F.conv2d(x, self.codes.to(x.dtype), None, 1, self.padding)
            return y * scale.view(1, -1, 1, 1)
        n, c, h, w = x.shape
        k, p = self.kernel_size, self.padding
        out_h, out_w = h + 2 * p - k + 1, w + 2 * p - k + 1
        # im2col in int8, channels last: pad with pixel value 0 (code -zero_point once shifted), shift, narrow
        padded = F.pad(x, (p, p, p, p))
        codes_in = (padded - self.input_zero_point) if self.input_zero_point else padded
        codes_in = codes_in.to(torch.int8).contiguous(memory_format=torch.channels_last)
        windows = codes_in.permute(0, 2, 3, 1).unfold(1, k, 1).unfold(2, k, 1)  # (N, H, W, C, k, k)
        rows = windows.reshape(n * out_h * out_w, c * k * k)
        codes_t = self.codes.reshape(self.out_channels, -1).t().contiguous()
        acc = torch._int_mm(rows, codes_t)
        if self.input_zero_point:
            acc = acc + self.input_zero_point * codes_t.sum(dim=0, dtype=torch.int32)
        y = acc.to(torch.float32).view(n, out_h, out_w, self.out_channels).permute(0, 3, 1, 2)
        return y * scale.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, kernel={self.kernel}"


class IntegerLinear(nn.Module):
    """A linear layer over integer input codes with int8 weight codes, per-row scales and a float32 bias."""

    def __init__(self, in_features: int, out_features: int, *, input_scale: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.input_scale = float(input_scale)
        self.input_zero_point = 0
        self.kernel = "int_mm"
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = output_scale(self.input_scale, self.weight_scale)
        if self.kernel == "float":
            return F.linear(x, self.codes.to(x.dtype)) * scale + self.bias
        acc = torch._int_mm(x.to(torch.int8).contiguous(), self.codes.t().contiguous())
        return acc.to(torch.float32) * scale + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, kernel={self.kernel}"
