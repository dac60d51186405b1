"""Loading a local folder: every weight comes from the checkpoint, or the load is refused with a one-line error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from crossedge.core import registered
from crossedge.core.contracts.model_format import ModelFormat
from crossedge.core.errors import ModelSourceError
from crossedge.core.hookspecs import hookimpl
from crossedge.core.sources import LoadedModel, load_model
from crossedge.core.testing import save_tiny_causal_lm


@pytest.fixture
def tiny_folder(tmp_path):
    return save_tiny_causal_lm(tmp_path / "tiny", hidden=64)


def _rewrite(folder, change):
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    change(tensors)
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_plain_folder_still_loads(tiny_folder):
    loaded = load_model(str(tiny_folder))
    assert loaded.model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 259)


def test_unexpected_and_missing_tensors_are_refused_with_their_names(tiny_folder):
    def quantized_names(tensors):
        # What a quantized folder looks like to plain transformers: qweight/scale instead of weight.
        for layer in (0, 1):
            name = f"model.layers.{layer}.mlp.gate_proj"
            tensors[f"{name}.qweight"] = tensors.pop(f"{name}.weight").to(torch.int8)
            tensors[f"{name}.scale"] = torch.ones(128)

    _rewrite(tiny_folder, quantized_names)
    with pytest.raises(ModelSourceError) as info:
        load_model(str(tiny_folder))
    message = str(info.value)
    assert "2 tensor(s) missing from the checkpoint (model.layers.0.mlp.gate_proj.weight," in message
    assert "4 tensor(s) in the checkpoint but not in the model (model.layers.0.mlp.gate_proj.qweight," in message
    assert "never runs on weights that were not loaded" in message and "\n" not in message


def test_a_tensor_of_the_wrong_shape_is_refused(tiny_folder):
    _rewrite(tiny_folder, lambda t: t.__setitem__("model.layers.0.mlp.up_proj.weight", torch.zeros(3, 3)))
    with pytest.raises(ModelSourceError, match=r"1 tensor\(s\) of the wrong shape \(model.layers.0.mlp.up_proj"):
        load_model(str(tiny_folder))


def test_many_missing_keys_are_counted_not_all_listed(tiny_folder):
    _rewrite(tiny_folder, lambda t: [t.pop(k) for k in list(t) if k.endswith("proj.weight")])
    with pytest.raises(ModelSourceError, match=r"14 tensor\(s\) missing from the checkpoint \(.* and 9 more\)"):
        load_model(str(tiny_folder))


@pytest.mark.parametrize("keep", [4, 0, 100, -16])
def test_truncated_safetensors_is_one_line_error(tiny_folder, keep):
    weights = tiny_folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelSourceError, match=r"model.safetensors is (truncated|\d+ bytes, too short)") as info:
        load_model(str(tiny_folder))
    assert "models pull NAME --force" in str(info.value)


def test_damaged_header_is_one_line_error(tiny_folder):
    weights = tiny_folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe{["
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError, match="damaged safetensors header"):
        load_model(str(tiny_folder))


def test_quantized_folder_without_its_plugin_names_the_package(tiny_folder):
    (tiny_folder / "quantization.json").write_text(json.dumps({"format": "crossedge.quant", "version": 1}))
    with pytest.raises(ModelSourceError, match="pip install crossedge-quant"):
        load_model(str(tiny_folder))


class MarkerFormat(ModelFormat):
    """A format that claims folders with a marker file and records what it was asked."""

    name = "marker-format"
    marker = "marker.json"

    def __init__(self):
        self.calls = []

    def load(self, folder, *, name, source, task="causal-lm", **kwargs):
        self.calls.append((folder, task, kwargs))
        return LoadedModel(name=name, model="model", tokenizer="tok", path=folder, source=source)


class FormatPlugin:
    def __init__(self, *formats):
        self.formats = formats

    @hookimpl
    def register_model_formats(self, register):
        for fmt in self.formats:
            register(fmt)


def test_a_registered_format_loads_the_folders_it_claims(tiny_folder):
    fmt = MarkerFormat()
    (tiny_folder / "marker.json").write_text("{}")
    with registered(FormatPlugin(fmt), name="format-test"):
        loaded = load_model(str(tiny_folder))
    assert loaded.model == "model" and fmt.calls[0][0] == tiny_folder.resolve()


def test_two_formats_claiming_one_folder_is_an_error(tiny_folder):
    class Other(MarkerFormat):
        name = "other-format"

    (tiny_folder / "marker.json").write_text("{}")
    with (
        registered(FormatPlugin(MarkerFormat(), Other()), name="format-test"),
        pytest.raises(ModelSourceError, match="claimed by several model formats"),
    ):
        load_model(str(tiny_folder))
