"""Helpers shared by the methods: build weight-only modules from integers, fake-quant replacements."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..modules import FakeQuantLinear, Int4WeightLinear, Int8WeightLinear, QuantizedLinear
from ..primitives import compute_qparams, dequantize, quantize


def weight_only_module(
    linear: nn.Linear,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    act_dtype: str,
) -> QuantizedLinear:
    """A weight-only kernel module from integers ``q [out, in]`` and per-group ``scale``/``zero`` ``[out, groups]``."""
    out_features, in_features = linear.weight.shape
    bias = linear.bias is not None
    if bits == 4:
        module = Int4WeightLinear(in_features, out_features, bias, group_size, act_dtype)
    else:
        module = Int8WeightLinear(
            in_features, out_features, bias, symmetric=bool((zero == 0).all()), act_dtype=act_dtype
        )
        scale, zero = scale.reshape(-1), zero.reshape(-1)
    module.set_quantized(q, scale, zero, linear.bias)
    return module


def fake_module(
    linear: nn.Linear,
    weight: torch.Tensor,
    *,
    act_bits: int | None = None,
    act_granularity: str = "per_token",
    cross_alpha: float | None = None,
    smooth: torch.Tensor | None = None,
) -> FakeQuantLinear:
    """A fake-quant module holding an already rounded float weight."""
    out_features, in_features = weight.shape
    module = FakeQuantLinear(
        in_features,
        out_features,
        linear.bias is not None,
        act_bits=act_bits,
        act_granularity=act_granularity,
        cross_alpha=cross_alpha,
        smooth=smooth is not None,
    )
    module.weight.copy_(weight)
    if smooth is not None:
        module.inv_smooth.copy_(1.0 / smooth.float())
    if linear.bias is not None:
        module.bias.copy_(linear.bias.detach().float())
    return module


def rtn_weight(weight: torch.Tensor, *, bits: int, granularity: str, symmetric: bool, group_size: int) -> torch.Tensor:
    """The weight rounded to nearest on its grid, back in float."""
    qp = compute_qparams(weight, bits=bits, granularity=granularity, symmetric=symmetric, group_size=group_size)
    return dequantize(quantize(weight, qp), qp)


def int4_supported(linear: nn.Linear) -> bool:
    """Whether the int4 CPU kernel takes this layer's shape (out_features divisible by 16)."""
    return linear.out_features % 16 == 0


def time_kernels(modules: dict[str, nn.Module], in_features: int, rows: list[int], repeats: int) -> dict[str, float]:
    """Milliseconds per call of each module, summed over ``rows`` (median of ``repeats``, rounds interleaved)."""
    inputs = {m: torch.randn(m, in_features) for m in rows}
    samples: dict[tuple[str, int], list[float]] = {(name, m): [] for name in modules for m in rows}
    with torch.inference_mode():
        for module in modules.values():
            for x in inputs.values():
                module(x)  # first calls pay packing and allocation
        for _ in range(repeats):
            for name, module in modules.items():
                for m, x in inputs.items():
                    start = time.perf_counter()
                    module(x)
                    samples[(name, m)].append(time.perf_counter() - start)
    return {name: 1e3 * sum(statistics.median(samples[(name, m)]) for m in rows) for name in modules}
