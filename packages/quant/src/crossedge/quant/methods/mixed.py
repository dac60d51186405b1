"""``mixed``: per-layer bit widths chosen by an integer linear program under a memory budget (OHQ-style).

Each layer ``l`` and width ``b`` gets a sensitivity ``e[l, b]``, the layer's output
error on the calibration data when its weight is rounded to ``b`` bits,
``trace(dW H dW^T) / tokens`` with ``H = X^T X``, and a cost ``c[l, b]``, the bytes
of the quantized module as stored. The program picks one width per layer:
minimise ``sum e[l, b] x[l, b]`` subject to ``sum_b x[l, b] = 1`` and
``sum c[l, b] x[l, b] <= budget``, ``x`` binary, solved by ``scipy.optimize.milp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from crossedge.core.bench import progress_bar
from crossedge.core.errors import CrossedgeError

from ..api import Quantizer, Replacements
from ..calibration import collect_stats
from ..config import GROUP_SIZES, QuantConfig, check
from ..modules import FakeQuantLinear, Int4WeightLinear, Int8WeightLinear
from .common import int4_supported, rtn_weight
from .rtn import RTNConfig, rtn_module


@dataclass(kw_only=True)
class MixedConfig(QuantConfig):
    """Per-layer bit widths chosen by an integer linear program under a weight-memory budget.

    The budget is ``budget_bytes`` when given, else ``budget_fraction`` of the fp32
    bytes of the layers being quantized.
    """

    method: ClassVar[str] = "mixed"

    bit_choices: list[int] = field(default_factory=lambda: [4, 8])
    group_size: int = 128
    budget_fraction: float = 0.2
    budget_bytes: int | None = None
    act_dtype: str = "bfloat16"

    def nominal_bits(self) -> int:
        """The smallest width it may choose."""
        return min(self.bit_choices)

    def validate(self) -> None:
        self.bit_choices = sorted({int(b) for b in self.bit_choices})
        check(
            bool(self.bit_choices) and all(b in (4, 8) for b in self.bit_choices),
            f"mixed bit_choices must be drawn from 4 and 8, got {self.bit_choices}",
        )
        check(self.group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        check(0.0 < self.budget_fraction <= 1.0, f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        check(
            self.budget_bytes is None or self.budget_bytes > 0,
            f"budget_bytes must be positive, got {self.budget_bytes}",
        )


class BudgetError(CrossedgeError):
    """No assignment of bit widths fits the memory budget."""


@dataclass
class BitPlan:
    """The solver's answer: a width per layer, the bytes used, the budget and the predicted error."""

    bits: dict[str, int]
    bytes_used: int
    budget: int
    predicted_error: float


def solve_bit_allocation(errors: np.ndarray, costs: np.ndarray, budget: float) -> list[int]:
    """Choice index per row minimising total error with total cost <= budget; ``inf`` marks forbidden choices."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    errors = np.asarray(errors, dtype=float)
    costs = np.asarray(costs, dtype=float)
    layers, choices = errors.shape
    allowed = np.isfinite(errors) & np.isfinite(costs)
    if not allowed.any(axis=1).all():
        raise BudgetError("a layer has no allowed bit width")
    cheapest = np.where(allowed, costs, np.inf).min(axis=1).sum()
    if cheapest > budget:
        raise BudgetError(
            f"memory budget {int(budget)} bytes is below the smallest possible size {int(cheapest)} bytes "
            "(every layer at its narrowest width): raise the budget"
        )
    # Normalise so the solver's tolerances behave whatever the scale of the errors.
    scale = np.nanmax(np.where(allowed, np.abs(errors), np.nan)) or 1.0
    c = np.where(allowed, errors / scale, 0.0).ravel()
    one_each = np.zeros((layers, layers * choices))
    for layer in range(layers):
        one_each[layer, layer * choices : (layer + 1) * choices] = 1.0
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(np.where(allowed, costs, 0.0).ravel()[None, :], -np.inf, budget),
    ]
    upper = allowed.astype(float).ravel()
    result = milp(c, constraints=constraints, integrality=np.ones_like(c), bounds=Bounds(0, upper))
    if result.x is None:
        raise BudgetError(f"the bit-allocation program found no solution: {result.message}")
    x = np.round(result.x).reshape(layers, choices)
    return [int(i) for i in x.argmax(axis=1)]


def module_bytes(linear: nn.Linear, bits: int, group_size: int, act_dtype: str) -> int:
    """Bytes of the module a layer becomes at ``bits`` (buffers as stored)."""
    args = (linear.in_features, linear.out_features, linear.bias is not None)
    if bits == 4:
        return Int4WeightLinear(*args, group_size, act_dtype).weight_bytes()
    return Int8WeightLinear(*args, True, act_dtype).weight_bytes()


def layer_error(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int) -> float:
    """``trace(dW H dW^T)``: the mean squared output error of rounding ``weight`` to ``bits``."""
    w = weight.detach().float()
    granularity = "per_group" if bits == 4 else "per_channel"
    dw = w - rtn_weight(w, bits=bits, granularity=granularity, symmetric=bits == 8, group_size=group_size)
    return float(((dw @ hessian) * dw).sum())


def plan_bits(targets: dict[str, nn.Linear], hessians: dict[str, torch.Tensor], config: MixedConfig) -> BitPlan:
    """Measure sensitivities and costs for every layer and width, then solve the program."""
    names = list(targets)
    choices: Sequence[int] = config.bit_choices
    errors = np.full((len(names), len(choices)), np.inf)
    costs = np.full((len(names), len(choices)), np.inf)
    for i, name in enumerate(progress_bar(names, desc="mixed: layer sensitivities")):
        linear = targets[name]
        for j, bits in enumerate(choices):
            if bits == 4 and not int4_supported(linear):
                continue
            errors[i, j] = layer_error(linear.weight, hessians[name], bits, config.group_size)
            costs[i, j] = module_bytes(linear, bits, config.group_size, config.act_dtype)
    if config.budget_bytes is not None:
        budget = int(config.budget_bytes)
    else:
        fp32 = sum(m.weight.numel() * 4 + (m.bias.numel() * 4 if m.bias is not None else 0) for m in targets.values())
        budget = int(config.budget_fraction * fp32)
    picks = solve_bit_allocation(errors, costs, budget)
    bits = {name: int(choices[j]) for name, j in zip(names, picks, strict=True)}
    used = int(sum(costs[i, j] for i, j in enumerate(picks)))
    predicted = float(sum(errors[i, j] for i, j in enumerate(picks)))
    return BitPlan(bits, used, budget, predicted)


class MixedQuantizer(Quantizer):
    """Mixed precision: int4 or int8 per layer, chosen by linear programming under a memory budget."""

    name = "mixed"
    description = "per-layer int4/int8 widths from an integer linear program under a weight-memory budget"
    config_class = MixedConfig
    produces = (Int4WeightLinear, Int8WeightLinear, FakeQuantLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, MixedConfig)
        stats = collect_stats(model, calibration, targets, absmax=False, hessian=True)
        plan = plan_bits(targets, {n: s.mean_hessian() for n, s in stats.items()}, config)
        details = {
            "budget_bytes": plan.budget,
            "bytes_used": plan.bytes_used,
            "predicted_error": plan.predicted_error,
            "layers_per_width": {str(b): sum(1 for v in plan.bits.values() if v == b) for b in config.bit_choices},
            "bits": plan.bits,
        }
        out = {}
        for name, linear in targets.items():
            bits = plan.bits[name]
            rtn = RTNConfig(bits=bits, group_size=config.group_size, fake=config.fake, act_dtype=config.act_dtype)
            out[name] = rtn_module(linear, rtn)
        return Replacements(out, details)
