"""``crossedge ondevice return-encoder ...``: distil a student from the teacher and save it; score and time saved
students against the teacher."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_output import write_json as _write_json

JSON_OPTION = click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here as JSON."
)
TEACHER_OPTION = click.option(
    "--teacher", default="smollm2-135m", show_default=True, help="Teacher model: a name, a model folder or a hub id."
)


@click.group("return-encoder")
def return_encoder() -> None:
    """Return of the Encoder: distil a decoder-only teacher into an encoder-decoder student, against a
    decoder-only student of the same parameter count, on summarization-style prompts."""


@return_encoder.command("train")
@click.option("--kind", type=click.Choice(["encdec", "decoder"]), required=True, help="Which student to train.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Model file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a student written here.")
@TEACHER_OPTION
@click.option("--sources", default="pydoc-topics,common-licenses", show_default=True, help="Bundled datasets.")
@click.option("--train-items", default=64, show_default=True, help="Training prompts (the teacher answers each once).")
@click.option("--eval-items", default=16, show_default=True, help="Held-out prompts, from other documents.")
@click.option("--passage-tokens", default=192, show_default=True, help="Passage length inside each prompt.")
@click.option("--new-tokens", default=32, show_default=True, help="Longest teacher answer.")
@click.option("--top-k", default=32, show_default=True, help="Teacher log-probabilities kept per answer position.")
@click.option("--d-model", default=192, show_default=True)
@click.option("--heads", default=4, show_default=True)
@click.option("--encoder-layers", default=6, show_default=True, help="encdec's encoder depth.")
@click.option("--decoder-layers", default=2, show_default=True, help="encdec's decoder depth.")
@click.option(
    "--mlp-hidden",
    default=512,
    show_default=True,
    help="encdec's feed-forward width; the decoder-only student has all the layers and a width solved to match.",
)
@click.option("--steps", default=160, show_default=True, help="AdamW steps over random batches of prompts.")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--lr", default=3e-3, show_default=True, help="Peak learning rate (warmup, then cosine).")
@click.option("--kl-weight", default=0.5, show_default=True, help="Loss = w * KL(teacher top-k) + (1 - w) * CE.")
@click.option("--seed", default=0, show_default=True, help="Seeds the prompts, the initialisation and the batches.")
@click.option("--threads", default=2, show_default=True, help="Torch threads for the teacher and training.")
@JSON_OPTION
def train_command(
    kind,
    out,
    force,
    teacher,
    sources,
    train_items,
    eval_items,
    passage_tokens,
    new_tokens,
    top_k,
    d_model,
    heads,
    encoder_layers,
    decoder_layers,
    mlp_hidden,
    steps,
    batch_size,
    lr,
    kl_weight,
    seed,
    threads,
    json_out,
) -> None:
    """Distil one student from the teacher's cached answers and save it; both kinds trained with the same
    options see the same prompts in the same order and have the same parameter count."""
    from crossedge.core.bench import threads as pinned_threads

    from .evaluation import quality
    from .experiment import Recipe, load_teacher, matched_configs, new_student, prepare
    from .model import check_writable, parameter_count, parameter_split, save_student
    from .training import DistillConfig, distill

    check_writable(out, force=force)  # refuse before any work, not after
    recipe = Recipe(
        sources=sources,
        train_items=train_items,
        eval_items=eval_items,
        passage_tokens=passage_tokens,
        new_tokens=new_tokens,
        top_k=top_k,
        seed=seed,
    )
    config_train = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, kl_weight=kl_weight, seed=seed)
    with pinned_threads(threads):
        model, tokenizer = load_teacher(teacher)
        prepared = prepare(model, tokenizer, recipe, progress=True)
        encdec, decoder = matched_configs(
            prepared.vocab,
            prepared.start_id,
            d_model=d_model,
            heads=heads,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            mlp_hidden=mlp_hidden,
        )
        config = encdec if kind == "encdec" else decoder
        student = new_student(config, model, seed=seed)
        result = distill(student, prepared.train, config_train, progress=True)
        scored = quality(student, prepared.held_out, tokenizer, eos_id=prepared.eos_id)
    record = {
        "teacher": teacher,
        "recipe": recipe.to_dict(),
        "train": result.to_dict(),
        "held_out": scored,
        "parameters": parameter_count(config),
        "split": parameter_split(config),
        "matched_to": {"encdec": parameter_count(encdec), "decoder": parameter_count(decoder)},
    }
    save_student(student, out, record=record, force=force)
    click.echo(
        f"{kind:<8} {config.encoder_layers} encoder + {config.decoder_layers} decoder layers, "
        f"d_model {config.d_model}, feed-forward {config.mlp_hidden}"
    )
    click.echo(
        f"parameters {record['parameters']} (encdec {record['matched_to']['encdec']}, "
        f"decoder-only {record['matched_to']['decoder']}; embedding {record['split']['embedding']})"
    )
    teacher_note = "generated" if prepared.train.computed else "read from the cache"
    click.echo(f"teacher    {len(prepared.train)} training answers {teacher_note} ({prepared.train.path})")
    click.echo(
        f"training   {steps} steps in {result.seconds:.1f} s, loss {result.losses[0]:.3f} -> {result.final_loss:.3f}"
    )
    click.echo(
        f"held-out   NLL {scored['nll']:.3f}, agreement {scored['agreement']:.3f}, "
        f"ROUGE-L {scored['rouge_l']:.3f} ({len(prepared.held_out)} prompts)"
    )
    click.echo(f"saved {out}")
    _write_json(json_out, {"model": str(out), "config": config.to_dict(), **record})


@return_encoder.command("eval")
@click.option(
    "--model",
    "model_paths",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="A .safetensors file written by `return-encoder train` (repeat to compare; timings are interleaved).",
)
@TEACHER_OPTION
@click.option("--lengths", default="128,512,1024", show_default=True, help="Input tokens for the timings.")
@click.option("--repeats", default=5, show_default=True, help="Timed first-token runs per model per round.")
@click.option("--decode-steps", default=16, show_default=True, help="Timed decode steps per model per round.")
@click.option("--rounds", default=2, show_default=True, help="Interleaved timing rounds per input length.")
@click.option("--threads", default=1, show_default=True, help="Torch threads for timing.")
@JSON_OPTION
def eval_command(model_paths, teacher, lengths, repeats, decode_steps, rounds, threads, json_out) -> None:
    """Held-out quality against the teacher (its answers for the recipe each student was trained with) and
    first-token latency and decode tokens/s at each input length."""
    from crossedge.core import CrossedgeError
    from crossedge.core.bench import format_table

    from .evaluation import quality
    from .experiment import Recipe, load_teacher, prepare
    from .latency import Timed, latency_rows, parse_lengths
    from .model import load_student, parameter_count

    input_lengths = parse_lengths(lengths)
    students = [load_student(path) for path in model_paths]
    model, tokenizer = load_teacher(teacher)
    rows, timed, source = [], [], None
    for path, (student, record) in zip(model_paths, students, strict=True):
        if student.config.vocab != model.config.vocab_size:
            raise CrossedgeError(
                f"{path} has a vocabulary of {student.config.vocab}; the teacher {teacher} has "
                f"{model.config.vocab_size}: give the teacher it was distilled from"
            )
        prepared = prepare(model, tokenizer, Recipe.from_dict(record.get("recipe", {})), progress=True)
        scored = quality(student, prepared.held_out, tokenizer, eos_id=prepared.eos_id)
        rows.append(
            {"model": str(path), "kind": student.config.kind, "parameters": parameter_count(student.config), **scored}
        )
        timed.append(Timed(f"{student.config.kind}:{path.name}", student, parameter_count(student.config), repeats))
        source = prepared.held_out_items.passages.reshape(-1)
    latency = latency_rows(timed, source, input_lengths, decode_steps=decode_steps, rounds=rounds, threads=threads)
    click.echo(format_table(rows, ["model", "kind", "parameters", "nll", "agreement", "rouge_l"]))
    click.echo("")
    click.echo(f"timing ({threads} thread(s), {rounds} interleaved rounds):")
    columns = ["model", "input_tokens", "first_token_ms", "decode_ms_per_token", "decode_tokens_per_s", "cache_bytes"]
    click.echo(format_table(latency, columns))
    _write_json(json_out, {"threads": threads, "quality": rows, "latency": latency})
