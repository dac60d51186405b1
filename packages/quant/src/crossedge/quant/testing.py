"""crossedge-quant's conformance suite: core's quantizer suite plus checks of the quantization map.

A method built on :class:`crossedge.quant.Quantizer` declares one class with the method
spec and a tolerance::

    class TestMyMethod(QuantizerConformance):
        plugin = my_plugin_module      # registers the method (crossedge-quant's own plugin by default)
        spec = "mymethod:bits=8"
        tolerance = 0.05

and pytest collects core's checks (:class:`crossedge.core.conformance.quantizer.QuantizerConformance`)
and the ones below.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from crossedge.core.conformance.quantizer import SAMPLE_TEXT
from crossedge.core.conformance.quantizer import QuantizerConformance as CoreQuantizerConformance

from . import plugin as quant_plugin_module
from .api import quantization_map, weight_bytes
from .modules import QuantizedLinear

__all__ = ["SAMPLE_TEXT", "QuantizerConformance"]


class QuantizerConformance(CoreQuantizerConformance):
    """Core's quantizer suite, with crossedge-quant's plugin registered and map checks added."""

    plugin: ClassVar[Any] = quant_plugin_module

    def test_lm_head_kept_and_map_recorded(self, conformance_model: Any) -> None:
        model, _, ids = conformance_model
        _, result = self.quantized(model, ids)
        quant = result.model
        assert any(isinstance(m, QuantizedLinear) for m in quant.modules())
        assert isinstance(quant.get_output_embeddings(), torch.nn.Linear)
        assert quant.get_output_embeddings().weight is quant.get_input_embeddings().weight
        qmap = quantization_map(quant)
        assert qmap["modules"] and "lm_head" not in qmap["modules"]
        assert set(qmap["modules"]) == set(result.modules)
        if self.shrinks:
            assert weight_bytes(quant) < weight_bytes(model)
