"""crossedge-retrieval: bi-, cross- and uni-encoder scorers, BM25, distillation losses and a code-search benchmark."""

from __future__ import annotations

from .index import DenseIndex, IndexCorruptedError, build_index
from .lexical import BM25Scorer
from .losses import LOSSES, get_loss
from .scorers import BiEncoder, CrossEncoder, Scorer, ScorerError, UniEncoder, load_scorer

__all__ = [
    "LOSSES",
    "BM25Scorer",
    "BiEncoder",
    "CrossEncoder",
    "DenseIndex",
    "IndexCorruptedError",
    "Scorer",
    "ScorerError",
    "UniEncoder",
    "build_index",
    "get_loss",
    "load_scorer",
]
