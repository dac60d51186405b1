"""Controllable multi-task network: one shared encoder, three decoders whose widths are chosen at run time.

A CNN encoder feeds a digit classifier, a denoising reconstruction decoder and a foreground
segmentation decoder, all on the same noisy image; each decoder's width (and the encoder's)
can be changed per inference, trained with sandwich sampling. A controller maps task-importance
weights and a latency budget measured on this CPU to per-task widths without retraining.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "Candidate": ".controller",
    "Choice": ".controller",
    "ComponentProfile": ".controller",
    "Controller": ".controller",
    "GridTable": ".controller",
    "build_profile": ".controller",
    "check_weights": ".controller",
    "grid_candidates": ".controller",
    "non_dominated": ".controller",
    "TASKS": ".data",
    "MultiTaskData": ".data",
    "TaskSplit": ".data",
    "load_data": ".data",
    "component_latency": ".evaluation",
    "component_quality": ".evaluation",
    "configuration_latency": ".evaluation",
    "configuration_quality": ".evaluation",
    "compare": ".experiment",
    "load_trained": ".experiment",
    "train_on": ".experiment",
    "Configuration": ".model",
    "MultiTaskConfig": ".model",
    "MultiTaskNetwork": ".model",
    "load_network": ".model",
    "save_network": ".model",
    "TrainConfig": ".training",
    "TrainResult": ".training",
    "sandwich": ".training",
    "train": ".training",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
