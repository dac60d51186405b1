"""The crossedge-ondevice plugin: registers backends, CLI commands and benchmarks."""

from __future__ import annotations

from crossedge.core.hookspecs import hookimpl

#: name -> (class in crossedge.ondevice.backends, aliases); imported (with torch) on first use.
#: torch-eager is crossedge-core's own.
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "torch-compile": ("TorchCompileBackend", ("inductor",)),
    "torch-onednn": ("TorchOneDNNBackend", ("onednn",)),
    "onnxruntime": ("OnnxRuntimeBackend", ("ort",)),
    "executorch": ("ExecuTorchBackend", ()),
}


@hookimpl
def register_backends(register):
    """Register the torch-compile, torch-onednn, onnxruntime and executorch classes."""
    for name, (class_name, aliases) in BACKENDS.items():
        register(f"crossedge.ondevice.backends:{class_name}", name=name, aliases=aliases)


@hookimpl
def register_commands(cli):
    """Add the ``crossedge ondevice`` group."""
    from .cli import ondevice

    cli.add_command(ondevice)


@hookimpl
def register_benchmarks(register):
    """Register the benchmarks: MobileTL, latency predictor, backends, keyboard, split, gmu and multi-task."""
    register("crossedge.ondevice.benchmarks:MobileTLBenchmark()", name="ondevice-mobiletl")
    register("crossedge.ondevice.benchmarks:PredictorBenchmark()", name="ondevice-predictor")
    register("crossedge.ondevice.benchmarks:BackendsBenchmark()", name="ondevice-backends")
    register("crossedge.ondevice.keyboard.bench:KeyboardBenchmark()", name="ondevice-keyboard")
    register("crossedge.ondevice.split.bench:SplitBenchmark()", name="ondevice-split")
    register("crossedge.ondevice.gmu.bench:GmuBenchmark()", name="ondevice-gmu")
    register("crossedge.ondevice.multitask.bench:MultiTaskBenchmark()", name="ondevice-multitask")
    register("crossedge.ondevice.encdec.bench:ReturnEncoderBenchmark()", name="ondevice-return-encoder")
    register("crossedge.ondevice.dolphin.bench:DolphinBenchmark()", name="ondevice-dolphin")
