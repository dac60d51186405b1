"""``w8a8``, ``smoothquant`` and ``crossquant``: int8 weights with int8 activations quantized at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import ACT_GRANULARITIES, QuantConfig, check
from ..modules import FakeQuantLinear, Int8DynamicLinear
from ..primitives import EPS
from .common import fake_module, rtn_weight


@dataclass(kw_only=True)
class W8A8Config(QuantConfig):
    """Int8 weights with dynamically quantized int8 activations, int8 x int8 -> int32 matmul."""

    method: ClassVar[str] = "w8a8"

    weight_granularity: str = "per_channel"
    act_granularity: str = "per_token"

    def nominal_bits(self) -> int:
        """Always 8."""
        return 8

    def validate(self) -> None:
        check(
            self.weight_granularity in ("per_tensor", "per_channel"),
            f"w8a8 weight_granularity must be per_tensor or per_channel, got {self.weight_granularity!r}",
        )
        check(
            self.act_granularity in ACT_GRANULARITIES,
            f"act_granularity must be one of {ACT_GRANULARITIES}, got {self.act_granularity!r}",
        )


@dataclass(kw_only=True)
class SmoothQuantConfig(W8A8Config):
    """W8A8 after migrating activation outliers into weights: s_j = max|X_j|^alpha / max|W_j|^(1-alpha)."""

    method: ClassVar[str] = "smoothquant"

    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        check(0.0 <= self.alpha <= 1.0, f"smoothquant alpha must be in [0, 1], got {self.alpha}")


@dataclass(kw_only=True)
class CrossQuantConfig(W8A8Config):
    """W8A8 with CrossQuant activation scales t_i^alpha * c_j^(1-alpha) (row and column absolute maxima)."""

    method: ClassVar[str] = "crossquant"

    alpha: float = 0.15

    def validate(self) -> None:
        super().validate()
        check(0.0 <= self.alpha <= 1.0, f"crossquant alpha must be in [0, 1], got {self.alpha}")
        check(self.act_granularity == "per_token", "crossquant scales activations per token (row): keep per_token")


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
    produces = (Int8DynamicLinear, FakeQuantLinear)

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, W8A8Config)
        return Replacements({name: w8a8_module(linear, config) for name, linear in targets.items()})


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
    produces = (Int8DynamicLinear, FakeQuantLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, SmoothQuantConfig)
        stats = collect_stats(model, calibration, targets, absmax=True)
        out = {}
        for name, linear in targets.items():
            s = smoothing_factors(stats[name].col_absmax, linear.weight, config.alpha)
            out[name] = w8a8_module(linear, config, smooth=s)
        return Replacements(out)


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
    produces = (Int8DynamicLinear, FakeQuantLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, CrossQuantConfig)
        if config.fake:
            return Replacements(
                {name: w8a8_module(linear, config, cross_alpha=config.alpha) for name, linear in targets.items()}
            )
        stats = collect_stats(model, calibration, targets, absmax=True)
        out = {}
        for name, linear in targets.items():
            column = stats[name].col_absmax.clamp(min=EPS).pow(1 - config.alpha)
            out[name] = w8a8_module(linear, config, smooth=column, cross_alpha=config.alpha)
        return Replacements(out)
