"""crossedge-specdec: lossless speculative decoding with pluggable drafters."""

from __future__ import annotations

from .drafters import (
    CopyDrafter,
    CrossVocabDrafter,
    Draft,
    Drafter,
    DraftModelDrafter,
    HistoryDrafter,
    build_chain,
    build_drafters,
    check_drafter_spec,
)
from .engine import GenerationResult, RunStats, SpeculativeDecoder, TokenStream
from .errors import NonFiniteLogitsError, PromptTooLongError, SpecdecError
from .policies import ConstantPolicy, CostAwarePolicy, DraftLengthPolicy, HeuristicPolicy, build_policy
from .sampling import SamplingConfig

__all__ = [
    "ConstantPolicy",
    "CopyDrafter",
    "CostAwarePolicy",
    "CrossVocabDrafter",
    "Draft",
    "DraftLengthPolicy",
    "DraftModelDrafter",
    "Drafter",
    "GenerationResult",
    "HeuristicPolicy",
    "HistoryDrafter",
    "NonFiniteLogitsError",
    "PromptTooLongError",
    "RunStats",
    "SamplingConfig",
    "SpecdecError",
    "SpeculativeDecoder",
    "TokenStream",
    "build_chain",
    "build_drafters",
    "build_policy",
    "check_drafter_spec",
]
