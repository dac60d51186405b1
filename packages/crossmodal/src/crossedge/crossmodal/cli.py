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


TASKS = ("scp-cross-subject", "neuro-classify", "sim-retrieval", "deepfake", "audit", "zipper-asr")


@group.command(name="bench")
@click.option("--task", type=click.Choice(TASKS), required=True, help="Which benchmark to run.")
@click.option("--source", "source_name", default="scp1", show_default=True, help="Registered dataset trained on first.")
@click.option("--target", "target_name", default="scp2", show_default=True, help="Registered dataset adapted to.")
@click.option("--shots", default="10,20,50", show_default=True, help="Target trials to adapt from, comma-separated.")
@click.option(
    "--datasets",
    default="finger-movements,eyes-open-shut,hand-movement-direction,scp1,scp2",
    show_default=True,
    help="neuro-classify: registered datasets, comma-separated.",
)
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
@click.option("--texts", default=240, show_default=True, type=click.IntRange(6), help="deepfake: sentences spoken.")
@click.option(
    "--ssl-steps", default=300, show_default=True, type=click.IntRange(1), help="deepfake: SSL pretraining steps."
)
@click.option("--steps", default=150, show_default=True, type=click.IntRange(1), help="deepfake: detector steps.")
@click.option(
    "--hold-out",
    "held_out",
    type=click.Choice(["world", "griffin-lim", "codec"]),  # spoof.SPOOFERS (not imported: the CLI starts fast)
    default=None,
    help="deepfake: a spoofer never trained on, met only at test time.",
)
@click.option("--audit-steps", default=1500, show_default=True, type=click.IntRange(1), help="audit: training steps.")
@click.option("--audit-texts", default=1000, show_default=True, type=click.IntRange(10), help="audit: corpus texts.")
@click.option(
    "--zipper-texts", default=3000, show_default=True, type=click.IntRange(10), help="zipper-asr: corpus texts."
)
@click.option(
    "--zipper-steps", default=300, show_default=True, type=click.IntRange(1), help="zipper-asr: fusion training steps."
)
@click.option(
    "--save", "save_dir", type=click.Path(file_okay=False), help="audit or zipper-asr: also save the model here."
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    help="audit: audit this saved model (encdec or Zipper) instead of training one; give its --audit-texts.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Also write a PNG chart here.")
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="torch threads (default: torch's own; 1 for audit and zipper-asr, whose small models ran fastest so here).",
)
def bench(task: str, **o) -> None:
    """scp-cross-subject: adapters + reset-tuning vs alone vs no adapters; neuro-classify: the EEG/MEG
    problems within subject; sim-retrieval: 200-way retrieval; deepfake: fusion blocks vs single views;
    audit: encoder-decoder ASR, its CER and cross-attention against saliency; zipper-asr: a speech tower zipped
    into the frozen smollm2-135m against a speech-only model of the same trainable size."""
    threads = o["threads"] or (1 if task in ("audit", "zipper-asr") else None)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if task == "sim-retrieval":
        _sim_retrieval(o["subjects"], o["stimuli"], o["seeds"], o["epochs"], o["shared"], o["json_out"], o["plot_out"])
    elif task == "audit":
        from .audit_cli import audit_bench_command

        audit_bench_command(o["audit_texts"], o["audit_steps"], o["save_dir"], o["json_out"], o["model_dir"])
    elif task == "zipper-asr":
        _zipper_asr(o["zipper_texts"], o["zipper_steps"], o["save_dir"], o["json_out"], o["plot_out"])
    elif task == "deepfake":
        _deepfake(o["texts"], o["seeds"], o["ssl_steps"], o["steps"], o["held_out"], o["json_out"], o["plot_out"])
    elif task == "neuro-classify":
        _neuro_classify(o)
    else:
        _scp_cross_subject(task, o)


def _zipper_asr(texts: int, steps: int, save_dir: str | None, json_out: str | None, plot_out: str | None) -> None:
    from tqdm.auto import tqdm

    from . import asr, zipper
    from .progress import stage_bars
    from .zipper_bench import format_table, plot, zipper_bench

    if save_dir:
        zipper.check_save_folder(save_dir)  # before the corpus and any training
    with tqdm(total=texts, desc="speech corpus", unit="utt") as bar:
        corpus = asr.build_corpus(texts=texts, progress=bar.update)
    speech_steps = 2 * steps
    totals = {"speech": speech_steps, "zipper": steps, "baseline": steps, "eval": 3}
    with stage_bars(totals, {"eval": "model"}) as progress:
        result = zipper_bench(steps=steps, speech_steps=speech_steps, corpus=corpus, save=save_dir, progress=progress)
    if save_dir:
        click.echo(f"saved the Zipper to {save_dir}")
    _report(result, format_table(result), plot, json_out, plot_out)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="model")


def _scp_cross_subject(task: str, o: dict) -> None:
    from crossedge.core.contracts.array_dataset import get_array_dataset

    from .decoding_bench import format_table, plot, scp_cross_subject

    shot_list = _int_list(o["shots"])
    source = get_array_dataset(o["source_name"]).load()
    target = get_array_dataset(o["target_name"]).load()
    with _progress(o["seeds"] * len(shot_list), task) as bar:
        try:
            result = scp_cross_subject(
                source, target, shots=shot_list, seeds=list(range(o["seeds"])), pretrain_steps=o["pretrain_steps"],
                tune_steps=o["tune_steps"], progress=lambda _: bar.update(1),
            )  # fmt: skip
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    result["source"], result["target"] = o["source_name"], o["target_name"]
    _report(result, format_table(result), plot, o["json_out"], o["plot_out"])


def _neuro_classify(o: dict) -> None:
    from crossedge.core.contracts.array_dataset import get_array_dataset

    from .decoding_bench import classify_tasks, format_classify_table, plot

    names = [n.strip() for n in o["datasets"].split(",") if n.strip()]
    if not names:
        raise click.BadParameter("give at least one dataset name", param_hint="--datasets")
    loaded = [(name, get_array_dataset(name).load()) for name in names]
    with _progress(o["seeds"] * len(names), "neuro-classify") as bar:
        result = classify_tasks(
            loaded, seeds=list(range(o["seeds"])), steps=o["pretrain_steps"], progress=lambda _: bar.update(1)
        )
    _report(result, format_classify_table(result), plot, o["json_out"], o["plot_out"])


def _report(result: dict, table: str, plot, json_out: str | None, plot_out: str | None) -> None:
    """Print the table; write the JSON and the PNG where asked."""
    import json
    from pathlib import Path

    click.echo(table)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if plot_out:
        click.echo(f"wrote {plot(result, plot_out)}")


def _sim_retrieval(
    subjects: int, stimuli: int, seeds: int, epochs: int, shared: float, json_out: str | None, plot_out: str | None
) -> None:
    from tqdm.auto import tqdm

    from .retrieval_bench import format_table, plot, sim_retrieval

    with tqdm(total=seeds * subjects * 2, desc="sim-retrieval", unit="model") as bar:
        result = sim_retrieval(
            subjects=subjects, stimuli=stimuli, seeds=list(range(seeds)), epochs=epochs, shared=shared,
            progress=lambda _: bar.update(1),
        )  # fmt: skip
    _report(result, format_table(result), plot, json_out, plot_out)


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


def _deepfake(
    texts: int, seeds: int, ssl_steps: int, steps: int, held_out: str | None, json_out: str | None, plot_out: str | None
) -> None:
    from tqdm.auto import tqdm

    from .deepfake import DEFAULT_FUSIONS, SINGLE_VIEWS, CorpusConfig, build_corpus, deepfake_bench, format_table, plot

    config = CorpusConfig(texts=texts)
    with tqdm(total=texts, desc="deepfake corpus", unit="text") as bar:
        corpus = build_corpus(config, progress=bar.update)
    models = seeds * (1 + len(SINGLE_VIEWS) + len(DEFAULT_FUSIONS))
    with tqdm(total=models, desc="deepfake models", unit="model") as bar:
        result = deepfake_bench(
            corpus, seeds=list(range(seeds)), ssl_steps=ssl_steps, steps=steps, held_out_spoofer=held_out,
            progress=lambda _: bar.update(1),
        )  # fmt: skip
    _report(result, format_table(result), plot, json_out, plot_out)
