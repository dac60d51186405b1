"""crossedge-quant's model format passes core's model-format conformance suite."""

import copy

import pytest

from crossedge.core.conformance.model_format import ModelFormatConformance
from crossedge.core.testing import save_tiny_causal_lm
from crossedge.quant import quantize_, save_quantized
from crossedge.quant.serialization import QuantizedFolderFormat


class TestQuantizedFolderFormat(ModelFormatConformance):
    @pytest.fixture
    def model_format(self):
        return QuantizedFolderFormat()

    @pytest.fixture
    def folder(self, quant_plugin, tiny_lm, tmp_path):
        model, tokenizer = tiny_lm
        return save_quantized(quantize_(copy.deepcopy(model), "rtn:bits=4,group_size=32"), tmp_path / "q", tokenizer)

    @pytest.fixture
    def not_folder(self, tmp_path):
        return save_tiny_causal_lm(tmp_path / "fp32", hidden=64)  # a plain float folder: safetensors, no map
