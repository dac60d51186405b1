"""Quantize and dequantize tensors per tensor, channel, token or group, symmetric or asymmetric.

Integers are signed in ``[-2^(b-1), 2^(b-1) - 1]`` for both schemes; the asymmetric
scheme adds an integer zero point, so ``x ~ (q - zero) * scale`` everywhere. For a
2-D tensor, "per channel" and "per token" both mean one scale per row (weights are
``[out, in]``, activations are ``[tokens, features]``); "per group" splits each row
into groups of ``group_size`` consecutive columns, zero-padding a short last group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GRANULARITIES, QuantConfigError

EPS = 1e-8


@dataclass
class QParams:
    """Scale and zero point shaped to broadcast against the (grouped) tensor they came from."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    granularity: str
    group_size: int | None = None

    @property
    def qmin(self) -> int:
        """Smallest integer."""
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Largest integer."""
        return 2 ** (self.bits - 1) - 1


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, cols = x.shape
    padded = -(-cols // group_size) * group_size
    if padded != cols:
        x = torch.nn.functional.pad(x, (0, padded - cols))
    return x.reshape(rows, padded // group_size, group_size)


def _view(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """The tensor shaped so that the reduction for one scale is over the last dimension."""
    if granularity not in GRANULARITIES:
        raise QuantConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if granularity == "per_tensor":
        return x.reshape(1, -1)
    x2 = x.reshape(-1, x.shape[-1])
    if granularity == "per_group":
        if not group_size:
            raise QuantConfigError("per_group quantization needs a group_size")
        return _grouped(x2, group_size)
    return x2


def compute_qparams(
    x: torch.Tensor,
    *,
    bits: int,
    granularity: str,
    symmetric: bool = True,
    group_size: int | None = None,
) -> QParams:
    """Absolute-max (symmetric) or min-max (asymmetric) scales for ``x``."""
    view = _view(x.detach().float(), granularity, group_size)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        scale = (view.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=EPS)
        zero = torch.zeros_like(scale)
    else:
        # The range always contains 0 so that zero (and zero padding) is exact.
        lo = view.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = view.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
        zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return QParams(scale, zero, bits, granularity, group_size if granularity == "per_group" else None)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integers (int32, shape of ``x``) for ``x`` under ``qp``."""
    view = _view(x.detach().float(), qp.granularity, qp.group_size)
    q = torch.clamp(torch.round(view / qp.scale) + qp.zero, qp.qmin, qp.qmax).to(torch.int32)
    return _unview(q, x.shape, qp)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Float values ``(q - zero) * scale`` with the shape of ``q``."""
    view = _view(q.float(), qp.granularity, qp.group_size)
    return _unview((view - qp.zero) * qp.scale, q.shape, qp)


def _unview(v: torch.Tensor, shape: torch.Size, qp: QParams) -> torch.Tensor:
    if qp.granularity == "per_group":
        v = v.reshape(v.shape[0], -1)[:, : shape[-1]]
    return v.reshape(shape)


def fake_quantize(
    x: torch.Tensor, *, bits: int, granularity: str, symmetric: bool = True, group_size: int | None = None
) -> torch.Tensor:
    """Quantize then dequantize in one call (the research path)."""
    qp = compute_qparams(x, bits=bits, granularity=granularity, symmetric=symmetric, group_size=group_size)
    return dequantize(quantize(x, qp), qp).to(x.dtype)
