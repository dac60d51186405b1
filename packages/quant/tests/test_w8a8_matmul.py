"""W8A8's two matmuls: the same integer sums on ``torch._int_mm`` or the weight-only kernel, chosen per CPU."""

import copy
import platform
import subprocess
import sys

import pytest
import torch

from crossedge.core.errors import CrossedgeError
from crossedge.quant import load_quantized, quantize, save_quantized
from crossedge.quant import modules as quant_modules
from crossedge.quant.methods import preset, w8a8
from crossedge.quant.modules import Int8DynamicLinear


@pytest.fixture
def layer():
    torch.manual_seed(3)
    return torch.nn.Linear(160, 48), torch.randn(7, 160) * 3


@pytest.fixture
def inexact(monkeypatch):
    """This test's CPU has no exact ``torch._int_mm`` (as without VNNI)."""
    for module in (quant_modules, w8a8, preset):
        monkeypatch.setattr(module, "int_mm_is_exact", lambda: False)


def exact_sums(module, x):
    """The W8A8 result computed in float64 from the same codes: the oracle both matmuls must meet."""
    q, scale = module._quantized_input(x)
    acc = q.double() @ module.qweight.double().t()
    return acc * scale.double() * module.wscale.double() + module.bias.double()


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_both_matmuls_compute_the_same_integer_sums(layer, granularity):
    linear, x = layer
    module = Int8DynamicLinear.from_weight(linear.weight, linear.bias, per_tensor_weight=False,
                                           act_granularity=granularity)  # fmt: skip
    want = exact_sums(module, x)
    got = {}
    for matmul in w8a8.W8A8_MATMULS:
        module.matmul = matmul
        if matmul == "int_mm" and not quant_modules.int_mm_is_exact():
            continue  # this CPU's int_mm saturates (test below); int8pack must still be exact
        got[matmul] = module(x).double()
        assert float((got[matmul] - want).abs().max() / want.abs().max()) < 1e-6, matmul
    assert "int8pack" in got
    assert "W8A8" in module.kernel and "_weight_int8pack_mm" in module.kernel


def test_auto_times_both_matmuls_per_shape_and_keeps_the_choice(quant_plugin, tiny_lm, monkeypatch):
    if not quant_modules.int_mm_is_exact():
        pytest.skip("torch._int_mm is not exact on this CPU, so auto does not time it")
    calls = []

    def fake_timing(modules, in_features, rows, repeats):
        calls.append(rows)
        assert {m.matmul for m in modules.values()} == set(w8a8.W8A8_MATMULS)
        return {"int_mm": 2.0, "int8pack": 1.0} if in_features > 64 else {"int_mm": 1.0, "int8pack": 2.0}

    monkeypatch.setattr(w8a8, "time_kernels", fake_timing)
    result = quantize(copy.deepcopy(tiny_lm[0]), "w8a8:rows=1+4,repeats=2")
    chosen = result.details["matmuls"]
    assert len(calls) == len(chosen) and all(rows == [1, 4] for rows in calls)
    for name in result.modules:
        module = result.model.get_submodule(name)
        if isinstance(module, Int8DynamicLinear):
            assert module.matmul == ("int8pack" if module.in_features > 64 else "int_mm")
            assert chosen[f"{module.out_features}x{module.in_features}"]["matmul"] == module.matmul
    again = quantize(copy.deepcopy(tiny_lm[0]), "w8a8:rows=1+4,repeats=2")
    assert len(calls) == len(chosen), "the stored choice was timed again"
    assert again.details["matmuls"] == chosen


def test_without_an_exact_int_mm_w8a8_runs_int8pack_untimed(quant_plugin, tiny_lm, inexact, monkeypatch):
    monkeypatch.setattr(w8a8, "time_kernels", lambda *a, **k: pytest.fail("timed a matmul that cannot be used"))
    result = quantize(copy.deepcopy(tiny_lm[0]), "w8a8")
    layers = [m for m in result.model.modules() if isinstance(m, Int8DynamicLinear)]
    assert layers and all(m.matmul == "int8pack" for m in layers)
    assert all("no VNNI" in entry["why"] for entry in result.details["matmuls"].values())
    with pytest.raises(CrossedgeError, match="matmul=int_mm: torch._int_mm returned wrong sums.*matmul=int8pack"):
        quantize(copy.deepcopy(tiny_lm[0]), "w8a8:matmul=int_mm")
    # the int8 preset no longer offers W8A8 there: it would be the weight-only kernel plus rounding
    monkeypatch.setattr(preset, "time_kernels", lambda modules, *a: dict.fromkeys(modules, 1.0))
    chosen = quantize(copy.deepcopy(tiny_lm[0]), "int8:remeasure=true").details["kernels"]
    assert all("w8a8" not in entry["ms"] for entry in chosen.values())


def test_a_saved_int_mm_model_loads_onto_int8pack_where_int_mm_is_inexact(
    quant_plugin, tiny_lm, sample_ids, tmp_path, monkeypatch
):
    model, tokenizer = tiny_lm
    result = quantize(copy.deepcopy(model), "w8a8:matmul=int8pack")
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    with torch.inference_mode():
        assert torch.equal(load_quantized(folder)(sample_ids).logits, result.model(sample_ids).logits)
    if not quant_modules.int_mm_is_exact():
        pytest.skip("int_mm cannot be saved from this CPU")
    folder = save_quantized(quantize(copy.deepcopy(model), "w8a8:matmul=int_mm").model, tmp_path / "i", tokenizer)
    for module in (quant_modules, w8a8, preset):
        monkeypatch.setattr(module, "int_mm_is_exact", lambda: False)
    with pytest.warns(UserWarning, match="returns wrong sums on this CPU"):
        reloaded = load_quantized(folder)
    layers = [m for m in reloaded.modules() if isinstance(m, Int8DynamicLinear)]
    assert layers and all(m.matmul == "int8pack" for m in layers)


@pytest.mark.parametrize(("spec", "message"), [("w8a8:matmul=vnni", "matmul must be one of auto, int_mm, int8pack"),
                                               ("smoothquant:rows=0", "rows must be 1..8192")])  # fmt: skip
def test_bad_matmul_options(quant_plugin, spec, message):
    from crossedge.quant import parse_spec

    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's AVX2 cap is an x86 setting")
def test_int_mm_is_not_exact_on_onednns_avx2_kernels():
    # What a CPU without VNNI runs: the probe must see the saturated sums (and int8pack must not).
    code = (
        "import torch; from crossedge.quant.modules import int_mm_is_exact; a = torch.randint(-127, 128, (8, 256),"
        " generator=torch.Generator().manual_seed(1), dtype=torch.int8); w = torch.randint(-127, 128, (16, 256),"
        " generator=torch.Generator().manual_seed(2), dtype=torch.int8); exact = a.double() @ w.double().t();"
        " pack = torch._weight_int8pack_mm(a.float(), w, torch.ones(16)).double();"
        " print(int_mm_is_exact(), bool(torch.equal(pack, exact)))"
    )
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
