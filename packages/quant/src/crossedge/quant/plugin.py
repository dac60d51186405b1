"""The crossedge-quant plugin: registers the built-in quantizers and the ``crossedge quant`` commands."""

from __future__ import annotations

from crossedge.core.hookspecs import hookimpl

#: The built-in methods as (name, "module:attr" reference), registered exactly as a third-party
#: plugin would register its own; the reference is imported (with torch) on first use only.
QUANTIZERS: tuple[tuple[str, str], ...] = (
    ("rtn", "crossedge.quant.methods.rtn:RTNQuantizer"),
    ("w8a8", "crossedge.quant.methods.w8a8:W8A8Quantizer"),
    ("smoothquant", "crossedge.quant.methods.w8a8:SmoothQuantQuantizer"),
    ("crossquant", "crossedge.quant.methods.w8a8:CrossQuantQuantizer"),
    ("gptq", "crossedge.quant.methods.gptq:GPTQQuantizer"),
    ("mixed", "crossedge.quant.methods.mixed:MixedQuantizer"),
    ("mobilequant", "crossedge.quant.methods.mobilequant:MobileQuantQuantizer"),
    ("int8", "crossedge.quant.methods.preset:Int8Quantizer"),
    ("int4", "crossedge.quant.methods.preset:Int4Quantizer"),
    ("jlcm", "crossedge.quant.methods.jlcm:JLCMQuantizer"),
    ("agile", "crossedge.quant.methods.agile:AgileQuantQuantizer"),
    ("edgeqat", "crossedge.quant.methods.edgeqat:EdgeQATQuantizer"),
)


@hookimpl
def register_quantizers(register):
    for name, reference in QUANTIZERS:
        register(reference, name=name)


@hookimpl
def register_model_formats(register):
    register("crossedge.quant.serialization:QuantizedFolderFormat()", name="crossedge-quant")


@hookimpl
def register_commands(cli):
    from .commands import quant_group

    cli.add_command(quant_group)


@hookimpl
def register_benchmarks(register):
    register("crossedge.quant.evaluation:QuantEvalBenchmark()", name="quant-eval")
