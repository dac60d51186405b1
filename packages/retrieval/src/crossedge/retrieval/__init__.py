"""crossedge-retrieval: bi-, cross- and uni-encoder scorers, BM25, distillation losses and a code-search benchmark.

The public names are imported on first use, so importing the package (as the plugin
and the CLI do) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DenseIndex": "index",
    "IndexCorruptedError": "index",
    "build_index": "index",
    "BM25Scorer": "lexical",
    "LOSSES": "losses",
    "get_loss": "losses",
    "BiEncoder": "scorers",
    "CrossEncoder": "scorers",
    "Scorer": "scorers",
    "ScorerError": "scorers",
    "UniEncoder": "scorers",
    "load_scorer": "scorers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
