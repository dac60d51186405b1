"""``w8a8``, ``smoothquant`` and ``crossquant``: int8 weights with int8 activations quantized at run time."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..api import Quantizer
from ..calibration import collect_stats
from ..config import CrossQuantConfig, QuantConfig, SmoothQuantConfig, W8A8Config
from ..modules import Int8DynamicLinear
from ..primitives import EPS
from .common import fake_module, rtn_weight


def w8a8_module(
    linear: nn.Linear, config: W8A8Config, smooth: torch.Tensor | None = None, cross_alpha: float | None = None
) -> nn.Module:
    """One W8A8 layer; ``smooth`` scales weight columns up and inputs down by the same vector."""
    per_tensor = config.weight_granularity == "per_tensor"
    if config.fake:
        w = linear.weight.detach().float()
        if smooth is not None:
            w = w * smooth[None, :]
        w = rtn_weight(w, bits=8, granularity=config.weight_granularity, symmetric=True, group_size=128)
        return fake_module(
            linear, w, act_bits=8, act_granularity=config.act_granularity, cross_alpha=cross_alpha, smooth=smooth
        )
    return Int8DynamicLinear.from_weight(
        linear.weight,
        linear.bias,
        per_tensor_weight=per_tensor,
        act_granularity=config.act_granularity,
        smooth=smooth,
        cross_alpha=cross_alpha,
    )


class W8A8Quantizer(Quantizer):
    """Plain W8A8: per-channel (or per-tensor) int8 weights, per-token (or per-tensor) dynamic int8 activations."""

    name = "w8a8"
    description = "int8 weights and dynamic int8 activations (per token by default) on torch._int_mm"
    config_class = W8A8Config

    def quantize(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> dict[str, nn.Module]:
        assert isinstance(config, W8A8Config)
        return {name: w8a8_module(linear, config) for name, linear in targets.items()}


def smoothing_factors(col_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)."""
    w_absmax = weight.detach().float().abs().amax(0).clamp(min=EPS)
    s = col_absmax.clamp(min=EPS).pow(alpha) / w_absmax.pow(1 - alpha)
    return s.clamp(min=1e-5)


class SmoothQuantQuantizer(Quantizer):
    """SmoothQuant: activation outliers migrated into the weights with strength alpha, then W8A8."""

    name = "smoothquant"
    description = "W8A8 after SmoothQuant's per-channel smoothing (alpha, activation maxima from calibration)"
    config_class = SmoothQuantConfig
    needs_calibration = True

    def quantize(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> dict[str, nn.Module]:
        assert isinstance(config, SmoothQuantConfig)
        stats = collect_stats(model, calibration, targets, absmax=True)
        out = {}
        for name, linear in targets.items():
            s = smoothing_factors(stats[name].col_absmax, linear.weight, config.alpha)
            out[name] = w8a8_module(linear, config, smooth=s)
        return out


class CrossQuantQuantizer(Quantizer):
    """CrossQuant: activation scale t_i^alpha * c_j^(1-alpha) from row maxima t and column maxima c.

    The integer path needs the column part static to fold it into the weights, so
    ``c`` is the column absolute maximum over the calibration data and the row part
    is computed per token at run time; the fake path (``fake=true``) uses the
    current batch's column maxima, as the paper writes it.
    """

    name = "crossquant"
    description = "W8A8 with CrossQuant row x column activation scales (column maxima from calibration)"
    config_class = CrossQuantConfig
    needs_calibration = True

    def quantize(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> dict[str, nn.Module]:
        assert isinstance(config, CrossQuantConfig)
        if config.fake:
            return {name: w8a8_module(linear, config, cross_alpha=config.alpha) for name, linear in targets.items()}
        stats = collect_stats(model, calibration, targets, absmax=True)
        out = {}
        for name, linear in targets.items():
            column = stats[name].col_absmax.clamp(min=EPS).pow(1 - config.alpha)
            out[name] = w8a8_module(linear, config, smooth=column, cross_alpha=config.alpha)
        return out
