"""crossedge-quant: quantizer plugins with real int8/int4 CPU kernels, perplexity evaluation and lossless save/load."""

from __future__ import annotations

from crossedge.core.contracts.quantizer import QuantizeResult

from .api import (
    Quantizer,
    Replacements,
    as_config,
    get_quantizer,
    quantization_map,
    quantize,
    quantize_,
    select_modules,
    weight_bytes,
)
from .calibration import CalibrationError, LayerStats, collect_stats, text_batches
from .config import CONFIG_VERSION, QuantConfig, QuantConfigError, config_from_dict, parse_spec
from .methods.gptq import GPTQConfig
from .methods.mixed import MixedConfig
from .methods.rtn import RTNConfig
from .methods.w8a8 import CrossQuantConfig, SmoothQuantConfig, W8A8Config
from .modules import (
    FakeQuantLinear,
    Int4WeightLinear,
    Int8DynamicLinear,
    Int8Embedding,
    Int8WeightLinear,
    QuantizedLinear,
    kernel_fraction,
    track_kernel,
)
from .serialization import QuantFormatError, QuantizedFolderFormat, load_quantized, save_quantized

__all__ = [
    "CONFIG_VERSION",
    "CalibrationError",
    "CrossQuantConfig",
    "FakeQuantLinear",
    "GPTQConfig",
    "Int4WeightLinear",
    "Int8DynamicLinear",
    "Int8Embedding",
    "Int8WeightLinear",
    "LayerStats",
    "MixedConfig",
    "QuantConfig",
    "QuantConfigError",
    "QuantFormatError",
    "QuantizeResult",
    "QuantizedFolderFormat",
    "QuantizedLinear",
    "Quantizer",
    "Replacements",
    "RTNConfig",
    "SmoothQuantConfig",
    "W8A8Config",
    "as_config",
    "collect_stats",
    "config_from_dict",
    "get_quantizer",
    "kernel_fraction",
    "load_quantized",
    "parse_spec",
    "quantization_map",
    "quantize",
    "quantize_",
    "save_quantized",
    "select_modules",
    "text_batches",
    "track_kernel",
    "weight_bytes",
]
