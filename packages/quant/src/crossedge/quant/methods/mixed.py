"""``mixed``: per-layer bit widths chosen by an integer linear program under memory and latency budgets (OHQ-style).

Each layer ``l`` and width ``b`` gets a sensitivity ``e[l, b]``, the layer's output
error on the calibration data when its weight is rounded to ``b`` bits,
``trace(dW H dW^T) / tokens`` with ``H = X^T X``, and a cost ``c[l, b]``, the bytes
of the quantized module as stored. The program picks one width per layer:
minimise ``sum e[l, b] x[l, b]`` subject to ``sum_b x[l, b] = 1`` and
``sum c[l, b] x[l, b] <= budget``, ``x`` binary, solved by ``scipy.optimize.milp``.

With ``latency_ms`` there is a second constraint, ``sum t[l, b] x[l, b] <= latency_ms``,
where ``t[l, b]`` is the layer's kernel at width ``b`` timed on this CPU at ``rows`` (one
token and a verification block, summed, as the presets time theirs), once per layer shape
and kept per machine. Which width is faster is the CPU's to say: the int4 kernel is not
always faster than the int8 one.
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
from ..config import GROUP_SIZES, KernelTiming, QuantConfig, check
from ..modules import FakeQuantLinear, Int4WeightLinear, Int8WeightLinear
from .common import int4_supported, rtn_weight, time_kernels
from .rtn import RTNConfig, rtn_module


@dataclass(kw_only=True)
class MixedConfig(KernelTiming):
    """Per-layer bit widths chosen by an integer linear program under a weight-memory budget, and a latency one.

    The memory budget is ``budget_bytes`` when given, else ``budget_fraction`` of the fp32
    bytes of the layers being quantized. ``latency_ms`` bounds the sum of the chosen layers'
    kernel times measured here at ``rows`` (``rows``, ``repeats`` and ``remeasure`` as the
    ``int8`` preset's); the plan aims at ``1 - latency_margin`` of it, because kernel times
    measured in one run drift by several percent in the next.
    """

    method: ClassVar[str] = "mixed"

    bit_choices: list[int] = field(default_factory=lambda: [4, 8])
    group_size: int = 128
    budget_fraction: float = 0.2
    budget_bytes: int | None = None
    latency_ms: float | None = None
    #: Fraction of ``latency_ms`` held back when planning (re-timed plans came out up to a few % over).
    latency_margin: float = 0.05
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
        check(
            self.latency_ms is None or self.latency_ms > 0,
            f"latency_ms must be positive, got {self.latency_ms}",
        )
        check(not (self.latency_ms is not None and self.fake), "latency_ms times integer kernels: not with fake=true")
        check(0.0 <= self.latency_margin < 1.0, f"latency_margin must be in [0, 1), got {self.latency_margin}")
        super().validate()


class BudgetError(CrossedgeError):
    """No assignment of bit widths fits the memory or latency budget."""


@dataclass
class BitPlan:
    """The solver's answer: a width per layer, the bytes used, the budget and the predicted error."""

    bits: dict[str, int]
    bytes_used: int
    budget: int
    predicted_error: float
    #: with a latency budget: the chosen layers' summed kernel ms, the budget, and ms per shape and width
    latency_ms: float | None = None
    latency_budget_ms: float | None = None
    layer_ms: dict[str, dict[str, float]] = field(default_factory=dict)


def solve_bit_allocation(
    errors: np.ndarray,
    costs: np.ndarray,
    budget: float,
    latencies: np.ndarray | None = None,
    latency_budget: float | None = None,
) -> list[int]:
    """Choice index per row minimising total error with total cost <= budget (and total latency <= its budget).

    ``inf`` in ``errors`` or ``costs`` marks a forbidden choice.
    """
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
    timed = latencies is not None and latency_budget is not None
    if timed:
        latencies = np.asarray(latencies, dtype=float)
        fastest = np.where(allowed, latencies, np.inf).min(axis=1).sum()
        if fastest > latency_budget:
            raise BudgetError(
                f"latency budget {latency_budget:.3f} ms is below the fastest possible {fastest:.3f} ms "
                "(every layer on its fastest width, as timed here): raise latency_ms"
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
    if timed:
        constraints.append(
            LinearConstraint(np.where(allowed, latencies, 0.0).ravel()[None, :], -np.inf, latency_budget)
        )
    upper = allowed.astype(float).ravel()
    result = milp(c, constraints=constraints, integrality=np.ones_like(c), bounds=Bounds(0, upper))
    if result.x is None:
        raise BudgetError(
            f"no bit widths fit both budgets ({int(budget)} bytes, {latency_budget} ms): raise one ({result.message})"
            if timed
            else f"the bit-allocation program found no solution: {result.message}"
        )
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


def shape_label(linear: nn.Linear) -> str:
    """``out x in`` (plus ``+bias``): the key layers share a timing under."""
    return f"{linear.out_features}x{linear.in_features}{'+bias' if linear.bias is not None else ''}"


def width_latencies(linear: nn.Linear, config: MixedConfig) -> dict[str, float]:
    """Milliseconds of ``linear``'s kernel at each allowed width, summed over ``rows``: kept, else timed now."""
    from crossedge.core.measurements import MeasurementCache

    widths = [b for b in config.bit_choices if b == 8 or int4_supported(linear)]
    key = {
        "mixed_shape": [linear.out_features, linear.in_features],
        "bias": linear.bias is not None,
        "bits": widths,
        "group_size": config.group_size,
        "act_dtype": config.act_dtype,
        "rows": config.rows,
        "repeats": config.repeats,
    }

    def measure() -> dict[str, Any]:
        modules = {
            str(b): rtn_module(linear, RTNConfig(bits=b, group_size=config.group_size, act_dtype=config.act_dtype))
            for b in widths
        }
        ms = time_kernels(modules, linear.in_features, config.rows, config.repeats)
        return {"ms": {k: round(v, 5) for k, v in ms.items()}}

    return MeasurementCache("kernels").get_or_measure(key, measure, again=config.remeasure)["ms"]


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
    latencies, layer_ms = None, {}
    if config.latency_ms is not None:
        latencies = np.full((len(names), len(choices)), np.inf)
        for i, name in enumerate(names):
            label = shape_label(targets[name])
            if label not in layer_ms:
                layer_ms[label] = width_latencies(targets[name], config)
            for j, bits in enumerate(choices):
                latencies[i, j] = layer_ms[label].get(str(bits), np.inf)
    target = None if config.latency_ms is None else config.latency_ms * (1 - config.latency_margin)
    try:
        picks = solve_bit_allocation(errors, costs, budget, latencies, target)
    except BudgetError as exc:
        if target is None or not config.latency_margin:
            raise
        raise BudgetError(
            f"{exc}; that latency is latency_ms={config.latency_ms} less latency_margin={config.latency_margin}: "
            "lower latency_margin or raise latency_ms"
        ) from exc
    bits = {name: int(choices[j]) for name, j in zip(names, picks, strict=True)}
    used = int(sum(costs[i, j] for i, j in enumerate(picks)))
    predicted = float(sum(errors[i, j] for i, j in enumerate(picks)))
    plan = BitPlan(bits, used, budget, predicted, latency_budget_ms=config.latency_ms, layer_ms=layer_ms)
    if latencies is not None:
        plan.latency_ms = float(sum(latencies[i, j] for i, j in enumerate(picks)))
    return plan


class MixedQuantizer(Quantizer):
    """Mixed precision: int4 or int8 per layer, chosen by linear programming under a memory budget."""

    name = "mixed"
    description = "per-layer int4/int8 widths from an integer linear program under memory (and latency) budgets"
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
        if plan.latency_budget_ms is not None:
            details.update(latency_budget_ms=plan.latency_budget_ms, latency_ms=plan.latency_ms, layer_ms=plan.layer_ms)
        out = {}
        for name, linear in targets.items():
            bits = plan.bits[name]
            rtn = RTNConfig(bits=bits, group_size=config.group_size, fake=config.fake, act_dtype=config.act_dtype)
            out[name] = rtn_module(linear, rtn)
        return Replacements(out, details)
