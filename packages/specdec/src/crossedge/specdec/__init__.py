"""crossedge-specdec: lossless speculative decoding with pluggable drafters.

Names are imported on first use (PEP 562), so importing the package (and its plugin
module, which every ``crossedge`` command loads) does not import torch.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "BatchCounters": ".batched",
    "BatchedSpeculativeDecoder": ".batched",
    "RowHandle": ".batched",
    "CopyDrafter": ".drafters",
    "CrossVocabDrafter": ".drafters",
    "Draft": ".drafters",
    "DraftModelDrafter": ".drafters",
    "Drafter": ".drafters",
    "HistoryDrafter": ".drafters",
    "build_drafters": ".drafters",
    "build_chain": ".drafters",
    "check_drafter_spec": ".drafters",
    "GenerationResult": ".engine",
    "RunStats": ".engine",
    "SpeculativeDecoder": ".engine",
    "TokenStream": ".engine",
    "NonFiniteLogitsError": ".errors",
    "PromptTooLongError": ".errors",
    "SpecdecError": ".errors",
    "ConstantPolicy": ".policies",
    "CostAwarePolicy": ".policies",
    "DraftLengthPolicy": ".policies",
    "HeuristicPolicy": ".policies",
    "build_policy": ".policies",
    "SamplingConfig": ".sampling",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
