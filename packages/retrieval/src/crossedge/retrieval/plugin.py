"""The retrieval plugin: registers its scorers, losses, benchmark and the ``crossedge retrieval`` commands.

Only registration lives here; every hook imports what it registers, so loading the
plugin imports neither torch nor the rest of the package.
"""

from __future__ import annotations

from crossedge.core import hookimpl


@hookimpl
def register_scorers(register):
    """Register the bi-, cross- and uni-encoder and BM25 (classes)."""
    from .lexical import BM25Scorer
    from .scorers import SCORER_CLASSES

    for scorer in (*SCORER_CLASSES, BM25Scorer):
        register(scorer)


@hookimpl
def register_losses(register):
    """Register the five ranking and distillation losses (classes)."""
    from .losses import LOSSES

    for loss in LOSSES:
        register(loss)


@hookimpl
def register_benchmarks(register):
    """Register ``crossedge bench run retrieval``."""
    from .benchmark import RetrievalBenchmark

    register(RetrievalBenchmark())


@hookimpl
def register_commands(cli):
    """Add ``crossedge retrieval index|search|train|collection|speed|bench``."""
    from .cli import retrieval

    cli.add_command(retrieval)
