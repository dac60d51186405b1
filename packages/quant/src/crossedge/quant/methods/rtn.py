"""``rtn``: round-to-nearest weight-only int8 or int4 on the integer kernels."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..api import Quantizer, Replacements
from ..config import ACT_DTYPES, QuantConfig, check, check_weight
from ..modules import FakeQuantLinear, Int4WeightLinear, Int8WeightLinear
from ..primitives import compute_qparams, quantize
from .common import fake_module, int4_supported, rtn_weight, weight_only_module


@dataclass(kw_only=True)
class RTNConfig(QuantConfig):
    """Round-to-nearest weight-only quantization (int8 or int4)."""

    method: ClassVar[str] = "rtn"

    bits: int = 8
    granularity: str = "auto"
    group_size: int = 128
    symmetric: bool | None = None
    act_dtype: str = "bfloat16"

    def validate(self) -> None:
        # "auto" picks what the kernels for that width take: one scale per output
        # channel for int8, asymmetric groups for int4.
        if self.granularity == "auto":
            self.granularity = "per_channel" if self.bits == 8 else "per_group"
        if self.symmetric is None:
            self.symmetric = self.bits == 8
        check_weight(self.bits, self.granularity, self.group_size)
        check(self.act_dtype in ACT_DTYPES, f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")
        if self.bits == 4 and not self.fake:
            check(
                self.granularity == "per_group",
                "int4 weights run on the grouped int4 kernel: use granularity='per_group' "
                "(or fake=true for the research path)",
            )
        if self.bits == 8 and not self.fake:
            check(
                self.granularity != "per_group",
                "the int8 weight kernel takes one scale per output channel: use granularity 'per_channel' or "
                "'per_tensor' (or fake=true for grouped int8)",
            )


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
    produces = (Int8WeightLinear, Int4WeightLinear, FakeQuantLinear)

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, RTNConfig)
        out = {}
        for name, linear in targets.items():
            if config.bits == 4 and not config.fake and not int4_supported(linear):
                warnings.warn(
                    f"{name}: out_features {linear.out_features} not divisible by 16; kept in float", stacklevel=2
                )
                continue
            out[name] = rtn_module(linear, config)
        return Replacements(out)
