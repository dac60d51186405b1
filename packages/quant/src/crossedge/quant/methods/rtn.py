"""``rtn``: round-to-nearest weight-only int8 or int4 on the integer kernels."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..api import Quantizer
from ..config import QuantConfig, RTNConfig
from ..modules import Int8WeightLinear
from ..primitives import compute_qparams, quantize
from .common import fake_module, int4_supported, rtn_weight, weight_only_module


def rtn_module(linear: nn.Linear, config: RTNConfig) -> nn.Module:
    """One layer quantized by round-to-nearest under ``config``."""
    weight = linear.weight.detach().float()
    if config.fake:
        w = rtn_weight(
            weight,
            bits=config.bits,
            granularity=config.granularity,
            symmetric=config.symmetric,
            group_size=config.group_size,
        )
        return fake_module(linear, w)
    if config.bits == 8:
        return Int8WeightLinear.from_weight(
            weight,
            linear.bias,
            symmetric=config.symmetric,
            per_tensor=config.granularity == "per_tensor",
            act_dtype=config.act_dtype,
        )
    qp = compute_qparams(
        weight, bits=4, granularity="per_group", symmetric=config.symmetric, group_size=config.group_size
    )
    if config.act_dtype == "bfloat16":
        qp.scale = qp.scale.to(torch.bfloat16).float()  # quantize on the grid the kernel sees
    q = quantize(weight, qp)
    return weight_only_module(
        linear,
        q,
        qp.scale.squeeze(-1),
        qp.zero.squeeze(-1),
        bits=4,
        group_size=config.group_size,
        act_dtype=config.act_dtype,
    )


class RTNQuantizer(Quantizer):
    """Round-to-nearest weight-only quantization, no calibration."""

    name = "rtn"
    description = "round-to-nearest weight-only int8 (per channel) or int4 (per group)"
    config_class = RTNConfig

    def quantize(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> dict[str, nn.Module]:
        assert isinstance(config, RTNConfig)
        out = {}
        for name, linear in targets.items():
            if config.bits == 4 and not config.fake and not int4_supported(linear):
                warnings.warn(
                    f"{name}: out_features {linear.out_features} not divisible by 16; kept in float", stacklevel=2
                )
                continue
            out[name] = rtn_module(linear, config)
        return out
