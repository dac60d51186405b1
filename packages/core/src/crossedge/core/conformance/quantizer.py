"""The conformance suite every quantizer runs by subclassing :class:`QuantizerConformance`.

A plugin's tests declare one class::

    class TestMyMethod(QuantizerConformance):
        plugin = my_plugin_module        # registers the quantizer and its model format
        spec = "mymethod:bits=8"
        tolerance = 0.05

and pytest collects the checks below on a tiny random Llama from :mod:`crossedge.core.testing`:
outputs stay close to float, the quantized layers really store fewer bytes, a save and a load
through ``crossedge.core.sources.load_model`` give identical logits, the config round-trips
through its dict form and refuses unknown keys, and ``quantize`` leaves nothing on the instance.
"""

from __future__ import annotations

import copy
import json
from typing import Any, ClassVar

import pytest

from ..contracts.quantizer import QuantizerConfig, QuantizeResult, parse_config_spec, quantizer_class
from ..errors import CrossedgeError

SAMPLE_TEXT = "Quantized models should keep their predictions: the quick brown fox jumps over the lazy dog. " * 3


def _storage_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class QuantizerConformance:
    """Checks every quantizer must pass; subclasses set ``plugin`` and ``spec``."""

    #: The plugin (module or object) that registers the quantizer class and its model format.
    plugin: ClassVar[Any] = None
    #: Method spec, e.g. ``"rtn:bits=4,group_size=32"``.
    spec: ClassVar[str] = ""
    #: Largest allowed ``max|logits - fp32 logits| / max|fp32 logits|``.
    tolerance: ClassVar[float] = 0.05
    #: Whether the quantized layers store fewer bytes than the float ones (fake-quant paths do not).
    shrinks: ClassVar[bool] = True

    @pytest.fixture
    def registered_plugin(self) -> Any:
        """The plugin registered for one test (core tests never load entry points)."""
        from ..plugins import registered

        if self.plugin is None:
            pytest.fail(f"{type(self).__name__} must set 'plugin' to the plugin that registers its quantizer")
        with registered(self.plugin, name=f"conformance-{type(self).__name__}"):
            yield self.plugin

    @pytest.fixture
    def conformance_model(self, registered_plugin: Any) -> tuple[Any, Any, Any]:
        """A tiny Llama (hidden 64), its tokenizer and one batch of input ids."""
        from ..testing import tiny_causal_lm

        model, tokenizer = tiny_causal_lm("llama", seed=0, hidden=64, layers=2)
        ids = tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids
        return model, tokenizer, ids

    def config(self) -> QuantizerConfig:
        """The config the spec names, through the registry."""
        return parse_config_spec(self.spec)

    def quantized(self, model: Any, ids: Any) -> tuple[Any, QuantizeResult]:
        """A quantizer instance and the result of quantizing a deep copy of ``model`` calibrated on ``ids``."""
        config = self.config()
        quantizer = quantizer_class(config.method)()
        return quantizer, quantizer.quantize(copy.deepcopy(model), config, calibration=[ids])

    def test_outputs_close_to_float(self, conformance_model: Any) -> None:
        import torch

        model, _, ids = conformance_model
        _, result = self.quantized(model, ids)
        with torch.no_grad():
            ref = model(ids).logits
            out = result.model(ids).logits
        error = float((out - ref).abs().max() / ref.abs().max())
        assert error < self.tolerance, f"{self.spec}: relative logit error {error:.4f} >= {self.tolerance}"

    def test_result_names_the_replaced_layers(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        _, result = self.quantized(model, ids)
        assert isinstance(result, QuantizeResult) and result.modules
        assert result.config.to_dict() == self.config().to_dict()
        names = {name for name, _ in result.model.named_modules()}
        assert set(result.modules) <= names
        json.dumps(result.details)  # details are JSON-ready

    def test_quantized_layers_store_less(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        _, result = self.quantized(model, ids)
        for name in result.modules:
            before = model.get_submodule(name)
            after = result.model.get_submodule(name)
            if not hasattr(before, "weight"):
                continue
            old = _storage_bytes([before.weight] + ([before.bias] if getattr(before, "bias", None) is not None else []))
            new = _storage_bytes([*after.parameters(), *after.buffers()])
            if self.shrinks:
                assert new < old, f"{name}: {new} bytes after quantization, {old} before"
                float_params = [p for p in after.parameters() if p.is_floating_point() and p.numel() > 1]
                assert not float_params or sum(p.numel() for p in float_params) < before.weight.numel()

    def test_quantize_leaves_nothing_on_the_instance(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        config = self.config()
        quantizer = quantizer_class(config.method)()
        before = copy.copy(vars(quantizer))
        quantizer.quantize(copy.deepcopy(model), config, calibration=[ids])
        assert vars(quantizer) == before, "quantize must return its details, not keep them on the quantizer"

    def test_save_load_round_trip(self, conformance_model: Any, tmp_path: Any) -> None:
        import torch

        from ..sources import load_model

        model, tokenizer, ids = conformance_model
        quantizer, result = self.quantized(model, ids)
        folder = quantizer.save(result.model, tmp_path / "quantized", tokenizer)
        loaded = load_model(str(folder))
        with torch.no_grad():
            assert torch.equal(result.model(ids).logits, loaded.model(ids).logits)

    def test_config_dict_round_trip(self, registered_plugin: Any) -> None:
        config = self.config()
        data = json.loads(json.dumps(config.to_dict()))
        assert data["method"] == config.method and "version" in data
        assert quantizer_class(config.method).config_class is type(config), "config_class.method must be the name"
        assert type(config).from_dict(data) == config
        assert QuantizerConfig.from_dict(data) == config  # through the registry, by method name

    def test_config_refuses_unknown_keys(self, registered_plugin: Any) -> None:
        data = {**self.config().to_dict(), "no_such_option": 1}
        with pytest.raises(CrossedgeError, match="no_such_option"):
            QuantizerConfig.from_dict(data)
        method = self.config().method
        with pytest.raises(CrossedgeError, match="no_such_option"):
            parse_config_spec(f"{method}:no_such_option=1")

    def test_config_refuses_an_unknown_version(self, registered_plugin: Any) -> None:
        data = {**self.config().to_dict(), "version": 10_000}
        with pytest.raises(CrossedgeError, match="version"):
            QuantizerConfig.from_dict(data)
