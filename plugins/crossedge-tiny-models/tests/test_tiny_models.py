"""The example plugin's own tests: its sources build, load and generate."""

import torch

import crossedge_tiny_models
from crossedge.core import get_registry, registered


def test_sources_register_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path))
    with registered(crossedge_tiny_models, name="tiny-models-under-test"):
        registry = get_registry("model_source")
        assert {"tiny-llama", "tiny-gpt2"} <= set(registry.names())
        for name in ("tiny-llama", "tiny-gpt2"):
            loaded = registry.get(name).load()
            ids = loaded.tokenizer("hello", return_tensors="pt").input_ids
            out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False)
            assert out.shape == (1, ids.shape[1] + 4)
            assert loaded.tokenizer.decode(ids[0]) == "hello"


def test_same_seed_gives_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "a"))
    first = crossedge_tiny_models.TinyRandomModel("t", "llama").load().model
    monkeypatch.setenv("CROSSEDGE_CACHE", str(tmp_path / "b"))
    second = crossedge_tiny_models.TinyRandomModel("t", "llama").load().model
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
