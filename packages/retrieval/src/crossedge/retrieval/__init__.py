"""crossedge-retrieval: bi-, cross- and uni-encoder scorers, BM25, distillation losses and a code-search benchmark.

The public names are imported on first use, so importing the package (as the plugin
and the CLI do) does not import torch.
"""

from __future__ import annotations

from crossedge.core.lazy import lazy_exports

_EXPORTS = {
    "DenseIndex": ".index",
    "IndexCorruptedError": ".index",
    "build_index": ".index",
    "BM25Scorer": ".lexical",
    "LOSSES": ".losses",
    "get_loss": ".losses",
    "BiEncoder": ".scorers",
    "CrossEncoder": ".scorers",
    "Scorer": ".scorers",
    "ScorerError": ".scorers",
    "UniEncoder": ".scorers",
    "load_scorer": ".scorers",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
