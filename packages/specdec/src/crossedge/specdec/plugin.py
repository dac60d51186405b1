"""The specdec plugin module: registers the built-in drafters, draft-length policies and ``crossedge specdec``."""

from __future__ import annotations

from crossedge.core import hookimpl

from .drafters import CopyDrafter, CrossVocabDrafter, DraftModelDrafter, HistoryDrafter
from .early_exit import EarlyExitDrafter
from .policies import ConstantPolicy, CostAwarePolicy, HeuristicPolicy


@hookimpl
def register_drafters(register):
    register(CopyDrafter, aliases=("prompt-lookup", "copyspec"))
    register(HistoryDrafter, aliases=("lookup-cache",))
    register(DraftModelDrafter, aliases=("draft",))
    register(CrossVocabDrafter, aliases=("universal",))
    register(EarlyExitDrafter, aliases=("self-speculative", "layerskip"))


@hookimpl
def register_draft_policies(register):
    register(ConstantPolicy)
    register(HeuristicPolicy)
    register(CostAwarePolicy)


@hookimpl
def register_benchmarks(register):
    from .bench import SpecdecBenchmark

    register(SpecdecBenchmark())


@hookimpl
def register_commands(cli):
    from .cli import specdec
    from .exit_cli import train_exit

    specdec.add_command(train_exit)
    cli.add_command(specdec)
