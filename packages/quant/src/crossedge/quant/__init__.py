"""crossedge-quant: quantizer plugins with real int8/int4 CPU kernels, perplexity evaluation and lossless save/load.

Names are imported on first use (PEP 562), so importing the package (and its plugin
module, which every ``crossedge`` command loads) does not import torch.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the module that defines it (relative to this package, or absolute)
_EXPORTS: dict[str, str] = {
    "QuantizeResult": "crossedge.core.contracts.quantizer",
    "Quantizer": ".api",
    "Replacements": ".api",
    "as_config": ".api",
    "get_quantizer": ".api",
    "quantization_map": ".api",
    "quantize": ".api",
    "quantize_": ".api",
    "select_modules": ".api",
    "weight_bytes": ".api",
    "CalibrationError": ".calibration",
    "LayerStats": ".calibration",
    "collect_stats": ".calibration",
    "text_batches": ".calibration",
    "FourBitFormatError": ".cnn.saved",
    "FourBitTrainingConfig": ".cnn.config",
    "load_four_bit": ".cnn.saved",
    "save_four_bit": ".cnn.saved",
    "CONFIG_VERSION": ".config",
    "QuantConfig": ".config",
    "QuantConfigError": ".config",
    "config_from_dict": ".config",
    "parse_spec": ".config",
    "GPTQConfig": ".methods.gptq",
    "MixedConfig": ".methods.mixed",
    "RTNConfig": ".methods.rtn",
    "CrossQuantConfig": ".methods.w8a8",
    "SmoothQuantConfig": ".methods.w8a8",
    "W8A8Config": ".methods.w8a8",
    "FakeQuantLinear": ".modules",
    "Int4WeightLinear": ".modules",
    "Int8DynamicLinear": ".modules",
    "Int8Embedding": ".modules",
    "Int8WeightLinear": ".modules",
    "QuantizedLinear": ".modules",
    "kernel_fraction": ".modules",
    "track_kernel": ".modules",
    "QuantFormatError": ".serialization",
    "QuantizedFolderFormat": ".serialization",
    "load_quantized": ".serialization",
    "save_quantized": ".serialization",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
