"""``crossedge specdec train-exit``: self-distil exit heads for early-exit drafting."""

from __future__ import annotations

import click

from crossedge.core.bench import format_table


def distillation_options(
    what: str,
    *,
    lr: float,
    minutes: str,
    prompts: int = 96,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    batch_size: int | None = None,
):
    """The output, data and training options every self-distillation command shares
    (``--batch-size`` only where ``batch_size`` is given)."""
    options = [
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            default=None,
            help=f"Folder for {what} (default: beside the model cache, where the drafter looks); never one holding "
            "files crossedge did not write.",
        ),
        click.option(
            "--prompts",
            default=prompts,
            show_default=True,
            type=click.IntRange(min=8),
            help="Prompts cut from the bundled corpora; the model's own continuations are the training data.",
        ),
        click.option("--prompt-tokens", default=prompt_tokens, show_default=True, type=click.IntRange(min=8)),
        click.option("--new-tokens", default=new_tokens, show_default=True, type=click.IntRange(min=8)),
        click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1)),
        *(
            []
            if batch_size is None
            else [click.option("--batch-size", default=batch_size, show_default=True, type=click.IntRange(min=1))]
        ),
        click.option("--lr", default=lr, show_default=True, type=float),
        click.option("--max-minutes", default=20.0, show_default=True, type=float, help=minutes),
        click.option("--seed", default=0, show_default=True, type=int),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.command(name="train-exit")
@click.option("--model", "model_name", required=True, help="Target model (name, folder or hub id).")
@click.option(
    "--exit-layer",
    "exit_layers",
    type=int,
    multiple=True,
    required=True,
    help="Exit after this many layers; repeat to train several heads on shared data.",
)
@distillation_options("the head", lr=5e-4, minutes="Stop each head's training after this.")
def train_exit(model_name, exit_layers, out, prompts, prompt_tokens, new_tokens, epochs, lr, max_minutes, seed):
    """Train exit heads by self-distillation and report their agreement with the full model."""
    from crossedge.core import load_model

    from .exit_head import TrainConfig, expected_accepted_length, train_exit_heads

    loaded = load_model(model_name)
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, max_minutes=max_minutes)
    results = train_exit_heads(
        loaded.model,
        loaded.tokenizer,
        loaded.source.name,
        list(exit_layers),
        out=out,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        holdout=max(4, prompts // 6),
        config=config,
    )
    rows = [
        {
            "exit_layer": r.exit_layer,
            "agreement_plain_exit": r.agreement_untrained_exit,
            "agreement_trained_head": r.agreement_head,
            "est_mean_accepted_k4": expected_accepted_length(r.agreement_head, 4),
            "train_s": r.seconds,
            "folder": str(folder),
        }
        for folder, r in results
    ]
    click.echo(format_table(rows, list(rows[0])))
