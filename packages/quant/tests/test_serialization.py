"""Save/load: bit-identical logits, and clear refusals of bad folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossedge.quant import QuantConfigError, QuantFormatError, load_quantized, quantize_, save_quantized


@pytest.fixture
def saved(quant_plugin, fresh_lm, sample_ids, tmp_path):
    model, tokenizer = fresh_lm
    quantize_(model, "rtn:bits=4,group_size=32")
    folder = save_quantized(model, tmp_path / "q", tokenizer)
    return model, folder


def _rewrite_map(folder, **changes):
    path = folder / "quantization.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def test_folder_contents_and_identical_logits(saved, sample_ids):
    model, folder = saved
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "quantization.json", "config.json"}
    data = json.loads((folder / "quantization.json").read_text())
    assert data["version"] == 1 and data["config"]["method"] == "rtn"
    assert data["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = load_quantized(folder)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    with torch.no_grad():
        assert torch.equal(model(sample_ids).logits, loaded(sample_ids).logits)


def test_unknown_map_version_is_refused(saved):
    _, folder = saved
    _rewrite_map(folder, version=2)
    with pytest.raises(QuantFormatError, match="version 2.*reads version 1"):
        load_quantized(folder)


def test_unknown_config_version_is_refused(saved):
    _, folder = saved
    data = json.loads((folder / "quantization.json").read_text())
    _rewrite_map(folder, config={**data["config"], "version": 5})
    with pytest.raises(QuantConfigError, match="version 5 is not supported"):
        load_quantized(folder)


def test_truncated_file_is_refused(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(QuantFormatError, match="truncated"):
        load_quantized(folder)


def test_truncated_file_without_recorded_size_is_refused(saved):
    _, folder = saved
    data = json.loads((folder / "quantization.json").read_text())
    _rewrite_map(folder, weights={"file": data["weights"]["file"]})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(QuantFormatError, match="cannot read"):
        load_quantized(folder)


def test_mismatched_shape_is_refused(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(n for n in tensors if n.endswith("q_proj.scales_zeros"))
    tensors[name] = tensors[name][:1].clone()
    save_file(tensors, str(weights))
    _rewrite_map(folder, weights={"file": "model.safetensors"})  # a file re-written by someone else
    with pytest.raises(QuantFormatError, match=f"tensor '{name}'.*shape"):
        load_quantized(folder)


def test_changed_bytes_fail_the_checksum(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(QuantFormatError, match="SHA-256"):
        load_quantized(folder)


def test_not_a_quantized_folder(tmp_path):
    with pytest.raises(QuantFormatError, match="no quantization.json"):
        load_quantized(tmp_path)


@pytest.mark.parametrize("spec", ["rtn:keep_lm_head=false", "w8a8:keep_lm_head=false"])
def test_quantized_tied_head_shares_rows_with_embedding(quant_plugin, fresh_lm, sample_ids, tmp_path, spec):
    from crossedge.quant import weight_bytes
    from crossedge.quant.modules import Int8Embedding

    model, tokenizer = fresh_lm
    before = weight_bytes(model)
    quantize_(model, spec)
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(embedding, Int8Embedding) and embedding.qweight is head.qweight
    # every matrix is int8 now, counted once: about a quarter of fp32 plus norms and scales
    assert weight_bytes(model) < 0.3 * before
    with torch.no_grad():
        out = model(sample_ids).logits
    save_quantized(model, tmp_path, tokenizer)
    loaded = load_quantized(tmp_path)
    assert loaded.get_input_embeddings().qweight is loaded.get_output_embeddings().qweight
    with torch.no_grad():
        assert torch.equal(loaded(sample_ids).logits, out)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modules": ["not", "an", "object"]}, "'modules' is missing or not an object"),
        ({"modules": {"model.layers.0.mlp.up_proj": "int4_weight"}}, "must be an object with 'kind' and 'spec'"),
        ({"modules": {"model.layers.0.mlp.up_proj": {"kind": "int4_weight"}}}, "must be an object with 'kind'"),
        ({"config": None}, "'config' is missing or not an object"),
        ({"config": {"version": 1}}, "names no method"),
        ({"tied": ["lm_head.weight"]}, "'tied' is not an object"),
        ({"tied": {"lm_head.weight": 3}}, "'tied' must map tensor names"),
        ({"weights": "model.safetensors"}, "'weights' is not an object"),
        ({"weights": {"file": "../elsewhere.safetensors"}}, "must be a file name inside the folder"),
    ],
)
def test_structural_damage_in_the_map_is_one_error(saved, change, message):
    _, folder = saved
    _rewrite_map(folder, **change)
    with pytest.raises((QuantFormatError, QuantConfigError), match=message):
        load_quantized(folder)


def test_a_bad_module_spec_is_one_error(saved):
    _, folder = saved
    data = json.loads((folder / "quantization.json").read_text())
    name = next(iter(data["modules"]))
    data["modules"][name]["spec"]["colour"] = "red"
    _rewrite_map(folder, modules=data["modules"])
    with pytest.raises(QuantFormatError, match=f"module '{name}' has a bad spec"):
        load_quantized(folder)


def test_a_kind_the_method_does_not_produce_is_refused(saved):
    _, folder = saved
    data = json.loads((folder / "quantization.json").read_text())
    name = next(iter(data["modules"]))
    data["modules"][name]["kind"] = "int8_dynamic"  # a w8a8 module in an rtn file
    _rewrite_map(folder, modules=data["modules"])
    with pytest.raises(QuantFormatError, match="kind 'int8_dynamic', which method 'rtn' does not produce"):
        load_quantized(folder)
