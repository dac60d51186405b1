"""``crossedge ondevice split ...``: train, evaluate and simulate a slimmable split network."""

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
    help="A .safetensors file written by `split train`.",
)


@click.group("split")
def split() -> None:
    """Slimmable split network: a device-side encoder whose width (and bytes sent) is chosen per inference."""


@split.command("train")
@click.option("--data", type=click.Choice(["mnist", "digits"]), default="mnist", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Model file (.safetensors)."
)
@click.option("--force", is_flag=True, help="Replace --out even when it is not a split network written here.")
@click.option("--epochs", default=12, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--widths", default="0.25,0.5,0.75,1", show_default=True, help="Encoder widths selectable at run time.")
@click.option(
    "--bits", "bits_text", default="2,4,8", show_default=True, help="Bits per bottleneck value to choose from."
)
@click.option("--bottleneck-channels", default=8, show_default=True, help="Bottleneck channels at width 1.")
@click.option("--channels", default="16,32,32", show_default=True, help="Encoder conv channels at width 1.")
@click.option("--decoder-channels", default=64, show_default=True)
@click.option("--norm", type=click.Choice(["switchable", "none"]), default="switchable", show_default=True)
@click.option("--random-settings", default=2, show_default=True, help="Random settings per step besides the extremes.")
@click.option("--no-distill", is_flag=True, help="Train every setting on the labels, not the largest's predictions.")
@click.option("--no-sandwich", is_flag=True, help="Ablation: one random setting per step instead of the sandwich.")
@click.option("--seed", default=0, show_default=True, help="Seeds the weights and the train/val/test split.")
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
    bits_text,
    bottleneck_channels,
    channels,
    decoder_channels,
    norm,
    random_settings,
    no_distill,
    no_sandwich,
    seed,
    threads,
    json_out,
) -> None:
    """Train with the sandwich rule (largest, smallest and random settings every step) and save as safetensors."""
    from crossedge.core.bench import format_table
    from crossedge.core.bench import threads as pinned_threads

    from .experiment import parse_floats, train_on, training_record
    from .model import check_writable, save_network
    from .training import TrainConfig, accuracy

    check_writable(out, force=force)  # refuse before training, not after
    config = {
        "widths": parse_floats(widths, "--widths"),
        "bits": [int(b) for b in parse_floats(bits_text, "--bits")],
        "bottleneck_channels": bottleneck_channels,
        "encoder_channels": [int(c) for c in parse_floats(channels, "--channels")],
        "decoder_channels": decoder_channels,
        "norm": norm,
    }
    config["encoder_strides"] = [1] + [2] * (len(config["encoder_channels"]) - 1)
    train_config = TrainConfig(epochs, batch_size, lr, random_settings, not no_distill, seed, not no_sandwich)
    with pinned_threads(threads):
        network, task, result = train_on(data, config=config, train_config=train_config)
    save_network(network, out, force=force, extra=training_record(data, result, seed))
    rows = [
        {"setting": s.label, "bytes": s.payload_bytes, "val_accuracy": accuracy(network, task.val, s)}
        for s in network.settings
    ]
    click.echo(
        f"trained {epochs} epochs ({result.steps} steps) on {len(task.train)} {data} images in {result.seconds:.1f} s"
    )
    click.echo(format_table(rows, ["setting", "bytes", "val_accuracy"]))
    click.echo(f"saved {out}")
    _write_json(
        json_out, {"model": str(out), "config": network.config.to_dict(), "train": result.to_dict(), "settings": rows}
    )


@split.command("eval")
@MODEL_OPTION
@click.option("--repeats", default=30, show_default=True, help="Timed repeats per setting (median reported).")
@THREADS_OPTION
@JSON_OPTION
def eval_command(model_path, repeats, threads, json_out) -> None:
    """Accuracy, bytes sent and measured device/server latency of every width/bits setting."""
    from crossedge.core.bench import format_table

    from .evaluation import measure_costs
    from .experiment import load_trained

    network, task = load_trained(model_path)
    costs = measure_costs(network, task, repeats=repeats, threads=threads)
    rows = [c.to_row() for c in costs]
    columns = ["setting", "width", "bits", "payload_bytes", "test_accuracy", "device_ms", "server_ms"]
    click.echo(f"{task.name}: {len(task.test)} test images, batch 1, {threads} thread(s), median of {repeats}")
    click.echo(format_table(rows, columns))
    click.echo("local: the whole network on the device; raw: the uint8 image sent, the server runs everything")
    _write_json(json_out, {"model": str(model_path), "threads": threads, "repeats": repeats, "settings": rows})


@split.command("simulate")
@MODEL_OPTION
@click.option("--bandwidths", default="0.1,0.5,1,5", show_default=True, help="Constant links to run, Mbit/s.")
@click.option("--rtt-ms", default=10.0, show_default=True)
@click.option("--deadline-ms", default=20.0, show_default=True)
@click.option(
    "--trace",
    "trace_spec",
    default="random",
    show_default=True,
    help="Changing link: 'random' (a seeded walk) or a CSV of time_s,mbps rows.",
)
@click.option("--trace-seconds", default=60.0, show_default=True, help="Length of the run over the changing link.")
@click.option("--trace-low", default=0.01, show_default=True, help="Random trace: lowest Mbit/s.")
@click.option("--trace-high", default=5.0, show_default=True, help="Random trace: highest Mbit/s.")
@click.option("--period-ms", default=100.0, show_default=True, help="One inference every this many ms.")
@click.option(
    "--rank",
    type=click.Choice(["width", "accuracy"]),
    default="width",
    show_default=True,
    help="What the controller prefers among settings that fit: widest, or best validation accuracy.",
)
@click.option(
    "--headroom",
    default=0.5,
    show_default=True,
    help="Changing link: also run the controller planning at this fraction of its bandwidth estimate (1: off).",
)
@click.option("--steps", "link_steps", default=500, show_default=True, help="Inferences per constant link.")
@click.option("--repeats", default=30, show_default=True, help="Timed repeats per setting.")
@click.option("--seed", default=0, show_default=True)
@THREADS_OPTION
@JSON_OPTION
def simulate_command(
    model_path,
    bandwidths,
    rtt_ms,
    deadline_ms,
    trace_spec,
    trace_seconds,
    trace_low,
    trace_high,
    period_ms,
    rank,
    headroom,
    link_steps,
    repeats,
    seed,
    threads,
    json_out,
) -> None:
    """Per inference, pick the best setting that meets the deadline on the link; compare with fixed widths."""
    from crossedge.core.bench import format_table

    from .evaluation import measure_costs
    from .experiment import link_results, load_trained, parse_floats, trace_results
    from .link import BandwidthTrace

    network, task = load_trained(model_path)
    costs = measure_costs(network, task, repeats=repeats, threads=threads)
    sim = {"deadline_ms": deadline_ms, "rtt_ms": rtt_ms, "period_ms": period_ms, "seed": seed, "rank": rank}
    columns = ["policy", "miss_rate", "accuracy", "on_time_accuracy", "mean_bytes", "p95_latency_ms", "fallbacks"]
    link_rows = []
    for mbps, result in link_results(costs, parse_floats(bandwidths, "--bandwidths"), steps=link_steps, **sim):
        link_rows.append({"mbps": mbps, **result.to_row()})
    click.echo(f"constant links, deadline {deadline_ms:g} ms, RTT {rtt_ms:g} ms, {link_steps} inferences each")
    click.echo(format_table(link_rows, ["mbps", *columns]))
    if trace_spec == "random":
        trace = BandwidthTrace.random_walk(trace_seconds, low=trace_low, high=trace_high, seed=seed)
    else:
        trace = BandwidthTrace.from_csv(trace_spec)
    steps = max(1, int(1000 * trace_seconds / period_ms))
    runs = trace_results(costs, trace, steps=steps, headroom=headroom, **sim)
    click.echo("")
    click.echo(
        f"changing link: {steps} inferences over {trace_seconds:g} s, "
        f"{min(trace.mbps):.3g}-{max(trace.mbps):.3g} Mbit/s"
    )
    click.echo(format_table([r.to_row() for r in runs], columns))
    adaptive = runs[0]
    if adaptive.fallbacks:
        click.echo(f"adaptive fell back to the smallest setting {adaptive.fallbacks} time(s), e.g.:")
        for note in adaptive.notes:
            click.echo(f"  {note}")
    _write_json(
        json_out,
        {
            "model": str(model_path),
            "threads": threads,
            **sim,
            "links": link_rows,
            "trace": {"times_s": trace.times_s, "mbps": trace.mbps},
            "trace_runs": [{**r.to_row(), "notes": r.notes} for r in runs],
            "settings": [c.to_row() for c in costs],
        },
    )
