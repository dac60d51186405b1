"""The crossedge-ondevice plugin: registers backends, CLI commands and benchmarks."""

from __future__ import annotations

from crossedge.core import hookimpl


@hookimpl
def register_backends(register):
    """Register the torch-compile, torch-onednn, onnxruntime and executorch classes (torch-eager is core's)."""
    from .backends import BUILTIN_BACKENDS

    aliases = {"torch-compile": ("inductor",), "torch-onednn": ("onednn",), "onnxruntime": ("ort",)}
    for backend_cls in BUILTIN_BACKENDS:
        register(backend_cls, aliases=aliases.get(backend_cls.name, ()))


@hookimpl
def register_commands(cli):
    """Add the ``crossedge ondevice`` group."""
    from .cli import ondevice

    cli.add_command(ondevice)


@hookimpl
def register_benchmarks(register):
    """Register the MobileTL, latency-predictor and backend benchmarks."""
    from .benchmarks import BENCHMARKS

    for benchmark_cls in BENCHMARKS:
        register(benchmark_cls())
