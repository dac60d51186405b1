"""``crossedge ondevice ...`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from crossedge.core import CrossedgeError, get_registry
from crossedge.core.backends import get_backend
from crossedge.core.bench import format_table
from crossedge.core.cli import echo_json


@click.group()
def ondevice() -> None:
    """On-device ML: backends, profiling, memory-bounded fine-tuning, latency-constrained search."""


@ondevice.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def backends_command(as_json: bool) -> None:
    """List backends with their declared capabilities and whether they can run here."""
    rows = []
    for entry in get_registry("backend").entries():
        try:
            caps = get_backend(entry.name).capabilities()
        except CrossedgeError as exc:  # a third-party entry that does not follow the contract: show why
            caps = {"name": entry.name, "dtypes": [], "available": False, "unavailable_reason": str(exc)}
        rows.append({**caps, "dtypes": ",".join(caps["dtypes"]), "plugin": entry.plugin})
    if as_json:
        echo_json(rows)
        return
    columns = ["name", "dtypes", "dynamic_shapes", "training", "kv_cache_decoding", "custom_kernels", "available"]
    click.echo(format_table(rows, columns))
    for row in rows:
        if row["unavailable_reason"]:
            click.echo(f"  {row['name']}: {row['unavailable_reason']}")


@ondevice.command("profile")
@click.option("--model", "model_name", default="mbv2-digits", show_default=True, help="Built-in network or model.")
@click.option("--backend", default="torch-eager", show_default=True)
@click.option("--dtype", default="float32", show_default=True, help="float32, bfloat16 (bf16) or float16.")
@click.option("--repeats", default=20, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--seq-len", default=32, show_default=True, help="Token length for text models.")
@click.option("--threads", type=int, default=None, help="Torch/runtime threads (default: torch's current).")
@click.option("--depth", default=2, show_default=True, help="Module depth of the per-layer breakdown.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the profile here.")
def profile_command(model_name, backend, dtype, repeats, batch, seq_len, threads, depth, json_out) -> None:
    """Latency (median, p90), memory, size, MACs, per-layer breakdown and parity against eager."""
    from .profiling import profile

    result = profile(
        model_name,
        backend,
        repeats=repeats,
        batch=batch,
        seq_len=seq_len,
        threads=threads,
        dtype=dtype,
        depth=depth,
    )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "layers"}
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        click.echo(f"{key.ljust(width)}  {shown}")
    click.echo("")
    click.echo(format_table(result["layers"], ["layer", "type", "parameters", "macs", "output_shape", "eager_ms"]))


@ondevice.command("finetune")
@click.option("--method", type=click.Choice(["full", "bias", "mobiletl", "sparse"]), required=True)
@click.option("--budget-kb", type=float, default=None, help="Training memory budget (needed by sparse).")
@click.option("--blocks", type=int, default=None, help="Top inverted residual blocks to tune (full, mobiletl).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--width", "width_mult", default=1.0, show_default=True, help="Width multiplier of the network.")
@click.option("--threads", default=1, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def finetune_command(method, budget_kb, blocks, epochs, batch_size, lr, seed, width_mult, threads, json_out) -> None:
    """Adapt the digits 0-4 network to digits 5-9; print accuracy, measured training memory and time."""
    from .training import run_finetune

    result = run_finetune(
        method,
        blocks=blocks,
        budget_kb=budget_kb,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        width_mult=width_mult,
        threads=threads,
        disk_cache=True,
    )
    data = result.to_dict()
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    mem = result.memory
    click.echo(f"method             {method}" + (f" (top {blocks} blocks)" if blocks is not None else ""))
    click.echo(f"accuracy           {result.accuracy:.2f}% (before: {result.accuracy_before:.2f}%, digits 5-9)")
    click.echo(f"training memory    {mem.training_bytes / 1024:.1f} KiB (batch {batch_size})")
    click.echo(f"  saved for bwd    {mem.saved_activation_bytes / 1024:.1f} KiB")
    click.echo(f"  gradients        {mem.gradient_bytes / 1024:.1f} KiB")
    click.echo(f"  optimizer state  {mem.optimizer_state_bytes / 1024:.1f} KiB (Adam)")
    click.echo(f"parameters         {mem.parameter_bytes / 1024:.1f} KiB, {mem.trainable_parameters} trained")
    click.echo(f"time               {result.seconds:.2f} s for {epochs} epochs ({threads} thread(s))")
    if "scheme" in result.details:
        click.echo(f"sparse scheme      {json.dumps(result.details['scheme'])}")
    if budget_kb is not None:
        verdict = "over" if mem.training_bytes > budget_kb * 1024 else "within"
        click.echo(f"budget             {budget_kb:g} KiB: {verdict}")


@ondevice.command("search")
@click.option("--latency-ms", type=float, required=True, help="Latency limit per batch of 16 images, ms.")
@click.option("--memory-kb", type=float, required=True, help="Inference memory limit: weights + largest activations.")
@click.option(
    "--device",
    "device_label",
    default="torch-eager/t1/float32",
    show_default=True,
    help="Configuration to search for: backend/tTHREADS/dtype; the predictor never trains on it.",
)
@click.option("--candidates", default=200, show_default=True, help="Sub-networks scored by the predictor.")
@click.option("--evaluate-top", default=25, show_default=True, help="Feasible sub-networks whose accuracy is measured.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def search_command(latency_ms, memory_kb, device_label, candidates, evaluate_top, seed, json_out) -> None:
    """Most accurate once-for-all sub-network under latency and memory limits, predicted vs measured latency."""
    import os

    from .latency import DeviceConfig
    from .search import search

    device = DeviceConfig.parse(device_label)
    if device.threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        click.echo("note: set OMP_WAIT_POLICY=PASSIVE for steadier multi-thread timings on a shared machine", err=True)
    result = search(
        latency_ms=latency_ms,
        memory_kb=memory_kb,
        device=device,
        candidates=candidates,
        evaluate_top=evaluate_top,
        seed=seed,
    )
    data = result.to_dict()
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(data, indent=2) + "\n")
    click.echo(f"device             {result.device}")
    click.echo(f"sub-network        {result.config.label()}")
    click.echo(f"accuracy           {result.accuracy:.2f}% (digits 0-9 test split, batch norms calibrated)")
    click.echo(f"latency predicted  {result.predicted_ms:.3f} ms")
    click.echo(f"latency measured   {result.measured_ms:.3f} ms (batch 16, fastest of 9)")
    click.echo(f"memory             {result.memory_kb:.1f} KiB")
    click.echo(f"feasible           {result.feasible} of {result.candidates} candidates")
    click.echo("")
    click.echo(format_table(result.table, ["label", "accuracy", "predicted_ms", "memory_kb"]))


def _add_parts() -> None:
    # Each budget-at-run-time part keeps its command beside its code; their modules import only click here.
    from .dolphin.cli import dolphin
    from .encdec.cli import return_encoder
    from .gmu.cli import gmu
    from .keyboard.cli import keyboard
    from .multitask.cli import multitask
    from .split.cli import split

    for command in (dolphin, gmu, keyboard, multitask, return_encoder, split):
        ondevice.add_command(command)


_add_parts()
