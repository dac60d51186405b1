"""``crossedge crossmodal ...`` commands."""

from __future__ import annotations

import click


@click.group(name="crossmodal")
def group() -> None:
    """Cross-subject decoding, contrastive alignment, fusion blocks, Zipper and attention audits."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise click.BadParameter("give at least one integer")
    return values


@group.command(name="bench")
@click.option(
    "--task",
    type=click.Choice(["scp-cross-subject", "sim-retrieval", "audit"]),
    required=True,
    help="Which benchmark to run.",
)
@click.option("--source", "source_name", default="scp1", show_default=True, help="Registered dataset trained on first.")
@click.option("--target", "target_name", default="scp2", show_default=True, help="Registered dataset adapted to.")
@click.option("--shots", default="10,20,50", show_default=True, help="Target trials to adapt from, comma-separated.")
@click.option("--seeds", default=3, show_default=True, type=click.IntRange(1), help="Number of seeds (0..N-1).")
@click.option("--pretrain-steps", default=300, show_default=True, type=click.IntRange(1))
@click.option("--tune-steps", default=150, show_default=True, type=click.IntRange(1))
@click.option(
    "--subjects", default=3, show_default=True, type=click.IntRange(2), help="sim-retrieval: simulated subjects."
)
@click.option("--stimuli", default=600, show_default=True, type=click.IntRange(6), help="sim-retrieval: sentences.")
@click.option(
    "--epochs", default=40, show_default=True, type=click.IntRange(1), help="sim-retrieval: alignment epochs."
)
@click.option(
    "--shared",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="sim-retrieval: fraction of the simulated mixing shared by all subjects.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.option("--audit-steps", default=1500, show_default=True, type=click.IntRange(1), help="audit: training steps.")
@click.option("--audit-texts", default=1000, show_default=True, type=click.IntRange(10), help="audit: corpus texts.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False), help="audit: also save the model here.")
def bench(
    task, source_name, target_name, shots, seeds, pretrain_steps, tune_steps, subjects, stimuli, epochs, shared,
    json_out, audit_steps, audit_texts, save_dir,
) -> None:  # fmt: skip
    """scp-cross-subject: adapters + reset-tuning vs alone vs no adapters; sim-retrieval: 200-way retrieval;
    audit: encoder-decoder ASR, its CER and cross-attention against saliency."""
    if task == "sim-retrieval":
        _sim_retrieval(subjects, stimuli, seeds, epochs, shared, json_out)
        return
    if task == "audit":
        from .audit_cli import audit_bench_command

        audit_bench_command(audit_texts, audit_steps, save_dir, json_out)
        return
    from crossedge.core.contracts.array_dataset import get_array_dataset

    from .decoding_bench import format_table, scp_cross_subject

    shot_list = _int_list(shots)
    source = get_array_dataset(source_name).load()
    target = get_array_dataset(target_name).load()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional here: no bar, same results
        tqdm = None
    bar = tqdm(total=seeds * len(shot_list), desc=task, disable=tqdm is None) if tqdm else None
    try:
        result = scp_cross_subject(
            source, target, shots=shot_list, seeds=list(range(seeds)), pretrain_steps=pretrain_steps,
            tune_steps=tune_steps, progress=(lambda _: bar.update(1)) if bar else None,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        if bar:
            bar.close()
    result["source"], result["target"] = source_name, target_name
    click.echo(format_table(result))
    _write_json(result, json_out)


def _write_json(result: dict, json_out: str | None) -> None:
    import json
    from pathlib import Path

    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


def _sim_retrieval(subjects: int, stimuli: int, seeds: int, epochs: int, shared: float, json_out: str | None) -> None:
    from tqdm.auto import tqdm

    from .retrieval_bench import format_table, sim_retrieval

    with tqdm(total=seeds * subjects * 2, desc="sim-retrieval", unit="model") as bar:
        result = sim_retrieval(
            subjects=subjects, stimuli=stimuli, seeds=list(range(seeds)), epochs=epochs, shared=shared,
            progress=lambda _: bar.update(1),
        )  # fmt: skip
    click.echo(format_table(result))
    _write_json(result, json_out)


@group.command(name="explain")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Saved model folder.")
@click.argument("audio", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--text", "reference", help="Audit this reference text instead of the model's transcription.")
@click.option("--method", type=click.Choice(["saliency", "input_x_gradient", "integrated_gradients"]),
              default="saliency", show_default=True, help="Captum attribution for the saliency maps.")  # fmt: skip
@click.option("--max-len", default=64, show_default=True, type=click.IntRange(1), help="Longest transcription.")
@click.option("--force", is_flag=True, help="Overwrite audit.json / audit.png already in --out.")
def explain(model_dir, audio, out_dir, reference, method, max_len, force) -> None:
    """Compare a model's cross-attention with gradient saliency on one WAV: writes audit.json and audit.png."""
    from .audit_cli import explain_command

    explain_command(model_dir, audio, out_dir, reference, method, max_len, force)
