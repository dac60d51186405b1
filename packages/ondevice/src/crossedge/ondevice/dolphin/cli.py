"""``crossedge ondevice dolphin ...``: train the memory compressor against a frozen decoder, then compare reading
a long context as memory with reading it in full or truncated."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_output import write_json as _write_json

JSON_OPTION = click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here as JSON."
)
DECODER_OPTION = click.option(
    "--decoder",
    default="smollm2-135m",
    show_default=True,
    help="The frozen decoder: a model name from `crossedge models list` or a model folder (llama-style).",
)


@click.group("dolphin")
def dolphin() -> None:
    """Long context as a modality (Dolphin): the decoder's embeddings (and first layers) and a trained compressor
    turn a long context into a few memory embeddings the frozen decoder reads in its place."""


@dolphin.command("train")
@DECODER_OPTION
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Compressor file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a dolphin compressor written here.")
@click.option("--context-tokens", default=512, show_default=True, help="Context length trained on.")
@click.option("--ratio", default=16, show_default=True, help="Context tokens per memory embedding.")
@click.option(
    "--encoder-layers", default=0, show_default=True, help="Decoder layers the encoder borrows (0: embeddings)."
)
@click.option(
    "--pool-heads", default=4, show_default=True, help="Learned pooling queries per chunk (divide the width)."
)
@click.option("--projector-hidden", default=1152, show_default=True, help="Hidden width of the MLP projector.")
@click.option("--steps", default=120, show_default=True, help="AdamW steps.")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--windows", default=32, show_default=True, help="Training contexts (their features computed once).")
@click.option("--lr", default=5e-3, show_default=True)
@click.option("--recall-fraction", default=0.75, show_default=True, help="Share of recall items; the rest continue.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True, help="Torch threads for training.")
@JSON_OPTION
def train_command(
    decoder,
    out,
    force,
    context_tokens,
    ratio,
    encoder_layers,
    pool_heads,
    projector_hidden,
    steps,
    batch_size,
    windows,
    lr,
    recall_fraction,
    seed,
    threads,
    json_out,
) -> None:
    """Train the compressor on the training documents with the decoder frozen, and save it (safetensors)."""
    from crossedge.core.bench import threads as pinned_threads

    from .experiment import load_decoder, prepare_corpus, trained_reader
    from .model import check_writable, parameter_count, save_compressor
    from .training import TrainConfig

    check_writable(out, force=force)  # refuse before training, not after
    train = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        windows=windows,
        context_tokens=context_tokens,
        recall_fraction=recall_fraction,
        lr=lr,
        seed=seed,
    )
    options = {
        "encoder_layers": encoder_layers,
        "ratio": ratio,
        "pool_heads": pool_heads,
        "projector_hidden": projector_hidden,
    }
    model, tokenizer = load_decoder(decoder)
    corpus = prepare_corpus(tokenizer)
    with pinned_threads(threads):
        trained = trained_reader(model, decoder, corpus, train, options=options, cache=False, progress=True)
    result = trained.result
    record = {"train": result.to_dict(), "corpus": corpus.to_dict()}
    save_compressor(trained.reader.compressor, out, record=record, force=force)
    config = trained.reader.config
    click.echo(
        f"compressor {parameter_count(trained.reader.compressor)} parameters: {config.encoder_layers} borrowed layers, "
        f"{context_tokens} tokens -> {config.memory_length(context_tokens)} memory embeddings"
    )
    click.echo(
        f"training   {steps} steps in {result.seconds:.1f} s (+{result.feature_seconds:.1f} s features), "
        f"answer NLL {result.first_loss:.3f} -> {result.final_loss:.3f}; decoder unchanged: {result.decoder_unchanged}"
    )
    click.echo(f"saved {out}")
    _write_json(json_out, {"model": str(out), "config": config.to_dict(), **record})


@dolphin.command("eval")
@DECODER_OPTION
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .safetensors file written by `dolphin train`.",
)
@click.option("--context-tokens", default=512, show_default=True, help="Context length of the scored items.")
@click.option("--recall", default=16, show_default=True, help="Recall items on held-out contexts.")
@click.option("--questions/--no-questions", default=True, show_default=True, help="Add the hand-written questions.")
@click.option("--contexts", default="512,1024,2048", show_default=True, help="Context lengths whose prefill is timed.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved timing rounds per context.")
@click.option("--threads", default=2, show_default=True, help="Torch threads for scoring and timing.")
@click.option("--seed", default=0, show_default=True, help="Places the recall spans and the questions' answers.")
@JSON_OPTION
def eval_command(
    decoder, model_path, context_tokens, recall, questions, contexts, rounds, threads, seed, json_out
) -> None:
    """Answer NLL under full context, memory, truncation to as many positions, and no context; then prefill wall
    and CPU time of each way of reading at every context length."""
    from crossedge.core.bench import format_table
    from crossedge.core.bench import threads as pinned_threads

    from .evaluation import gap_closed, score_items, summarize
    from .experiment import eval_items, load_decoder, prepare_corpus, timing_inputs
    from .latency import parse_lengths, prefill_rows
    from .model import DolphinReader, load_compressor

    lengths = parse_lengths(contexts)
    model, tokenizer = load_decoder(decoder)
    reader = DolphinReader(model, load_compressor(model_path, model))
    corpus = prepare_corpus(tokenizer)
    items = eval_items(corpus, context_tokens=context_tokens, recall=recall, questions=questions, seed=seed)
    with pinned_threads(threads):
        rows = score_items(reader, items, ("full", "memory", "truncated", "none"), progress=True)
    summary = summarize(rows)
    table = [{"condition": key, **value} for key, value in summary.items()]
    click.echo(format_table(table, ["condition", "items", "positions", "nll", "token_accuracy", "exact"]))
    closed = gap_closed(summary)
    if closed is not None:
        click.echo(f"memory closes {closed:.0%} of the NLL gap between truncation and full context")
    timed, question = timing_inputs(corpus, lengths)
    prefill = prefill_rows(reader, timed, question, rounds=rounds, threads=threads)
    click.echo("")
    click.echo(f"prefill ({threads} thread(s), median of {rounds} interleaved rounds):")
    columns = ["mode", "context", "decoder_positions", "prefill_median_ms", "prefill_iqr_ms", "cpu_median_ms"]
    click.echo(format_table(prefill, columns))
    _write_json(json_out, {"threads": threads, "quality": summary, "items": rows, "prefill": prefill})
