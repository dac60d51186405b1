"""The specdec plugin module: registers the built-in drafters, draft-length policies, unmasking strategies and
``crossedge specdec``."""

from __future__ import annotations

from crossedge.core.hookspecs import hookimpl

# Registered by "module:attr" reference: the drafter modules (and torch) are imported only
# when a drafter is used, so `crossedge --help` and `crossedge plugins` stay fast.


@hookimpl
def register_drafters(register):
    register("crossedge.specdec.drafters:CopyDrafter", name="copy", aliases=("prompt-lookup", "copyspec"))
    register("crossedge.specdec.drafters:HistoryDrafter", name="history", aliases=("lookup-cache",))
    register("crossedge.specdec.drafters:DraftModelDrafter", name="draft-model", aliases=("draft",))
    register("crossedge.specdec.drafters:CrossVocabDrafter", name="cross-vocab", aliases=("universal",))
    register("crossedge.specdec.mirror:MirrorDrafter", name="mirror", aliases=("mirror-sd",))
    register(
        "crossedge.specdec.early_exit:EarlyExitDrafter", name="early-exit", aliases=("self-speculative", "layerskip")
    )
    register("crossedge.specdec.heads.drafter:MedusaDrafter", name="medusa")
    register("crossedge.specdec.heads.drafter:HiddenTransferDrafter", name="hidden-transfer")
    register("crossedge.specdec.heads.drafter:CloverDrafter", name="clover")
    register("crossedge.specdec.heads.drafter:PPDDrafter", name="ppd", aliases=("parallel-prompt",))
    register("crossedge.specdec.lora_drop.drafter:LoraDropDrafter", name="lora-drop", aliases=("loradrop",))


@hookimpl
def register_draft_policies(register):
    register("crossedge.specdec.policies:ConstantPolicy", name="constant")
    register("crossedge.specdec.policies:HeuristicPolicy", name="heuristic")
    register("crossedge.specdec.policies:CostAwarePolicy", name="cost-aware")


@hookimpl
def register_benchmarks(register):
    register("crossedge.specdec.bench:SpecdecBenchmark()", name="specdec")


@hookimpl
def register_commands(cli):
    from .cli import specdec
    from .exit_cli import train_exit
    from .heads_cli import train_heads
    from .lora_drop_cli import train_lora_drop
    from .parallel.cli import lexical_bench, parallel_bench, train_cd4lm, train_dllm, train_filter, train_lexical

    specdec.add_command(train_exit)
    specdec.add_command(train_heads)
    specdec.add_command(train_lora_drop)
    specdec.add_command(train_dllm)
    specdec.add_command(parallel_bench)
    specdec.add_command(train_filter)
    specdec.add_command(train_cd4lm)
    specdec.add_command(train_lexical)
    specdec.add_command(lexical_bench)
    cli.add_command(specdec)


@hookimpl
def register_unmasking_strategies(register):
    register("crossedge.specdec.parallel.strategies:LowConfidenceRemasking", name="low-confidence", aliases=("llada",))
    register("crossedge.specdec.parallel.strategies:ConfidenceThreshold", name="threshold", aliases=("fast-dllm",))
    register("crossedge.specdec.parallel.strategies:TokenEditing", name="token-editing", aliases=("llada2.1",))
    register("crossedge.specdec.parallel.learn2pd:Learn2PD", name="learn2pd")
    register("crossedge.specdec.parallel.cd4lm:AdaptiveConfidence", name="adaptive", aliases=("cd4lm",))
