"""``gptq``: weights quantized column by column, each rounding error compensated on the remaining columns.

Written from the GPTQ paper (Frantar et al., 2022): with ``H = X^T X`` of the layer
inputs, quantizing column ``j`` and spreading its error ``e`` over the later columns
by ``-e * Hinv[j, j:] / Hinv[j, j]`` (``Hinv`` the upper Cholesky factor of
``H^-1``) minimises the layer's squared output error, processed in lazy blocks.
Hessians come from one pass of the float model over the calibration data (the
original applies layers sequentially to quantized inputs; see docs/quant.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import ACT_DTYPES, QuantConfig, check, check_weight
from ..modules import FakeQuantLinear, Int4WeightLinear, Int8WeightLinear
from ..primitives import QParams, compute_qparams
from .common import fake_module, int4_supported, weight_only_module


@dataclass(kw_only=True)
class GPTQConfig(QuantConfig):
    """GPTQ: weights quantized column by column with Hessian-based error compensation."""

    method: ClassVar[str] = "gptq"

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    act_dtype: str = "bfloat16"

    def validate(self) -> None:
        check_weight(self.bits, "per_group", self.group_size)
        check(0.0 < self.damp < 1.0, f"gptq damp must be in (0, 1), got {self.damp}")
        check(self.block_size >= 1, f"gptq block_size must be positive, got {self.block_size}")
        check(self.act_dtype in ACT_DTYPES, f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")


def _group_qparams(
    w: torch.Tensor, bits: int, symmetric: bool, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    qp = compute_qparams(w, bits=bits, granularity="per_channel", symmetric=symmetric)
    # Round on the grid the kernel will use, so compensation sees the real rounding.
    return qp.scale.reshape(-1).to(scale_dtype).float(), qp.zero.reshape(-1)


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, through which error feedback spreads."""
    h = hessian + damp * torch.mean(torch.diag(hessian)) * torch.eye(hessian.shape[0], dtype=hessian.dtype)
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except RuntimeError as exc:  # pragma: no cover - damp keeps H positive definite in practice
        raise ValueError(f"the Hessian is not positive definite even with damp={damp}; raise damp") from exc


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    scale_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integers ``q [out, in]`` and per-group ``scale``, ``zero`` ``[out, groups]`` for ``weight``.

    ``group_size=None`` means one group per row (per channel). With ``act_order``
    columns are visited by decreasing Hessian diagonal while group parameters are
    fixed up front from the original weight ("static groups"), so groups stay
    contiguous in the original order as the int4 kernel requires.
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    group = group_size or cols
    groups = -(-cols // group)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    scale = torch.zeros(rows, groups)
    zero = torch.zeros(rows, groups)
    if act_order:
        for g in range(groups):
            scale[:, g], zero[:, g] = _group_qparams(w[:, g * group : (g + 1) * group], bits, symmetric, scale_dtype)
        perm = torch.argsort(torch.diag(h), descending=True)
    else:
        perm = torch.arange(cols)
    w = w[:, perm]
    h = h[perm][:, perm]
    hinv = inverse_hessian_factor(h, damp)

    # Without act_order a group's parameters are set at its first column from the
    # already-updated weights, so blocks must hold whole groups.
    block = max(group, (block_size // group) * group) if not act_order and group < cols else block_size
    q = torch.zeros(rows, cols, dtype=torch.int32)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1 = w[:, start:end].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[start:end, start:end]
        for i in range(end - start):
            col = start + i
            original = int(perm[col])
            g = original // group
            if not act_order and original % group == 0:
                scale[:, g], zero[:, g] = _group_qparams(w1[:, i : i + group], bits, symmetric, scale_dtype)
            s, z = scale[:, g], zero[:, g]
            wc = w1[:, i]
            qc = torch.clamp(torch.round(wc / s) + z, qmin, qmax)
            q[:, col] = qc.to(torch.int32)
            e = (wc - (qc - z) * s) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, end:] -= err1 @ hinv[start:end, end:]
    inverse = torch.argsort(perm)
    return q[:, inverse], scale, zero


def dequantize_grouped(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """Float weight from integers and per-group parameters ``[out, groups]``."""
    qp = QParams(scale[..., None], zero[..., None], bits=8, granularity="per_group", group_size=group)
    from ..primitives import dequantize

    return dequantize(q, qp)


class GPTQQuantizer(Quantizer):
    """GPTQ weight quantization (4-bit, group 128 by default), Hessians from calibration data."""

    name = "gptq"
    description = "GPTQ: Hessian-compensated weight rounding (int4 groups or int8 channels), act-order optional"
    config_class = GPTQConfig
    produces = (Int4WeightLinear, Int8WeightLinear, FakeQuantLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, GPTQConfig)
        if config.bits == 4 and not config.fake:
            targets = {n: m for n, m in targets.items() if int4_supported(m)}
        stats = collect_stats(model, calibration, targets, absmax=False, hessian=True)
        out = {}
        for name, linear in progress_bar(targets.items(), desc="gptq layers", total=len(targets)):
            group = config.group_size if config.bits == 4 else None
            q, scale, zero = gptq_quantize(
                linear.weight,
                stats[name].mean_hessian(),
                bits=config.bits,
                group_size=group,
                symmetric=config.symmetric,
                act_order=config.act_order,
                damp=config.damp,
                block_size=config.block_size,
                scale_dtype=torch.bfloat16 if config.act_dtype == "bfloat16" else torch.float32,
            )
            if config.fake:
                out[name] = fake_module(linear, dequantize_grouped(q, scale, zero, group or linear.in_features))
            else:
                out[name] = weight_only_module(
                    linear, q, scale, zero, bits=config.bits, group_size=config.group_size, act_dtype=config.act_dtype
                )
            stats[name].hessian = None  # free memory as we go
        return Replacements(out)
