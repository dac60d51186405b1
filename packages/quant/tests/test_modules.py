"""Integer-kernel modules against their fp32 fake-quant references."""

import pytest
import torch

from crossedge.quant import Int4WeightLinear, Int8DynamicLinear, Int8WeightLinear, kernel_fraction, track_kernel
from crossedge.quant.methods.common import weight_only_module
from crossedge.quant.modules import FakeQuantLinear, Int8Embedding
from crossedge.quant.primitives import compute_qparams, dequantize, quantize


@pytest.fixture
def layer():
    torch.manual_seed(1)
    linear = torch.nn.Linear(96, 48)
    x = torch.randn(5, 96)
    return linear, x


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_dtype", ["bfloat16", "float32"])
def test_int8_weight_kernel_matches_reference(layer, symmetric, act_dtype):
    linear, x = layer
    module = Int8WeightLinear.from_weight(
        linear.weight, linear.bias, symmetric=symmetric, per_tensor=False, act_dtype=act_dtype
    )
    assert module.qweight.dtype == torch.int8
    out, ref = module(x), module.reference_forward(x)
    # bf16 kernels accumulate and round differently from fp32; the gap is bf16 rounding, not quantization.
    assert rel(out, ref) < (2e-2 if act_dtype == "bfloat16" else 1e-5)
    assert rel(module.dequantized_weight(), linear.weight.detach()) < 1e-2
    assert rel(out, linear(x).detach()) < 3e-2


def test_int8_weight_per_tensor_uses_one_scale(layer):
    linear, _ = layer
    module = Int8WeightLinear.from_weight(linear.weight, None, symmetric=True, per_tensor=True, act_dtype="float32")
    assert torch.unique(module.scale).numel() == 1


@pytest.mark.parametrize("in_features,group", [(64, 32), (96, 64)])  # 96 is padded to 128 for group 64
def test_int4_kernel_matches_reference_and_integers(in_features, group):
    torch.manual_seed(2)
    linear = torch.nn.Linear(in_features, 32)
    w = linear.weight.detach()
    qp = compute_qparams(w, bits=4, granularity="per_group", symmetric=False, group_size=group)
    qp.scale = qp.scale.to(torch.bfloat16).float()
    q = quantize(w, qp)
    module = weight_only_module(
        linear, q, qp.scale.squeeze(-1), qp.zero.squeeze(-1), bits=4, group_size=group, act_dtype="bfloat16"
    )
    assert isinstance(module, Int4WeightLinear)
    assert module.qweight.dtype == torch.uint8 and module.qweight.numel() == 32 * module.padded_in // 2
    expected = dequantize(q, qp)
    assert torch.allclose(module.dequantized_weight(), expected, atol=2e-2 * float(qp.scale.max()))
    x = torch.randn(3, in_features)
    assert rel(module(x), module.reference_forward(x)) < 2e-2


def test_int4_rejects_bad_out_features():
    with pytest.raises(ValueError, match="divisible by 16"):
        Int4WeightLinear(64, 20, False, 32)


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_w8a8_kernel_equals_integer_reference(layer, granularity):
    linear, x = layer
    module = Int8DynamicLinear.from_weight(
        linear.weight, linear.bias, per_tensor_weight=False, act_granularity=granularity
    )
    out, ref = module(x), module.reference_forward(x)
    # int32 accumulation is exact, so kernel and reference differ only by fp32 rescaling order.
    assert rel(out, ref) < 1e-5
    assert rel(out, linear(x).detach()) < 3e-2


def test_smoothing_and_crossquant_scales(layer):
    linear, x = layer
    x = x.clone()
    x[:, 3] *= 50  # an outlier channel
    smooth = x.abs().amax(0).sqrt()
    smoothed = Int8DynamicLinear.from_weight(
        linear.weight, linear.bias, per_tensor_weight=False, act_granularity="per_token", smooth=smooth
    )
    assert torch.allclose(smoothed.dequantized_weight(), linear.weight.detach(), rtol=0.05, atol=1e-2)
    assert rel(smoothed(x), smoothed.reference_forward(x)) < 1e-5
    column = x.abs().amax(0).pow(1 - 0.15)
    cross = Int8DynamicLinear.from_weight(
        linear.weight,
        linear.bias,
        per_tensor_weight=False,
        act_granularity="per_token",
        smooth=column,
        cross_alpha=0.15,
    )
    assert rel(cross(x), linear(x).detach()) < 3e-2
    plain = Int8DynamicLinear.from_weight(
        linear.weight, linear.bias, per_tensor_weight=False, act_granularity="per_token"
    )
    fractions = []
    for module in (plain, cross):
        track_kernel(module)
        module(x)
        fractions.append(kernel_fraction(module))
    # CrossQuant's per-element scales leave fewer activations rounding to zero than per-token scales.
    assert 0 <= fractions[1] < fractions[0]


def test_crossquant_widens_tokens_past_the_calibrated_columns_instead_of_clamping(layer):
    linear, x = layer
    column = x.abs().amax(0).pow(1 - 0.15)  # "calibrated" on x
    louder = x * 4  # run-time inputs past every calibrated column maximum

    def cross(widen):
        return Int8DynamicLinear.from_weight(
            linear.weight, linear.bias, per_tensor_weight=False, act_granularity="per_token",
            smooth=column, cross_alpha=0.15, cross_widen=widen,
        )  # fmt: skip

    clamped, widened = cross(False), cross(True)
    want = linear(louder).detach()
    assert rel(widened(louder), want) < 3e-2 < rel(clamped(louder), want)
    assert torch.equal(widened(x), clamped(x))  # within the calibrated range the scales agree
    assert widened.spec()["cross_widen"] and not Int8DynamicLinear(8, 8, False).cross_widen  # older files clamp


SPECS = ["rtn:bits=8", "rtn:bits=4,group_size=32", "w8a8", "w8a8:act_granularity=per_tensor"]


def _quantized_layer(spec):
    from torch import nn

    from crossedge.quant import quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96))
    quantize_(model, spec, filter_fn=lambda module, name: True)
    return model


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("rows", [2, 5, 16, 17])
def test_kernels_are_row_invariant(quant_plugin, spec, rows):
    """A row's output is the same bits whether it is computed alone or inside a block (what
    speculative verification needs); measured on this CPU's dispatch, and rerun on others by CI."""
    module = _quantized_layer(spec)
    x = torch.randn(rows, 64)
    with torch.inference_mode():
        block = module(x)
        alone = torch.cat([module(x[i : i + 1]) for i in range(rows)])
    if spec.endswith("per_tensor"):
        # One activation scale for the whole block: rows depend on each other by design.
        assert not torch.equal(block, alone)
    else:
        assert torch.equal(block, alone), f"rows differ by {float((block - alone).abs().max())}"


@pytest.mark.parametrize("spec", ["rtn:bits=8,keep_lm_head=false", "rtn:bits=4,group_size=32", "w8a8"])
def test_a_quantized_model_verifies_blocks_as_it_decodes_single_tokens(quant_plugin, fresh_lm, spec):
    """Quantizing switches attention to row-invariant, so a verification block's last hidden states
    are the one-token decoding steps' bit for bit (what lossless speculation on it needs). Logits are
    too when the LM head is quantized; a float head's GEMM differs by rounding (~1e-7), which no
    later layer can amplify."""
    from transformers import DynamicCache

    from crossedge.core.attention import ROW_INVARIANT
    from crossedge.quant import quantize_

    model = quantize_(fresh_lm[0], spec)
    assert model.config._attn_implementation == ROW_INVARIANT
    ids = torch.tensor([[5, 17, 99, 3, 42, 8, 61, 7, 250, 33, 12, 90]])

    def run(feeds):
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :6], cache=cache, use_cache=True)
        outs = [model(input_ids=f, cache=cache, use_cache=True, output_hidden_states=True) for f in feeds]
        hidden = torch.cat([o.hidden_states[-1][0] for o in outs])
        return hidden, torch.cat([o.logits[0] for o in outs])

    with torch.inference_mode():
        block_hidden, block_logits = run([ids[:, 6:]])
        step_hidden, step_logits = run([ids[:, i : i + 1] for i in range(6, 12)])
    assert torch.equal(block_hidden, step_hidden)
    if "keep_lm_head=false" in spec:
        assert torch.equal(block_logits, step_logits)
    else:
        torch.testing.assert_close(block_logits, step_logits, atol=1e-5, rtol=0)


def test_reports_name_the_kernel_each_layer_kind_runs(quant_plugin, fresh_lm):
    from crossedge.core.bench import layer_kernels
    from crossedge.quant import quantize_

    model = fresh_lm[0]
    assert set(layer_kernels(model).values()) == {"torch linear (float32)"}
    quantize_(model, "rtn:bits=4,group_size=32")
    kernels = layer_kernels(model)
    assert kernels["q_proj"].startswith("torch._weight_int4pack_mm_for_cpu") and "groups of 32" in kernels["q_proj"]
    assert kernels["lm_head"] == "torch linear (float32)"


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16, torch.float32])
def test_casting_a_model_keeps_the_quantized_dtypes_and_outputs(layer, cast):
    linear, x = layer
    head = Int8WeightLinear.from_weight(
        linear.weight, linear.bias, symmetric=True, per_tensor=False, act_dtype="bfloat16"
    )
    embedding = Int8Embedding(48, 96, tied_to="head")
    embedding.share(head.qweight, head.scale)
    dynamic = Int8DynamicLinear(96, 48, True)
    fake = FakeQuantLinear(96, 48, True)
    model = torch.nn.ModuleDict({"head": head, "embedding": embedding, "dynamic": dynamic, "fake": fake})
    before = {name: {k: b.dtype for k, b in m.named_buffers()} for name, m in model.items()}
    outputs = [head(x), dynamic(x), fake(x)]
    model.to(cast)
    assert {name: {k: b.dtype for k, b in m.named_buffers()} for name, m in model.items()} == before
    assert embedding.scale is head.scale and embedding.qweight is head.qweight
    for got, want in zip([head(x), dynamic(x), fake(x)], outputs, strict=True):
        assert torch.equal(got, want)
    assert head(x.to(cast)).dtype == cast
