"""crossedge-quant: quantizer plugins with real int8/int4 CPU kernels, perplexity evaluation and lossless save/load.

Names are imported on first use (PEP 562), so importing the package (and its plugin
module, which every ``crossedge`` command loads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Quantizer": "api",
    "as_config": "api",
    "get_quantizer": "api",
    "quantization_map": "api",
    "quantize_": "api",
    "select_modules": "api",
    "weight_bytes": "api",
    "CalibrationError": "calibration",
    "LayerStats": "calibration",
    "collect_stats": "calibration",
    "text_batches": "calibration",
    "CONFIG_VERSION": "config",
    "CrossQuantConfig": "config",
    "GPTQConfig": "config",
    "MixedConfig": "config",
    "QuantConfig": "config",
    "QuantConfigError": "config",
    "RTNConfig": "config",
    "SmoothQuantConfig": "config",
    "W8A8Config": "config",
    "config_from_dict": "config",
    "parse_spec": "config",
    "FakeQuantLinear": "modules",
    "Int4WeightLinear": "modules",
    "Int8DynamicLinear": "modules",
    "Int8Embedding": "modules",
    "Int8WeightLinear": "modules",
    "QuantizedLinear": "modules",
    "kernel_fraction": "modules",
    "track_kernel": "modules",
    "QuantFormatError": "serialization",
    "load_quantized": "serialization",
    "save_quantized": "serialization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
