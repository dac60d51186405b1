"""MobileTL building blocks: 1-bit activation masks and shift-only normalization.

MobileTL (Chiang et al., 2023) makes transfer learning of inverted residual blocks cheap
in memory by (1) training only the shift of each normalization layer inside a tuned
block, so the layer needs no saved input for its backward pass (the frozen scale is a
constant), and (2) replacing the activation's backward with a sign function, so only a
binary mask of the input is kept instead of the activation map.

Here the backward of an activation ``f`` keeps one bit per element, ``f'(x) > 0``, and
passes ``grad * 1[f'(x) > 0]``. For ReLU6 the derivative is 0 or 1, so this is exact.
For Hard-Swish the derivative is ``(2x + 3) / 6`` on (-3, 3), 1 above 3 and 0 below -3:
the approximation replaces it by 1 where it is positive (x > -1.5) and by 0 elsewhere
(the small negative slope on (-3, -1.5) is dropped). The bits are packed eight to a byte.
"""

from __future__ import annotations

import torch
from torch import nn

from crossedge.core import CrossedgeError

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor into a flat uint8 tensor, eight elements per byte."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a boolean tensor of ``shape``."""
    numel = 1
    for dim in shape:
        numel *= dim
    bits = packed.unsqueeze(1).bitwise_and(_BIT_WEIGHTS.to(packed.device)).ne(0)
    return bits.reshape(-1)[:numel].reshape(shape)


def relu6_positive_derivative(x: torch.Tensor) -> torch.Tensor:
    """Where ReLU6's derivative is positive: 0 < x < 6."""
    return (x > 0) & (x < 6)


def hardswish_positive_derivative(x: torch.Tensor) -> torch.Tensor:
    """Where Hard-Swish's derivative ``(2x + 3) / 6`` (1 above 3) is positive: x > -1.5."""
    return x > -1.5


_KINDS = {
    "relu6": (nn.functional.relu6, relu6_positive_derivative),
    "hardswish": (nn.functional.hardswish, hardswish_positive_derivative),
}


class SignMaskActivation(torch.autograd.Function):
    """Apply an activation; keep only a packed 1-bit mask of ``f'(x) > 0`` for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str) -> torch.Tensor:  # type: ignore[override]
        fn, positive = _KINDS[kind]
        ctx.shape = x.shape
        ctx.save_for_backward(pack_bits(positive(x)))
        return fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        return grad * unpack_bits(packed, ctx.shape).to(grad.dtype), None


class SignMaskReLU6(nn.Module):
    """ReLU6 whose backward stores a 1-bit mask (exact for ReLU6)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SignMaskActivation.apply(x, "relu6")


class SignMaskHardswish(nn.Module):
    """Hard-Swish whose backward is approximated by a sign function over a 1-bit mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SignMaskActivation.apply(x, "hardswish")


def sign_mask_version(module: nn.Module) -> nn.Module:
    """The 1-bit-mask replacement of a ReLU6 or Hard-Swish module."""
    if isinstance(module, nn.ReLU6):
        return SignMaskReLU6()
    if isinstance(module, nn.Hardswish):
        return SignMaskHardswish()
    raise CrossedgeError(f"MobileTL masks ReLU6 and Hard-Swish, not {type(module).__name__}")


class AffineNorm(nn.Module):
    """A batch norm frozen into ``x * scale + shift``; only ``shift`` can be trained.

    Because ``scale`` is a constant, the backward pass needs no saved input: the
    gradient to ``x`` is ``grad * scale`` and the gradient to ``shift`` is a sum of ``grad``.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, trainable_shift: bool = True):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        if trainable_shift:
            self.shift = nn.Parameter(shift.detach().clone())
        else:
            self.register_buffer("shift", shift.detach().clone())

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, trainable_shift: bool = True) -> AffineNorm:
        """Fold a batch norm's running statistics and affine parameters (inference semantics)."""
        invstd = torch.rsqrt(bn.running_var + bn.eps)
        weight = bn.weight if bn.weight is not None else torch.ones_like(invstd)
        bias = bn.bias if bn.bias is not None else torch.zeros_like(invstd)
        scale = weight * invstd
        return cls(scale, bias - bn.running_mean * scale, trainable_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)
