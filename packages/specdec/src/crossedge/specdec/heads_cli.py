"""``crossedge specdec train-heads``: self-distil draft heads (medusa, hidden-transfer, clover, ppd) for a target."""

from __future__ import annotations

import click

from crossedge.core.bench import format_table

from .exit_cli import distillation_options
from .heads import DEFAULT_PROMPT_MIX, HEAD_KINDS, PROMPT_MIXES


@click.command(name="train-heads")
@click.option("--model", "model_name", required=True, help="Target model (name, folder or hub id).")
@click.option("--kind", type=click.Choice(HEAD_KINDS), default=HEAD_KINDS[0], show_default=True, help="Kind of heads.")
@click.option("--heads", default=3, show_default=True, type=click.IntRange(min=1), help="Heads (draft depth).")
@click.option(
    "--layer",
    type=click.IntRange(min=1),
    default=None,
    help="hidden-transfer: the layer whose state is transferred [default: two below the top].",
)
@click.option("--window", type=click.IntRange(min=1), default=None, help="clover: context states attended [32].")
@click.option(
    "--vocab",
    type=click.IntRange(min=1),
    default=None,
    help="Guess only among this many tokens (those the target generates most, then the corpora's most frequent): "
    "training and drafting skip the rest of the LM head [default: the whole vocabulary; not for ppd].",
)
@click.option(
    "--prompt-mix",
    type=click.Choice(tuple(PROMPT_MIXES)),
    default=DEFAULT_PROMPT_MIX,
    show_default=True,
    help="Instructions the training prompts ask: tasks (ten kinds of chat request; leaves out the documents the "
    "default bench suite reads) or explain (one, the recipe of heads trained before this option).",
)
@distillation_options("the heads", lr=1e-3, minutes="Stop training after this.")
@click.option(
    "--teacher-top-k",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Distil each head to the target's top-k distribution of its token; 1 trains on the target's token alone.",
)
def train_heads(
    model_name,
    kind,
    heads,
    layer,
    window,
    vocab,
    prompt_mix,
    out,
    prompts,
    prompt_tokens,
    new_tokens,
    epochs,
    lr,
    max_minutes,
    teacher_top_k,
    seed,
):
    """Train draft heads by self-distillation and report each depth's held-out accuracy."""
    from crossedge.core import CrossedgeError, load_model

    from .exit_head import TrainConfig
    from .heads import heads_class
    from .heads import train_heads as train

    options = {}
    for name, value, owner in (("layer", layer, "hidden-transfer"), ("window", window, "clover")):
        if value is not None and kind != owner:
            raise CrossedgeError(f"--{name} is an option of --kind {owner}, not of {kind}: leave it out")
        if value is not None:
            options[name] = value
    if vocab is not None:
        if not heads_class(kind).reduced_vocab:  # refused before the model loads
            raise CrossedgeError(
                f"--vocab is not an option of --kind {kind}, whose guesses come out of the target's own LM head"
            )
        options["vocab"] = vocab
    loaded = load_model(model_name)
    result = train(
        loaded.model,
        loaded.tokenizer,
        loaded.source.name,
        kind,
        heads=heads,
        out=out,
        options=options,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        holdout=max(4, prompts // 6),
        config=TrainConfig(epochs=epochs, lr=lr, seed=seed, max_minutes=max_minutes),
        teacher_top_k=teacher_top_k,
        prompt_mix=prompt_mix,
    )
    rows = [
        {
            "depth": k + 1,
            "offset": f"+{k + 2}",
            "top1_untrained": result.untrained_top1[k],
            "top1": result.top1[k],
            f"top{result.top_k}": result.topk[k],
        }
        for k in range(result.heads)
    ]
    click.echo(format_table(rows, list(rows[0])))
    click.echo(
        f"{result.kind} heads: {result.steps} steps in {result.seconds:.1f} s (data {result.data_seconds:.1f} s), "
        f"final loss {result.final_loss:.3f}; {result.trainable_parameters} parameters saved in {result.folder}"
    )
