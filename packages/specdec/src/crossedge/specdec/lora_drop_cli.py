"""``crossedge specdec train-lora-drop``: self-distil LoRA-Drop adapters and compare them with the full model."""

from __future__ import annotations

import click

from crossedge.core.bench import format_table

from .exit_cli import distillation_options


@click.command(name="train-lora-drop")
@click.option("--model", "model_name", required=True, help="Target model (name, folder or hub id).")
@click.option(
    "--drop",
    default="block",
    show_default=True,
    help="Droppable layers (0-based): 'block' (num_layers // 4 in the middle), 'block:count=C,start=S' "
    "or 'layers:ids=3+5+7'.",
)
@click.option("--rank", default=8, show_default=True, type=click.IntRange(min=1), help="LoRA rank.")
@click.option(
    "--refresh",
    default=4,
    show_default=True,
    type=click.IntRange(min=0),
    help="Train for a full step every this many steps (0: never).",
)
@distillation_options(
    "the adapters",
    lr=1e-3,
    minutes="Stop training after this.",
    prompts=64,
    prompt_tokens=48,
    new_tokens=48,
    batch_size=4,
)
def train_lora_drop(
    model_name, drop, rank, refresh, out, prompts, prompt_tokens, new_tokens, epochs, batch_size, lr, max_minutes, seed
):
    """Train LoRA-Drop adapters; print held-out perplexity and greedy agreement: full vs dropped vs dropped+LoRA."""
    from crossedge.core import load_model

    from .exit_head import TrainConfig
    from .lora_drop.training import train_lora_drop as train

    loaded = load_model(model_name)
    result = train(
        loaded.model,
        loaded.tokenizer,
        loaded.source.name,
        drop,
        rank=rank,
        refresh=refresh,
        out=out,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        holdout=max(4, prompts // 6),
        config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes),
    )
    rows = [
        {"model": "full", "perplexity": result.perplexity_full, "greedy_agreement": 1.0},
        {"model": "dropped", "perplexity": result.perplexity_dropped, "greedy_agreement": result.agreement_dropped},
        {"model": "dropped+LoRA", "perplexity": result.perplexity_lora, "greedy_agreement": result.agreement_lora},
    ]
    click.echo(format_table(rows, list(rows[0])))
    click.echo(
        f"dropped layers {result.dropped}, rank {result.rank}, refresh {result.refresh}: {result.steps} steps in "
        f"{result.seconds:.1f} s (data {result.data_seconds:.1f} s), loss {result.initial_loss:.3f} -> "
        f"{result.final_loss:.3f}; saved in {result.folder}"
    )
