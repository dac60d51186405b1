"""crossedge-ondevice: backends, profiling, memory-bounded training, latency prediction and sub-network search.

Names are imported on first use (PEP 562), so importing the package (and its plugin
module, which every ``crossedge`` command loads) does not import torch.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Backend": ".backends",
    "BackendCapabilityError": ".backends",
    "BackendUnavailableError": ".backends",
    "ExecuTorchBackend": ".backends",
    "OnnxRuntimeBackend": ".backends",
    "PreparedModel": ".backends",
    "TorchCompileBackend": ".backends",
    "TorchEagerBackend": ".backends",
    "get_backend": ".backends",
    "max_abs_diff": ".backends",
    "prepare": ".backends",
    "ElasticMobileNet": ".elastic",
    "ElasticSpace": ".elastic",
    "SubnetConfig": ".elastic",
    "calibrate_batch_norm": ".elastic",
    "extract_subnet": ".elastic",
    "progressive_shrinking": ".elastic",
    "PartialConv2d": ".finetune_methods",
    "choose_sparse_scheme": ".finetune_methods",
    "AdaptedPredictor": ".latency",
    "DeviceConfig": ".latency",
    "MetaLatencyPredictor": ".latency",
    "SavedTensorMeter": ".memory",
    "TrainingMemory": ".memory",
    "measure_training_step": ".memory",
    "AffineNorm": ".mobiletl",
    "SignMaskActivation": ".mobiletl",
    "SignMaskHardswish": ".mobiletl",
    "SignMaskReLU6": ".mobiletl",
    "pack_bits": ".mobiletl",
    "unpack_bits": ".mobiletl",
    "InvertedResidual": ".networks",
    "MobileNetConfig": ".networks",
    "MobileNetV2": ".networks",
    "StageConfig": ".networks",
    "profile": ".profiling",
    "SearchResult": ".search",
    "FinetuneResult": ".training",
    "run_finetune": ".training",
}

# ``search`` is both a submodule and its main function. Eagerly, the function shadowed the
# module; lazily, importing the submodule binds the name to the module, so the function is
# reached as ``crossedge.ondevice.search.search`` (as every caller in the repo already does).

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
