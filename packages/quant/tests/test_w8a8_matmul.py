"""W8A8's matmuls: the sums of int8 products on ``torch._int_mm``, the weight-only kernel or fp32, chosen per CPU."""

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
    # exact but for float32 rescaling; the weight-only kernel rounds scales and output to bf16
    tolerance = {"int_mm": 1e-6, "fp32-codes": 1e-6, "int8pack-bf16": 1e-2}
    for matmul in w8a8.W8A8_MATMULS:
        module.matmul = matmul
        if matmul == "int_mm" and not quant_modules.int_mm_is_exact():
            continue  # this CPU's int_mm saturates (test below); the others must still hold
        got = module(x).double()
        assert float((got - want).abs().max() / want.abs().max()) < tolerance[matmul], matmul
        assert "W8A8" in module.kernel
    module.matmul = "int8pack-bf16"
    assert module.float_codes is None  # only fp32-codes keeps a float copy of the codes
    module.matmul = "fp32-codes"
    module(x)
    assert torch.equal(module.float_codes, module.qweight.float())
    assert module.weight_bytes() > 4 * module.qweight.numel()


def test_auto_times_both_matmuls_per_shape_and_keeps_the_choice(quant_plugin, tiny_lm, monkeypatch):
    if not quant_modules.int_mm_is_exact():
        pytest.skip("torch._int_mm is not exact on this CPU, so auto does not time it")
    calls = []

    def fake_timing(modules, in_features, rows, repeats):
        calls.append(rows)
        assert {m.matmul for m in modules.values()} == set(w8a8.W8A8_MATMULS)
        return dict(zip(modules, [2.0, 1.0, 3.0] if in_features > 64 else [1.0, 2.0, 3.0], strict=True))

    monkeypatch.setattr(w8a8, "time_kernels", fake_timing)
    result = quantize(copy.deepcopy(tiny_lm[0]), "w8a8:rows=1+4,repeats=2")
    chosen = result.details["matmuls"]
    assert len(calls) == len(chosen) and all(rows == [1, 4] for rows in calls)
    for name in result.modules:
        module = result.model.get_submodule(name)
        if isinstance(module, Int8DynamicLinear):
            assert module.matmul == ("int8pack-bf16" if module.in_features > 64 else "int_mm")
            assert chosen[f"{module.out_features}x{module.in_features}"]["matmul"] == module.matmul
    again = quantize(copy.deepcopy(tiny_lm[0]), "w8a8:rows=1+4,repeats=2")
    assert len(calls) == len(chosen), "the stored choice was timed again"
    assert again.details["matmuls"] == chosen


def test_without_an_exact_int_mm_w8a8_times_only_the_others(quant_plugin, tiny_lm, inexact, monkeypatch):
    def fake_timing(modules, *args):
        assert "int_mm" not in modules, "timed a matmul that cannot be used"
        return {"int8pack-bf16": 2.0, "fp32-codes": 1.0}

    monkeypatch.setattr(w8a8, "time_kernels", fake_timing)
    result = quantize(copy.deepcopy(tiny_lm[0]), "w8a8")
    layers = [m for m in result.model.modules() if isinstance(m, Int8DynamicLinear)]
    assert layers and all(m.matmul == "fp32-codes" for m in layers)
    assert all("no VNNI" in entry["why"] for entry in result.details["matmuls"].values())
    with pytest.raises(CrossedgeError, match="matmul=int_mm: torch._int_mm returned wrong sums.*fp32-codes"):
        quantize(copy.deepcopy(tiny_lm[0]), "w8a8:matmul=int_mm")
    # the int8 preset no longer offers W8A8 there: it would be the weight-only kernel plus rounding
    monkeypatch.setattr(preset, "time_kernels", lambda modules, *a: dict.fromkeys(modules, 1.0))
    chosen = quantize(copy.deepcopy(tiny_lm[0]), "int8:remeasure=true").details["kernels"]
    assert all("w8a8" not in entry["ms"] for entry in chosen.values())


@pytest.mark.parametrize(("fp32_ms", "want"), [(0.95, "int8pack-bf16"), (0.85, "fp32-codes")])
def test_auto_takes_the_float_copy_only_when_it_is_clearly_faster(
    quant_plugin, tiny_lm, inexact, monkeypatch, fp32_ms, want
):
    # A near-tie (timing noise on a loaded machine) must not buy a float32 copy of every code.
    monkeypatch.setattr(w8a8, "time_kernels", lambda modules, *a: {"int8pack-bf16": 1.0, "fp32-codes": fp32_ms})
    result = quantize(copy.deepcopy(tiny_lm[0]), "w8a8:remeasure=true")
    layers = [m for m in result.model.modules() if isinstance(m, Int8DynamicLinear)]
    assert layers and all(m.matmul == want for m in layers)
    assert all((m.float_codes is None) == (want != "fp32-codes") for m in layers)
    entries = result.details["matmuls"].values()
    assert all(("within 10% of int8pack-bf16" in e["why"]) == (want != "fp32-codes") for e in entries)


@pytest.mark.parametrize("matmul", ["int8pack-bf16", "fp32-codes"])
def test_a_saved_w8a8_model_reloads_bit_identical(quant_plugin, tiny_lm, sample_ids, tmp_path, matmul):
    model, tokenizer = tiny_lm
    result = quantize(copy.deepcopy(model), f"w8a8:matmul={matmul}")
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    with torch.inference_mode():
        want = result.model(sample_ids).logits
        assert torch.equal(load_quantized(folder)(sample_ids).logits, want)


def test_a_saved_int_mm_model_loads_onto_fp32_codes_where_int_mm_is_inexact(
    quant_plugin, tiny_lm, sample_ids, tmp_path, monkeypatch
):
    model, tokenizer = tiny_lm
    if not quant_modules.int_mm_is_exact():
        pytest.skip("int_mm cannot be saved from this CPU")
    on_int_mm = quantize(copy.deepcopy(model), "w8a8:matmul=int_mm").model
    folder = save_quantized(on_int_mm, tmp_path / "i", tokenizer)
    for module in (quant_modules, w8a8, preset):
        monkeypatch.setattr(module, "int_mm_is_exact", lambda: False)
    with pytest.warns(UserWarning, match="returns wrong sums on this CPU"):
        reloaded = load_quantized(folder)
    layers = [m for m in reloaded.modules() if isinstance(m, Int8DynamicLinear)]
    assert layers and all(m.matmul == "fp32-codes" for m in layers)
    with torch.inference_mode():  # the same exact integer sums, rescaled in the same order
        assert torch.equal(reloaded(sample_ids).logits, on_int_mm(sample_ids).logits)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("w8a8:matmul=vnni", "matmul must be one of auto, int_mm, int8pack-bf16, fp32-codes"),
        ("smoothquant:rows=0", "rows must be 1..8192"),
    ],
)
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
