"""crossedge-specdec: lossless speculative decoding with pluggable drafters.

Names are imported on first use (PEP 562), so importing the package (and its plugin
module, which every ``crossedge`` command loads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "CopyDrafter": "drafters",
    "CrossVocabDrafter": "drafters",
    "Draft": "drafters",
    "DraftModelDrafter": "drafters",
    "Drafter": "drafters",
    "HistoryDrafter": "drafters",
    "build_drafters": "drafters",
    "build_chain": "drafters",
    "check_drafter_spec": "drafters",
    "GenerationResult": "engine",
    "RunStats": "engine",
    "SpeculativeDecoder": "engine",
    "TokenStream": "engine",
    "NonFiniteLogitsError": "errors",
    "PromptTooLongError": "errors",
    "SpecdecError": "errors",
    "ConstantPolicy": "policies",
    "CostAwarePolicy": "policies",
    "DraftLengthPolicy": "policies",
    "HeuristicPolicy": "policies",
    "build_policy": "policies",
    "SamplingConfig": "sampling",
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
