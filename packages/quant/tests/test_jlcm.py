"""JLCM: learning lowers the layer output error, codebooks are shared and saved once, reloads bit-identical."""

import json

import pytest
import torch
from safetensors.torch import load_file

from crossedge.core.cache import sha256_file
from crossedge.core.errors import CrossedgeError
from crossedge.quant import QuantConfigError, QuantFormatError, load_quantized, quantize, save_quantized, weight_bytes
from crossedge.quant.config import parse_spec
from crossedge.quant.methods.jlcm import JLCMConfig, JLCMLinear, codebook_group_name, jlcm_bytes
from crossedge.quant.testing import QuantizerConformance

FAST = "group_size=32,steps=10,kmeans_iters=5,rounds=1"


def fast(**changes):
    """A quick JLCM spec: FAST's options with ``changes`` replacing or adding some."""
    options = dict(part.split("=") for part in FAST.split(","))
    options.update({k: str(v) for k, v in changes.items()})
    return "jlcm:" + ",".join(f"{k}={v}" for k, v in options.items())


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny layers' many small ops run faster on one thread than on two shared ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TestJLCM(QuantizerConformance):
    spec = f"jlcm:{FAST}"
    tolerance = 0.06


class TestJLCMPerRowScales(QuantizerConformance):
    spec = "jlcm:group_size=0,steps=5,kmeans_iters=5,rounds=1,share=all"
    tolerance = 0.08


def _quantized(fresh_lm, sample_ids, spec):
    model, tokenizer = fresh_lm
    result = quantize(model, spec, calibration=[sample_ids])
    return result, tokenizer


def _jlcm_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, JLCMLinear)}


def test_learning_lowers_the_output_error_below_the_kmeans_start(quant_plugin, fresh_lm, sample_ids):
    result, _ = _quantized(fresh_lm, sample_ids, "jlcm:group_size=32,steps=30,kmeans_iters=5,rounds=1")
    groups = result.details["codebooks"]
    assert len(groups) == 7  # q, k, v, o, gate, up, down: one codebook per kind across both layers
    for name, found in groups.items():
        (round_,) = found["rounds"]
        assert found["error_final"] < found["error_kmeans"], name
        assert round_["learned"] < round_["assigned"], f"{name}: the joint refinement did not lower the error"
        assert round_["assigned"] < found["error_kmeans"], f"{name}: error feedback did not beat nearest centroids"


def test_more_rounds_do_not_lose(quant_plugin, tiny_lm, sample_ids):
    import copy

    model, _ = tiny_lm
    one = quantize(copy.deepcopy(model), fast(), calibration=[sample_ids]).details["codebooks"]
    two = quantize(copy.deepcopy(model), fast(rounds=2), calibration=[sample_ids]).details["codebooks"]
    for name in one:
        assert len(two[name]["rounds"]) == 2 and two[name]["rounds"][0] == one[name]["rounds"][0]
        assert two[name]["error_final"] <= one[name]["error_final"] * (1 + 1e-3), name  # the better round is kept


def test_layers_of_a_kind_share_one_codebook(quant_plugin, fresh_lm, sample_ids):
    result, _ = _quantized(fresh_lm, sample_ids, fast())
    layers = _jlcm_layers(result.model)
    assert len(layers) == 14
    q0, q1 = layers["model.layers.0.self_attn.q_proj"], layers["model.layers.1.self_attn.q_proj"]
    assert q0.codebook is q1.codebook and q0.codebook_group == "model.layers.*.self_attn.q_proj"
    assert q0.codebook is not layers["model.layers.0.self_attn.k_proj"].codebook
    assert not torch.equal(q0.mapping, q1.mapping)  # each layer learned its own mapping
    codebook_bytes = q0.codebook.numel() * 4
    per_module = sum(m.weight_bytes() for m in layers.values())
    assert jlcm_bytes(layers.values()) == per_module - 7 * codebook_bytes == result.details["bytes"]


@pytest.mark.parametrize(("share", "codebooks"), [("all", 1), ("none", 14)])
def test_share_rules(quant_plugin, fresh_lm, sample_ids, share, codebooks):
    result, _ = _quantized(fresh_lm, sample_ids, fast(steps=2, share=share))
    layers = _jlcm_layers(result.model)
    assert len({id(m.codebook) for m in layers.values()}) == codebooks == len(result.details["codebooks"])


def test_group_names():
    assert codebook_group_name("model.layers.12.mlp.up_proj", "kind") == "model.layers.*.mlp.up_proj"
    assert codebook_group_name("3.proj", "kind") == "*.proj"
    assert codebook_group_name("model.layers.12.mlp.up_proj", "all") == "all"
    assert codebook_group_name("model.layers.12.mlp.up_proj", "none") == "model.layers.12.mlp.up_proj"


def test_lookup_kernel_is_the_gather_it_claims(quant_plugin, fresh_lm, sample_ids):
    result, _ = _quantized(fresh_lm, sample_ids, fast())
    layer = _jlcm_layers(result.model)["model.layers.0.mlp.down_proj"]
    centroids = layer.codebook @ layer.mapping[:2] + layer.mapping[2]
    scale = layer.scales.float().repeat_interleave(32, dim=1)
    manual = torch.stack([centroids[int(i)] for i in layer.indices.reshape(-1)]).reshape(layer.out_features, -1)
    assert torch.equal(layer.dequantized_weight(), manual * scale)
    x = torch.randn(3, 5, layer.in_features)
    assert torch.equal(layer(x), layer.reference_forward(x))
    assert layer.indices.dtype == torch.uint8 and layer.scales.dtype == torch.bfloat16


def test_saved_once_and_reloaded_bit_identical_and_shared(quant_plugin, fresh_lm, sample_ids, tmp_path):
    result, tokenizer = _quantized(fresh_lm, sample_ids, fast())
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    stored = load_file(str(folder / "model.safetensors"))
    document = json.loads((folder / "quantization.json").read_text())
    codebooks = [n for n in stored if n.endswith(".codebook")]
    assert len(codebooks) == 7 and len([a for a in document["tied"] if a.endswith(".codebook")]) == 7
    loaded = load_quantized(folder)
    layers = _jlcm_layers(loaded)
    assert layers["model.layers.0.mlp.up_proj"].codebook is layers["model.layers.1.mlp.up_proj"].codebook
    assert weight_bytes(loaded) == weight_bytes(result.model)
    with torch.no_grad():
        assert torch.equal(result.model(sample_ids).logits, loaded(sample_ids).logits)


def _replace_weights(folder, source):
    """Put ``source``'s safetensors in ``folder`` and record its size and checksum (a consistent swap)."""
    (folder / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    path = folder / "quantization.json"
    data = json.loads(path.read_text())
    weights = folder / "model.safetensors"
    data["weights"].update(bytes=weights.stat().st_size, sha256=sha256_file(weights))
    path.write_text(json.dumps(data))


def test_weights_of_another_codebook_size_are_refused(quant_plugin, tiny_lm, sample_ids, tmp_path):
    import copy

    model, tokenizer = tiny_lm
    folders = {}
    for size in (256, 16):
        quantized = quantize(copy.deepcopy(model), fast(steps=2, codebook_size=size), calibration=[sample_ids])
        folders[size] = save_quantized(quantized.model, tmp_path / str(size), tokenizer)
    _replace_weights(folders[256], folders[16])
    with pytest.raises(QuantFormatError, match=r"tensor '.*\.codebook'.*shape \(16, 2\).*expects \(256, 2\)") as info:
        load_quantized(folders[256])
    assert "\n" not in str(info.value)


def test_damaged_codebook_bytes_fail_the_checksum(quant_plugin, fresh_lm, sample_ids, tmp_path):
    result, tokenizer = _quantized(fresh_lm, sample_ids, fast(steps=2))
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(QuantFormatError, match="SHA-256"):
        load_quantized(folder)


def test_a_bad_jlcm_spec_in_the_map_is_refused(quant_plugin, fresh_lm, sample_ids, tmp_path):
    result, tokenizer = _quantized(fresh_lm, sample_ids, fast(steps=2))
    folder = save_quantized(result.model, tmp_path / "q", tokenizer)
    path = folder / "quantization.json"
    data = json.loads(path.read_text())
    name = "model.layers.0.self_attn.q_proj"
    data["modules"][name]["spec"]["codebook_size"] = 300
    path.write_text(json.dumps(data))
    with pytest.raises(QuantFormatError, match=f"module '{name}' has a bad spec.*codebook_size must be 2..256"):
        load_quantized(folder)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jlcm:dim=0", "dim must be 1..8"),
        ("jlcm:codebook_size=512", "codebook_size must be 2..256"),
        ("jlcm:group_size=33", "multiple of dim=2"),
        ("jlcm:share=layer", "share must be one of kind, all, none"),
        ("jlcm:steps=-1", "steps must be"),
        ("jlcm:lr=2", "lr must be in"),
        ("jlcm:rounds=0", "rounds must be"),
        ("jlcm:kmeans_samples=10", "kmeans_samples"),
        ("jlcm:fake=true", "no fake-quant path"),
    ],
)
def test_config_validation(quant_plugin, spec, message):
    with pytest.raises(CrossedgeError, match=message):
        parse_spec(spec)
    with pytest.raises(QuantConfigError, match=message):
        JLCMConfig(**{k: type(getattr(JLCMConfig(), k))(v) if k != "fake" else True for k, v in [spec[5:].split("=")]})


def test_nominal_bits(quant_plugin):
    assert parse_spec("jlcm").nominal_bits() == 4
    assert parse_spec("jlcm:dim=4").nominal_bits() == 2
    assert parse_spec("jlcm:dim=1,codebook_size=16").nominal_bits() == 4


def test_layers_whose_width_is_not_a_multiple_of_dim_stay_float(quant_plugin, fresh_lm, sample_ids):
    model, _ = fresh_lm
    with pytest.warns(UserWarning, match="not a multiple of dim 3"):
        result = quantize(model, "jlcm:dim=3,group_size=0,steps=2,kmeans_iters=3,rounds=1", calibration=[sample_ids])
    assert not result.modules  # the tiny model's widths are 32, 64 and 128: none is quantized
