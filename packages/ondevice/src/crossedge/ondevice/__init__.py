"""crossedge-ondevice: accelerator backends, profiling, memory-bounded training, latency prediction, sub-network search."""

from __future__ import annotations

from .backends import (
    Backend,
    BackendCapabilityError,
    BackendUnavailableError,
    PreparedModel,
    get_backend,
    max_abs_diff,
    prepare,
)
from .networks import MobileNetConfig, MobileNetV2, StageConfig

__all__ = [
    "Backend",
    "BackendCapabilityError",
    "BackendUnavailableError",
    "MobileNetConfig",
    "MobileNetV2",
    "PreparedModel",
    "StageConfig",
    "get_backend",
    "max_abs_diff",
    "prepare",
]
