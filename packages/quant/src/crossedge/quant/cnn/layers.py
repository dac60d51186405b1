"""The 4-bit training layers: tanh soft-clipped weight codes, unsigned activation codes, a straight-through round.

A weight ``w`` is squashed by ``tanh`` (soft clipping: large weights saturate instead of
being cut), and each output channel is scaled so that its largest ``|tanh(w)|`` lands on
the top code: ``codes = round(tanh(w) / s)`` with ``s = max|tanh(w)| / qmax``, so the
codes are the ``levels`` integers ``-qmax..qmax`` (15 levels, -7..7 at 4 bits) and the
weight the layer uses is ``codes * s``. Rounding passes its gradient straight through
and ``s`` is held constant in the backward pass, so ``d(codes * s)/dw = 1 - tanh(w)**2``.

The layers convolve the integer codes themselves and apply the scales afterwards. Every
product and partial sum of small integers is exact in float32, so training, evaluation and
the integer kernels of a saved model (``inference.py``) give the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Smallest channel scale: an all-zero channel gets codes 0 instead of a division by zero.
MIN_SCALE = 1e-12


class _RoundSTE(torch.autograd.Function):
    """Round to the nearest integer forward; pass the gradient through unchanged backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` whose gradient is the identity (the straight-through estimator)."""
    return _RoundSTE.apply(x)


def soft_clip(weight: torch.Tensor) -> torch.Tensor:
    """The tanh soft clipping applied to latent weights before they are quantized."""
    return torch.tanh(weight)


def quantize_weight(weight: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued weight codes in ``-qmax..qmax`` (float, with STE gradient) and per-output-channel scales."""
    clipped = soft_clip(weight)
    dims = tuple(range(1, weight.dim()))
    scale = (clipped.detach().abs().amax(dim=dims) / qmax).clamp_min(MIN_SCALE)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    codes = round_ste(clipped / scale.view(shape)).clamp(-qmax, qmax)
    return codes, scale


def output_scale(input_scale: float, weight_scale: torch.Tensor) -> torch.Tensor:
    """What an integer accumulator is multiplied by: the input step times each channel's weight scale.

    One function for training and for saved models, so both compute the same float32 values.
    """
    return weight_scale * input_scale


class ActivationQuantizer(nn.Module):
    """ReLU with a ceiling, then unsigned integer codes: ``round(clamp(x, 0, act_max) / step)``, 0..2**bits-1.

    The output is the codes (the step is folded into the next layer's scale); the gradient
    passes straight through inside ``[0, act_max]`` and is zero outside.
    """

    def __init__(self, bits: int, act_max: float) -> None:
        super().__init__()
        self.bits = bits
        self.act_max = float(act_max)
        self.top = 2**bits - 1

    @property
    def step(self) -> float:
        """The activation value one code stands for."""
        return self.act_max / self.top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return round_ste(x.clamp(0.0, self.act_max) / self.step)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, act_max={self.act_max}"


class FourBitConv2d(nn.Conv2d):
    """A Conv2d trained through its weight codes: ``conv(x, codes) * input_scale * s``.

    ``x`` is the integer codes of the previous quantizer (or pixel values), whose step is
    ``input_scale``; the latent float weight is what the optimizer updates.
    """

    def __init__(self, *args, qmax: int = 7, input_scale: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.qmax = qmax
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = quantize_weight(self.weight, self.qmax)
        y = F.conv2d(x, codes, None, self.stride, self.padding, self.dilation, self.groups)
        y = y * output_scale(self.input_scale, scale).view(1, -1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class FourBitLinear(nn.Linear):
    """A Linear trained through its weight codes: ``(x @ codes.T) * input_scale * s + bias``."""

    def __init__(self, *args, qmax: int = 7, input_scale: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.qmax = qmax
        self.input_scale = float(input_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = quantize_weight(self.weight, self.qmax)
        y = F.linear(x, codes) * output_scale(self.input_scale, scale)
        return y if self.bias is None else y + self.bias
