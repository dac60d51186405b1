"""``w8a8``, ``smoothquant`` and ``crossquant``: int8 weights with int8 activations quantized at run time."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import ACT_GRANULARITIES, KernelTiming, QuantConfig, QuantConfigError, check
from ..modules import W8A8_MATMULS, FakeQuantLinear, Int8DynamicLinear, int_mm_is_exact
from ..primitives import EPS
from .common import fake_module, rtn_weight, time_kernels

#: Why ``auto`` skips timing where ``torch._int_mm`` is not exact.
INEXACT_INT_MM = "torch._int_mm returned wrong sums on this CPU (no VNNI: saturating 16-bit pairs)"
#: ``auto`` takes ``fp32-codes`` only when it times at least this much faster than the fastest matmul
#: that keeps int8 weights alone: its float copy of the codes costs an fp32 layer's memory, and on a
#: loaded machine near-ties between small layers' kernels flip from run to run.
FLOAT_COPY_MARGIN = 0.10


@dataclass(kw_only=True)
class W8A8Config(KernelTiming):
    """Int8 weights with dynamically quantized int8 activations; the integer sums on the matmul timed fastest here.

    ``matmul="auto"`` times the matmuls of :class:`Int8DynamicLinear` per layer shape at ``rows``
    and keeps the choice per machine; where ``torch._int_mm`` is not exact (CPUs without VNNI)
    it is left out, and the weight-only kernel and the float32 matmul on the codes compete.
    """

    method: ClassVar[str] = "w8a8"

    weight_granularity: str = "per_channel"
    act_granularity: str = "per_token"
    matmul: str = "auto"

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
        names = ("auto", *W8A8_MATMULS)
        check(self.matmul in names, f"matmul must be one of {', '.join(names)}, got {self.matmul!r}")
        super().validate()


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
    """W8A8 with CrossQuant activation scales t_i^alpha * c_j^(1-alpha) (row and column absolute maxima).

    ``widen`` (the default) lets a token whose values pass the calibrated column maxima take a
    wider scale instead of being clamped; ``widen=false`` clamps, as the scale alone would.
    ``alpha`` unset is 0.15 on the fake (paper) path and 0.5 on the integer path, where the column
    factor is folded into the int8 weights (each measured best of its path on SmolLM2-135M).
    """

    method: ClassVar[str] = "crossquant"

    alpha: float | None = None
    widen: bool = True

    def row_alpha(self) -> float:
        """The alpha this config runs with."""
        if self.alpha is not None:
            return self.alpha
        return 0.15 if self.fake else 0.5

    def validate(self) -> None:
        super().validate()
        check(self.alpha is None or 0.0 <= self.alpha <= 1.0, f"crossquant alpha must be in [0, 1], got {self.alpha}")
        check(self.act_granularity == "per_token", "crossquant scales activations per token (row): keep per_token")


def w8a8_module(
    linear: nn.Linear,
    config: W8A8Config,
    smooth: torch.Tensor | None = None,
    cross_alpha: float | None = None,
    cross_widen: bool = False,
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
        cross_widen=cross_widen,
    )


def with_matmuls(modules: dict[str, nn.Module], config: W8A8Config) -> Replacements:
    """``modules`` with each W8A8 layer on its config's matmul (``auto``: per shape, as chosen here)."""
    layers = {name: m for name, m in modules.items() if isinstance(m, Int8DynamicLinear)}
    if not layers:
        return Replacements(modules)
    if config.matmul == "int_mm" and not int_mm_is_exact():
        raise QuantConfigError(f"matmul=int_mm: {INEXACT_INT_MM}; use matmul=auto, int8pack-bf16 or fp32-codes")
    shapes: dict[tuple[int, int], list[str]] = {}
    for name, m in layers.items():
        shapes.setdefault((m.out_features, m.in_features), []).append(name)
    chosen: dict[str, dict[str, Any]] = {}
    for (out_f, in_f), names in shapes.items():
        if config.matmul != "auto":
            choice: dict[str, Any] = {"matmul": config.matmul}
        else:
            choice = choose_matmul(layers[names[0]], config)
        for name in names:
            layers[name].matmul = choice["matmul"]
        chosen[f"{out_f}x{in_f}"] = {**choice, "layers": len(names)}
    return Replacements(modules, {"matmuls": chosen})


def choose_matmul(layer: Int8DynamicLinear, config: W8A8Config) -> dict[str, Any]:
    """The faster W8A8 matmul for ``layer``'s shape: this machine's stored choice, else timed now."""
    from crossedge.core.measurements import MeasurementCache

    candidates = [m for m in W8A8_MATMULS if m != "int_mm" or int_mm_is_exact()]
    key = {
        "w8a8_shape": [layer.out_features, layer.in_features],
        "act_granularity": layer.act_granularity,
        "candidates": candidates,
        "rows": config.rows,
        "repeats": config.repeats,
        "float_copy_margin": FLOAT_COPY_MARGIN,
    }

    def measure() -> dict[str, Any]:
        # Shallow copies share the layer's buffers; only the matmul differs.
        variants = {}
        for matmul in candidates:
            variants[matmul] = copy.copy(layer)
            variants[matmul]._buffers = dict(layer._buffers)  # its own float copy of the codes, if any
            variants[matmul].matmul = matmul
        ms = time_kernels(variants, layer.in_features, config.rows, config.repeats)
        choice = {"matmul": min(ms, key=ms.__getitem__), "ms": {k: round(v, 5) for k, v in ms.items()}}
        why = [f"int_mm left out: {INEXACT_INT_MM}"] if "int_mm" not in candidates else []
        lean = {k: v for k, v in ms.items() if k != "fp32-codes"}
        if choice["matmul"] == "fp32-codes" and lean:
            best = min(lean, key=lean.__getitem__)
            if ms["fp32-codes"] > (1 - FLOAT_COPY_MARGIN) * lean[best]:
                choice["matmul"] = best
                why.append(f"fp32-codes within {FLOAT_COPY_MARGIN:.0%} of {best}, which stores no float copy")
        if why:
            choice["why"] = "; ".join(why)
        return choice

    return MeasurementCache("kernels").get_or_measure(key, measure, again=config.remeasure)


class W8A8Quantizer(Quantizer):
    """Plain W8A8: per-channel (or per-tensor) int8 weights, per-token (or per-tensor) dynamic int8 activations."""

    name = "w8a8"
    description = (
        "int8 weights and dynamic int8 activations (per token by default); integer sums on the matmul timed fastest"
    )
    config_class = W8A8Config
    produces = (Int8DynamicLinear, FakeQuantLinear)

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, W8A8Config)
        return with_matmuls({name: w8a8_module(linear, config) for name, linear in targets.items()}, config)


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
        return with_matmuls(out, config)


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
                {name: w8a8_module(linear, config, cross_alpha=config.row_alpha()) for name, linear in targets.items()}
            )
        stats = collect_stats(model, calibration, targets, absmax=True)
        out = {}
        alpha = config.row_alpha()
        for name, linear in targets.items():
            column = stats[name].col_absmax.clamp(min=EPS).pow(1 - alpha)
            out[name] = w8a8_module(linear, config, smooth=column, cross_alpha=alpha, cross_widen=config.widen)
        return with_matmuls(out, config)
