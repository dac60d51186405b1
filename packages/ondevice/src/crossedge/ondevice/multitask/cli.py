"""``crossedge ondevice multitask ...``: train the multi-task network, Pareto front, controller's choice."""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_output import write_json as _write_json

JSON_OPTION = click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here as JSON."
)
THREADS_OPTION = click.option("--threads", default=1, show_default=True, help="Torch threads while timing.")
MODEL_OPTION = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A .safetensors file written by `multitask train`.",
)
REPEATS_OPTION = click.option(
    "--repeats", default=20, show_default=True, help="Timed runs per item, batch 1 (median reported)."
)


def _weights(text: str) -> tuple[float, ...]:
    from .controller import check_weights
    from .experiment import parse_floats

    return check_weights(parse_floats(text, "--weights"))


@click.group("multitask")
def multitask() -> None:
    """Controllable multi-task network: a shared encoder and classify/reconstruct/segment decoders of run-time width."""


@multitask.command("train")
@click.option("--data", type=click.Choice(["mnist", "digits"]), default="mnist", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Model file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a multi-task network written here.")
@click.option("--epochs", default=8, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--widths", default="0.25,0.5,0.75,1", show_default=True, help="Decoder widths selectable per task.")
@click.option("--encoder-widths", default="0.5,1", show_default=True, help="Encoder widths selectable at run time.")
@click.option("--channels", default="16,32", show_default=True, help="Encoder conv channels at width 1.")
@click.option("--decoder-channels", default=48, show_default=True, help="Each decoder's channels at width 1.")
@click.option(
    "--random-configs", default=2, show_default=True, help="Random configurations per step besides the extremes."
)
@click.option(
    "--noise", default=0.3, show_default=True, help="Std of the Gaussian pixel noise on the input (0..1 units)."
)
@click.option("--seed", default=0, show_default=True, help="Seeds the weights, the split and the noise.")
@THREADS_OPTION
@JSON_OPTION
def train_command(
    data,
    out,
    force,
    epochs,
    batch_size,
    lr,
    widths,
    encoder_widths,
    channels,
    decoder_channels,
    random_configs,
    noise,
    seed,
    threads,
    json_out,
) -> None:
    """Train with the sandwich rule (largest, smallest and random per-task widths every step); save as safetensors."""
    from crossedge.core.bench import format_table
    from crossedge.core.bench import threads as pinned_threads

    from .evaluation import component_quality
    from .experiment import parse_floats, train_on, training_record
    from .model import check_writable, save_network
    from .training import TrainConfig

    check_writable(out, force=force)  # refuse before training, not after
    encoder_channels = [int(c) for c in parse_floats(channels, "--channels")]
    config = {
        "widths": parse_floats(widths, "--widths"),
        "encoder_widths": parse_floats(encoder_widths, "--encoder-widths"),
        "encoder_channels": encoder_channels,
        "encoder_strides": [1] + [2] * (len(encoder_channels) - 1),
        "decoder_channels": decoder_channels,
    }
    train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, random_configs=random_configs, seed=seed)
    with pinned_threads(threads):
        network, task_data, result = train_on(data, config=config, train_config=train_config, noise_std=noise)
        quality = component_quality(network, task_data.val)
    save_network(network, out, force=force, extra=training_record(data, result, seed, noise))
    rows = [{"encoder_width": e, "task": t, "width": w, "val_quality": q} for (e, t, w), q in quality.items()]
    click.echo(
        f"trained {epochs} epochs ({result.steps} steps) on {len(task_data.train)} {data} images "
        f"in {result.seconds:.1f} s"
    )
    click.echo("validation quality: classify accuracy %, reconstruct PSNR dB, segment IoU")
    click.echo(format_table(rows, ["encoder_width", "task", "width", "val_quality"]))
    click.echo(f"saved {out}")
    _write_json(
        json_out, {"model": str(out), "config": network.config.to_dict(), "train": result.to_dict(), "quality": rows}
    )


@multitask.command("front")
@MODEL_OPTION
@click.option(
    "--weights", default=None, help="Task weights (classify,reconstruct,segment) summing to 1; default equal."
)
@REPEATS_OPTION
@THREADS_OPTION
@JSON_OPTION
def front_command(model_path, weights, repeats, threads, json_out) -> None:
    """Time and score every configuration; print the Pareto front of weighted task quality against latency."""
    from crossedge.core.bench import format_table

    from .controller import grid_candidates
    from .experiment import load_trained

    weight_vector = _weights(weights) if weights else (1 / 3, 1 / 3, 1 / 3)
    network, data = load_trained(model_path)
    grid = grid_candidates(network, data.val, data.test.inputs[:1], repeats=repeats, threads=threads)
    controller = grid.controller()
    front = controller.front(weight_vector)
    per_task = controller.front()
    rows = [{**c.to_row(), "score": controller.score(c, weight_vector)} for c in front]
    click.echo(
        f"{len(grid.candidates)} configurations timed whole (batch 1, {threads} thread(s), median of {repeats}) "
        f"and scored on {len(data.val)} validation images in {grid.seconds:.1f} s"
    )
    click.echo(f"Pareto front of weighted quality (weights {'/'.join(f'{w:.3g}' for w in weight_vector)}) vs latency:")
    columns = ["configuration", "latency_ms", "classify_quality", "reconstruct_quality", "segment_quality", "score"]
    click.echo(format_table(rows, columns))
    click.echo(f"{len(per_task)} configurations are non-dominated in latency and all three qualities at once")
    _write_json(
        json_out,
        {
            "model": str(model_path),
            "threads": threads,
            "repeats": repeats,
            "weights": list(weight_vector),
            "front": rows,
            "per_task_front": [c.configuration.label for c in per_task],
            "configurations": [c.to_row() for c in grid.candidates],
        },
    )


@multitask.command("choose")
@MODEL_OPTION
@click.option("--weights", required=True, help="Task weights (classify,reconstruct,segment) summing to 1.")
@click.option("--budget-ms", type=float, required=True, help="Latency budget per image (batch 1), ms.")
@click.option(
    "--margin",
    type=float,
    default=0.1,
    show_default=True,
    help="Plan at budget x (1 - margin): room for timing drift between the profile and this run.",
)
@click.option(
    "--table",
    "table_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Cache the measured per-component profile here (JSON); reused while the model file is unchanged.",
)
@REPEATS_OPTION
@THREADS_OPTION
@JSON_OPTION
def choose_command(model_path, weights, budget_ms, margin, table_path, repeats, threads, json_out) -> None:
    """Per-task widths for the weights and budget, from the profile; then the choice's latency measured whole."""
    from crossedge.core.bench import format_table
    from crossedge.core.bench import threads as pinned_threads

    from .controller import ComponentProfile, build_profile, file_sha256
    from .data import TASKS
    from .evaluation import component_quality, configuration_latency, median_ms
    from .experiment import load_trained

    weight_vector = _weights(weights)
    network, data = load_trained(model_path)
    sha = file_sha256(model_path)
    image = data.test.inputs[:1]
    if table_path is not None and table_path.exists():
        profile = ComponentProfile.load(table_path, model_sha256=sha, threads=threads)
        source = f"profile read from {table_path}"
    else:
        profile = build_profile(network, data.val, image, repeats=repeats, threads=threads, model_sha256=sha)
        source = f"profile measured in {profile.seconds:.1f} s ({profile.timings} timings, {profile.scorings} scorings)"
        if table_path is not None:
            profile.save(table_path)
            source += f", saved to {table_path}"
    choice = profile.controller().choose(weight_vector, budget_ms, margin)
    configuration = choice.configuration
    with pinned_threads(threads):
        measured = median_ms(configuration_latency(network, image, [configuration], repeats=repeats)[configuration])
        test = component_quality(network, data.test)
    rows = [
        {
            "task": t,
            "weight": weight_vector[i],
            "width": configuration.widths[i],
            "val_quality": choice.candidate.quality[t],
            "normalized": choice.normalized[t],
            "test_quality": test[(configuration.encoder_width, t, configuration.widths[i])],
        }
        for i, t in enumerate(TASKS)
    ]
    click.echo(source)
    click.echo(f"configuration      {configuration.label} (encoder width {configuration.encoder_width:g})")
    click.echo(format_table(rows, ["task", "weight", "width", "val_quality", "normalized", "test_quality"]))
    click.echo(f"score              {choice.score:.3f} (weighted normalized validation quality, 0..1)")
    click.echo(f"latency predicted  {choice.candidate.latency_ms:.3f} ms (budget {budget_ms:g} ms, margin {margin:g})")
    click.echo(f"latency measured   {measured:.3f} ms (whole network, batch 1, median of {repeats})")
    click.echo(f"feasible           {choice.feasible} of {len(profile.candidates())} configurations")
    if measured > budget_ms:
        click.echo(f"note: measured {measured:.3f} ms is over the budget; the machine may be loaded", err=True)
    _write_json(
        json_out,
        {
            "model": str(model_path),
            "threads": threads,
            "repeats": repeats,
            **choice.to_dict(),
            "margin": margin,
            "measured_ms": measured,
            "tasks": rows,
        },
    )
