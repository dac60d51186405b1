"""Example crossedge plugin: ``torch-export``, a backend that runs a ``torch.export`` graph.

It shows the whole backend contract in one class: capabilities as class attributes, an
option as an ``__init__`` keyword argument (``--backend torch-export:strict=true``),
``_prepare`` returning a :class:`PreparedModel`, and registration of the class through the
``crossedge`` entry point. It depends on crossedge-core alone.
"""

from __future__ import annotations

from typing import Any

from crossedge.core import hookimpl
from crossedge.core.contracts.backend import Backend, BackendCapabilityError, PreparedModel, first_tensor

__all__ = ["TorchExportBackend", "register_backends"]


class TorchExportBackend(Backend):
    """Capture the model ahead of time with ``torch.export`` and run the exported graph in PyTorch."""

    name = "torch-export"
    description = "torch.export ahead-of-time graph run by PyTorch (static shapes; example plugin)"
    dtypes = ("float32",)
    # The graph is specialized to the example shapes, and it holds no mutable KV cache.
    dynamic_shapes = False
    training = False
    kv_cache_decoding = False
    custom_kernels = False

    def __init__(self, strict: bool = False):
        # strict=True traces with TorchDynamo's bytecode analysis; the default non-strict mode
        # runs the Python code, which captures more models (transformers' ones included).
        self.strict = strict

    def _prepare(self, model: Any, example_inputs: tuple[Any, ...], dtype: Any) -> PreparedModel:
        import torch

        try:
            exported = torch.export.export(model, example_inputs, strict=self.strict)
        except Exception as exc:  # export errors are long; the user needs the model and the reason
            raise BackendCapabilityError(
                f"backend {self.name!r} could not export {type(model).__name__}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; try --backend torch-eager"
            ) from exc
        graph = exported.module()
        return PreparedModel(self, lambda *xs: first_tensor(graph(*xs)), example_inputs, dtype, module=graph)


@hookimpl
def register_backends(register):
    """Register the class (not an instance): crossedge builds it from a spec when a command names it."""
    register(TorchExportBackend, aliases=("export",))
