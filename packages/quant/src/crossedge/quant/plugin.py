"""The crossedge-quant plugin: registers the built-in quantizers and the ``crossedge quant`` commands."""

from __future__ import annotations

from crossedge.core.hookspecs import hookimpl

from .methods.gptq import GPTQQuantizer
from .methods.mixed import MixedQuantizer
from .methods.rtn import RTNQuantizer
from .methods.w8a8 import CrossQuantQuantizer, SmoothQuantQuantizer, W8A8Quantizer

#: The built-in methods, registered exactly as a third-party plugin would register its own.
QUANTIZERS = (RTNQuantizer, W8A8Quantizer, SmoothQuantQuantizer, CrossQuantQuantizer, GPTQQuantizer, MixedQuantizer)


@hookimpl
def register_quantizers(register):
    for quantizer in QUANTIZERS:
        register(quantizer)


@hookimpl
def register_model_formats(register):
    from .serialization import QuantizedFolderFormat

    register(QuantizedFolderFormat())


@hookimpl
def register_commands(cli):
    from .commands import quant_group

    cli.add_command(quant_group)


@hookimpl
def register_benchmarks(register):
    from .evaluation import QuantEvalBenchmark

    register(QuantEvalBenchmark())
