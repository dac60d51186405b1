"""``crossedge ondevice gmu ...``: train a plain or SambaY-style byte decoder, compare saved ones, generate."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_output import write_json as _write_json

JSON_OPTION = click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here as JSON."
)


@click.group("gmu")
def gmu() -> None:
    """Gated memory sharing (SambaY): a decoder-hybrid-decoder whose later layers reuse one KV cache and an
    earlier layer's memory, against a plain decoder of the same parameter count."""


@gmu.command("train")
@click.option("--variant", type=click.Choice(["plain", "sambay"]), required=True, help="Which decoder to train.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Model file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a gmu decoder written here.")
@click.option("--steps", default=120, show_default=True, help="AdamW steps over random windows of training bytes.")
@click.option("--batch-size", default=16, show_default=True)
@click.option("--seq-len", default=128, show_default=True, help="Bytes per training window.")
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (warmup, then cosine).")
@click.option("--d-model", default=128, show_default=True)
@click.option("--layers", default=8, show_default=True, help="Layers (sambay: even, at least 4).")
@click.option("--heads", default=4, show_default=True)
@click.option(
    "--mlp-hidden",
    default=352,
    show_default=True,
    help="The plain decoder's feed-forward width; sambay's is solved to match the plain's parameter count.",
)
@click.option("--window", default=64, show_default=True, help="sambay's sliding-window length.")
@click.option("--seed", default=0, show_default=True, help="Seeds the initialisation and the batches.")
@click.option("--threads", default=1, show_default=True, help="Torch threads for training.")
@JSON_OPTION
def train_command(
    variant,
    out,
    force,
    steps,
    batch_size,
    seq_len,
    lr,
    d_model,
    layers,
    heads,
    mlp_hidden,
    window,
    seed,
    threads,
    json_out,
) -> None:
    """Train one variant on pydoc-topics' training split and save it; both variants trained with the same options
    see the same bytes and have the same parameter count."""
    from crossedge.core.bench import threads as pinned_threads

    from .data import load_corpus
    from .experiment import train_variant
    from .model import DecoderConfig, check_writable, matched_pair, parameter_count, save_decoder
    from .training import TrainConfig, bits_per_byte

    check_writable(out, force=force)  # refuse before training, not after
    base = DecoderConfig(
        kind="plain", d_model=d_model, layers=layers, heads=heads, mlp_hidden=mlp_hidden, window=window, inner=d_model
    )
    plain, hybrid = matched_pair(base)
    config = plain if variant == "plain" else hybrid
    corpus = load_corpus()
    train = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed)
    with pinned_threads(threads):
        model, result = train_variant(config, corpus, train, progress=True)
        bpb = bits_per_byte(model, corpus.test, seq_len)
    record = {
        "corpus": corpus.to_dict(),
        "train": result.to_dict(),
        "test_bits_per_byte": bpb,
        "parameters": parameter_count(config),
        "matched_to": {"plain": parameter_count(plain), "sambay": parameter_count(hybrid)},
    }
    save_decoder(model, out, record=record, force=force)
    click.echo(f"{variant:<8} layers {','.join(config.layer_kinds)}")
    click.echo(
        f"parameters {record['parameters']} (plain {record['matched_to']['plain']}, "
        f"sambay {record['matched_to']['sambay']} with feed-forward width {hybrid.mlp_hidden})"
    )
    click.echo(
        f"training   {steps} steps in {result.seconds:.1f} s, loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
    )
    click.echo(f"held-out   {bpb:.3f} bits per byte ({corpus.documents[1]} documents, {len(corpus.test)} bytes)")
    click.echo(f"saved {out}")
    _write_json(json_out, {"model": str(out), "config": config.to_dict(), **record})


@gmu.command("eval")
@click.option(
    "--model",
    "model_paths",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="A .safetensors file written by `gmu train` (repeat to compare; timings are interleaved).",
)
@click.option("--contexts", default="256,1024,2048", show_default=True, help="Bytes prefilled before timed decoding.")
@click.option("--rounds", default=4, show_default=True, help="Interleaved timing rounds per context.")
@click.option("--repeats", default=16, show_default=True, help="Timed single decode steps per model per round.")
@click.option("--seq-len", default=128, show_default=True, help="Window of the held-out bits-per-byte evaluation.")
@click.option("--threads", default=1, show_default=True, help="Torch threads while decoding is timed.")
@JSON_OPTION
def eval_command(model_paths, contexts, rounds, repeats, seq_len, threads, json_out) -> None:
    """Held-out bits per byte, per-token decode latency and allocated cache bytes at each context length."""
    from crossedge.core.bench import format_table

    from .data import load_corpus
    from .decoding import parse_lengths
    from .experiment import latency_rows, quality_rows
    from .model import load_decoder

    models = [load_decoder(path)[0] for path in model_paths]
    corpus = load_corpus()
    quality = quality_rows(models, corpus, seq_len)
    for row, path in zip(quality, model_paths, strict=True):
        row["model"] = str(path)
    decode = latency_rows(models, corpus, parse_lengths(contexts), rounds=rounds, repeats=repeats, threads=threads)
    click.echo(format_table(quality, ["model", "kind", "parameters", "test_bits_per_byte", "layer_kinds"]))
    click.echo("")
    click.echo(f"decode after prefill ({threads} thread(s), {rounds} x {repeats} steps per model, interleaved):")
    columns = ["kind", "context", "decode_median_ms", "decode_p90_ms", "prefill_ms", "kv_bytes", "state_bytes"]
    click.echo(format_table(decode, columns))
    _write_json(json_out, {"threads": threads, "models": quality, "decode": decode})


@gmu.command("generate")
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--prompt", required=True, help="Text the model continues.")
@click.option("--tokens", default=120, show_default=True, help="Bytes to generate.")
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--seed", default=0, show_default=True)
def generate_command(model_path, prompt, tokens, temperature, seed) -> None:
    """Continue a prompt byte by byte with the decode cache."""
    from .data import decode, encode
    from .decoding import generate
    from .model import load_decoder

    model, _ = load_decoder(model_path)
    click.echo(prompt + decode(generate(model, encode(prompt), tokens, temperature=temperature, seed=seed)))
