"""crossedge-ondevice: backends, profiling, memory-bounded training, latency prediction and sub-network search."""

from __future__ import annotations

from .backends import (
    Backend,
    BackendCapabilityError,
    BackendUnavailableError,
    ExecuTorchBackend,
    OnnxRuntimeBackend,
    PreparedModel,
    TorchCompileBackend,
    TorchEagerBackend,
    get_backend,
    max_abs_diff,
    prepare,
)
from .elastic import (
    ElasticMobileNet,
    ElasticSpace,
    SubnetConfig,
    calibrate_batch_norm,
    extract_subnet,
    progressive_shrinking,
)
from .finetune_methods import PartialConv2d, choose_sparse_scheme
from .latency import AdaptedPredictor, DeviceConfig, MetaLatencyPredictor
from .memory import SavedTensorMeter, TrainingMemory, measure_training_step
from .mobiletl import AffineNorm, SignMaskActivation, SignMaskHardswish, SignMaskReLU6, pack_bits, unpack_bits
from .networks import InvertedResidual, MobileNetConfig, MobileNetV2, StageConfig
from .profiling import profile
from .search import SearchResult, search
from .training import FinetuneResult, run_finetune

__all__ = [
    "AdaptedPredictor",
    "AffineNorm",
    "Backend",
    "BackendCapabilityError",
    "BackendUnavailableError",
    "DeviceConfig",
    "ElasticMobileNet",
    "ElasticSpace",
    "ExecuTorchBackend",
    "FinetuneResult",
    "InvertedResidual",
    "MetaLatencyPredictor",
    "MobileNetConfig",
    "MobileNetV2",
    "OnnxRuntimeBackend",
    "PartialConv2d",
    "PreparedModel",
    "SavedTensorMeter",
    "SearchResult",
    "SignMaskActivation",
    "SignMaskHardswish",
    "SignMaskReLU6",
    "StageConfig",
    "SubnetConfig",
    "TorchCompileBackend",
    "TorchEagerBackend",
    "TrainingMemory",
    "calibrate_batch_norm",
    "choose_sparse_scheme",
    "extract_subnet",
    "get_backend",
    "max_abs_diff",
    "measure_training_step",
    "pack_bits",
    "prepare",
    "profile",
    "progressive_shrinking",
    "run_finetune",
    "search",
    "unpack_bits",
]
