"""GPTQ against round-to-nearest on a synthetic layer; the bit-allocation program against its budget."""

import numpy as np
import pytest
import torch

from crossedge.quant import MixedConfig, quantization_map, quantize_
from crossedge.quant.methods.gptq import dequantize_grouped, gptq_quantize
from crossedge.quant.methods.mixed import BudgetError, plan_bits, solve_bit_allocation
from crossedge.quant.primitives import fake_quantize


def correlated_inputs(tokens=512, features=64, rank=16, seed=0):
    """Inputs near a low-rank subspace, like real activations: where error compensation pays off."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, rank, generator=g) @ torch.randn(rank, features, generator=g)
    return base + 0.1 * torch.randn(tokens, features, generator=g)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_reconstruction_error(act_order):
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = correlated_inputs()
    h = x.t() @ x / x.shape[0]
    q, scale, zero = gptq_quantize(w, h, bits=4, group_size=32, act_order=act_order)
    assert q.min() >= -8 and q.max() <= 7 and scale.shape == (32, 2)
    w_gptq = dequantize_grouped(q, scale, zero, 32)
    w_rtn = fake_quantize(w, bits=4, granularity="per_group", symmetric=False, group_size=32)
    err_gptq = float(((x @ (w - w_gptq).t()) ** 2).mean())
    err_rtn = float(((x @ (w - w_rtn).t()) ** 2).mean())
    assert err_gptq < 0.5 * err_rtn


def test_lp_respects_budget_and_minimises_error():
    errors = np.array([[10.0, 1.0], [5.0, 4.9], [3.0, 0.5]])  # rows: layers; columns: 4-bit, 8-bit
    costs = np.array([[50.0, 100.0], [50.0, 100.0], [50.0, 100.0]])
    picks = solve_bit_allocation(errors, costs, budget=200)
    assert sum(costs[i, j] for i, j in enumerate(picks)) <= 200
    assert picks == [1, 0, 0]  # the one upgrade that buys the most error goes to layer 0
    assert solve_bit_allocation(errors, costs, budget=1000) == [1, 1, 1]
    with pytest.raises(BudgetError, match="below the smallest possible size 150"):
        solve_bit_allocation(errors, costs, budget=149)


def test_lp_honours_forbidden_choices():
    errors = np.array([[np.inf, 1.0], [2.0, 1.0]])
    costs = np.array([[np.inf, 100.0], [50.0, 100.0]])
    assert solve_bit_allocation(errors, costs, budget=150) == [1, 0]


def test_mixed_plan_on_tiny_model_meets_budget(quant_plugin, fresh_lm, sample_ids):
    model, _ = fresh_lm
    from crossedge.quant import collect_stats, select_modules

    config = MixedConfig(group_size=32, budget_fraction=0.22)
    targets = select_modules(model, config)
    stats = collect_stats(model, [sample_ids], targets, absmax=False, hessian=True)
    plan = plan_bits(targets, {n: s.mean_hessian() for n, s in stats.items()}, config)
    assert plan.bytes_used <= plan.budget
    assert set(plan.bits.values()) == {4, 8}  # the budget is between all-4 and all-8
    quantize_(model, config, calibration=[sample_ids])
    kinds = {e["kind"] for e in quantization_map(model)["modules"].values()}
    assert kinds == {"int4_weight", "int8_weight"}
    used = sum(model.get_submodule(n).weight_bytes() for n in targets)
    assert used == plan.bytes_used
    details = quantization_map(model)["details"]
    assert details["bytes_used"] == used <= details["budget_bytes"] == plan.budget


def test_lp_meets_a_latency_budget_as_well():
    errors = np.array([[10.0, 1.0], [5.0, 4.9], [3.0, 0.5]])
    costs = np.array([[50.0, 100.0], [50.0, 100.0], [50.0, 100.0]])
    # here the 4-bit kernel is the slow one for layers 0 and 2
    latencies = np.array([[3.0, 1.0], [1.0, 1.0], [3.0, 1.0]])
    assert solve_bit_allocation(errors, costs, budget=1000, latencies=latencies, latency_budget=9) == [1, 1, 1]
    picks = solve_bit_allocation(errors, costs, budget=250, latencies=latencies, latency_budget=5)
    assert sum(latencies[i, j] for i, j in enumerate(picks)) <= 5
    assert sum(costs[i, j] for i, j in enumerate(picks)) <= 250
    assert picks == [1, 0, 1]
    with pytest.raises(BudgetError, match="latency budget 2.000 ms is below the fastest possible 3.000 ms"):
        solve_bit_allocation(errors, costs, budget=1000, latencies=latencies, latency_budget=2)
    with pytest.raises(BudgetError, match="no bit widths fit both budgets"):
        solve_bit_allocation(errors, costs, budget=150, latencies=latencies, latency_budget=3)


def test_mixed_latency_budget_times_each_shape_once_and_is_met(quant_plugin, tiny_lm, sample_ids, monkeypatch):
    import copy

    from crossedge.quant import collect_stats, select_modules
    from crossedge.quant.methods import mixed

    calls = []

    def fake_timing(modules, in_features, rows, repeats):
        calls.append(sorted(modules))
        return {"4": 2.0, "8": 1.0}  # int4 slower than int8 here, as on some CPUs

    monkeypatch.setattr(mixed, "time_kernels", fake_timing)
    model = copy.deepcopy(tiny_lm[0])
    config = MixedConfig(group_size=32, budget_fraction=0.22, latency_ms=1.6 * 14)  # 14 linears in the tiny llama
    targets = select_modules(model, config)
    stats = collect_stats(model, [sample_ids], targets, absmax=False, hessian=True)
    plan = plan_bits(targets, {n: s.mean_hessian() for n, s in stats.items()}, config)
    shapes = {mixed.shape_label(m) for m in targets.values()}
    assert len(calls) == len(shapes) == len(plan.layer_ms)
    assert plan.latency_ms <= 0.95 * config.latency_ms and plan.bytes_used <= plan.budget  # the default margin
    expected = sum(plan.layer_ms[mixed.shape_label(targets[n])][str(b)] for n, b in plan.bits.items())
    assert plan.latency_ms == pytest.approx(expected)
    plan_bits(targets, {n: s.mean_hessian() for n, s in stats.items()}, config)
    assert len(calls) == len(shapes), "kept timings were taken again"
    quantize_(model, config, calibration=[sample_ids])
    details = quantization_map(model)["details"]
    assert details["latency_ms"] <= details["latency_budget_ms"] == config.latency_ms


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latency_ms": 0}, "latency_ms must be positive"),
        ({"latency_ms": 5, "fake": True}, "not with fake=true"),
        ({"latency_ms": 5, "latency_margin": 1.0}, "latency_margin must be in"),
    ],
)
def test_mixed_latency_options_are_checked(fields, message):
    from crossedge.core.errors import CrossedgeError

    with pytest.raises(CrossedgeError, match=message):
        MixedConfig(**fields)


def test_mixed_plans_inside_its_latency_margin(tiny_lm, sample_ids, monkeypatch):
    import copy
    import dataclasses

    from crossedge.quant import collect_stats, select_modules
    from crossedge.quant.methods import mixed

    monkeypatch.setattr(mixed, "time_kernels", lambda modules, in_features, rows, repeats: {"4": 2.0, "8": 1.0})
    solve = mixed.solve_bit_allocation
    asked = []
    monkeypatch.setattr(mixed, "solve_bit_allocation", lambda *a: asked.append(a[4]) or solve(*a))
    model = copy.deepcopy(tiny_lm[0])
    config = MixedConfig(group_size=32, budget_fraction=0.22, latency_ms=40.0)
    targets = select_modules(model, config)
    stats = collect_stats(model, [sample_ids], targets, absmax=False, hessian=True)
    hessians = {n: s.mean_hessian() for n, s in stats.items()}
    plan = plan_bits(targets, hessians, config)
    assert asked == [pytest.approx(38.0)] and plan.latency_ms <= 38.0 and plan.latency_budget_ms == 40.0
    plan_bits(targets, hessians, dataclasses.replace(config, latency_margin=0.0))
    assert asked[-1] == 40.0
    # a budget only the margin makes infeasible says so
    monkeypatch.setattr(mixed, "solve_bit_allocation", lambda *a: (_ for _ in ()).throw(mixed.BudgetError("no fit")))
    with pytest.raises(mixed.BudgetError, match="less latency_margin=0.05: lower latency_margin"):
        plan_bits(targets, hessians, config)
