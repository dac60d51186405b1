"""A conformance suite every quantizer runs by subclassing :class:`QuantizerConformance`.

A plugin declares one class with the method spec and a tolerance::

    class TestMyMethod(QuantizerConformance):
        spec = "mymethod:bits=8"
        tolerance = 0.05

and pytest collects the checks below (the test module must register the
plugin, e.g. with a ``quant_plugin`` fixture, because the suite looks the method
up by name).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytest
import torch

from .api import quantization_map, quantize_, weight_bytes
from .modules import QuantizedLinear
from .serialization import load_quantized, save_quantized

SAMPLE_TEXT = "Quantized models should keep their predictions: the quick brown fox jumps over the lazy dog. " * 3


class QuantizerConformance:
    """Checks every quantizer must pass on a tiny random causal LM."""

    #: Method spec passed to quantize_, e.g. ``"rtn:bits=4,group_size=32"``.
    spec: ClassVar[str] = ""
    #: Largest allowed ``max|logits - fp32 logits| / max|fp32 logits|``.
    tolerance: ClassVar[float] = 0.05
    #: Whether the method shrinks the model (fake-quant paths do not).
    shrinks: ClassVar[bool] = True

    @pytest.fixture
    def conformance_model(self, quant_plugin: Any) -> tuple[Any, Any, torch.Tensor]:
        """A tiny Llama (hidden 64), its tokenizer and one batch of input ids."""
        from crossedge.core.testing import tiny_causal_lm

        model, tokenizer = tiny_causal_lm("llama", seed=0, hidden=64, layers=2)
        ids = tokenizer(SAMPLE_TEXT, return_tensors="pt").input_ids
        return model, tokenizer, ids

    def quantized(self, model: Any, ids: torch.Tensor) -> Any:
        """A quantized deep copy of ``model`` calibrated on ``ids``."""
        return quantize_(copy.deepcopy(model), self.spec, calibration=[ids])

    def test_outputs_close_to_float(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        quant = self.quantized(model, ids)
        with torch.no_grad():
            ref = model(ids).logits
            out = quant(ids).logits
        error = float((out - ref).abs().max() / ref.abs().max())
        assert error < self.tolerance, f"{self.spec}: relative logit error {error:.4f} >= {self.tolerance}"
        assert any(isinstance(m, QuantizedLinear) for m in quant.modules())

    def test_lm_head_kept_and_map_recorded(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        quant = self.quantized(model, ids)
        assert isinstance(quant.get_output_embeddings(), torch.nn.Linear)
        assert quant.get_output_embeddings().weight is quant.get_input_embeddings().weight
        qmap = quantization_map(quant)
        assert qmap["modules"] and "lm_head" not in qmap["modules"]
        if self.shrinks:
            assert weight_bytes(quant) < weight_bytes(model)

    def test_save_load_round_trip(self, conformance_model: Any, tmp_path: Any) -> None:
        model, tokenizer, ids = conformance_model
        quant = self.quantized(model, ids)
        save_quantized(quant, tmp_path, tokenizer)
        loaded = load_quantized(tmp_path)
        with torch.no_grad():
            assert torch.equal(quant(ids).logits, loaded(ids).logits)
        assert quantization_map(loaded)["config"] == quantization_map(quant)["config"]
