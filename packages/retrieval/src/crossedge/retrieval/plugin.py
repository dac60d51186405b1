"""The retrieval plugin: registers its scorers, losses, benchmark and the ``crossedge retrieval`` commands.

Only registration lives here, as ``module:attr`` references imported on first use, so
loading the plugin (``crossedge --help``, ``crossedge plugins``) imports neither torch nor
the rest of the package.
"""

from __future__ import annotations

from crossedge.core import hookimpl

#: registered name -> class, in crossedge.retrieval
SCORERS = {
    "bi-encoder": "scorers:BiEncoder",
    "cross-encoder": "scorers:CrossEncoder",
    "uni-encoder": "scorers:UniEncoder",
    "bm25": "lexical:BM25Scorer",
}
LOSSES = {
    "pointwise-bce": "losses:PointwiseBCE",
    "margin-mse": "losses:MarginMSE",
    "infonce": "losses:InfoNCE",
    "listnet-kl": "losses:ListNetKL",
    "partial-ranking": "losses:PartialRankingDistillation",
    "infonce-kl": "losses:LabelsWithDistillation",
}


@hookimpl
def register_scorers(register):
    """Register the bi-, cross- and uni-encoder and BM25 (classes)."""
    for name, where in SCORERS.items():
        register(f"crossedge.retrieval.{where}", name=name)


@hookimpl
def register_losses(register):
    """Register the ranking and distillation losses (classes)."""
    for name, where in LOSSES.items():
        register(f"crossedge.retrieval.{where}", name=name)


@hookimpl
def register_benchmarks(register):
    """Register ``crossedge bench run retrieval``."""
    register("crossedge.retrieval.benchmark:RetrievalBenchmark()", name="retrieval")


@hookimpl
def register_commands(cli):
    """Add ``crossedge retrieval index|search|train|collection|mixture|speed|bench``."""
    from .cli import retrieval
    from .mixture_cli import mixture_cmd

    retrieval.add_command(mixture_cmd)
    cli.add_command(retrieval)
