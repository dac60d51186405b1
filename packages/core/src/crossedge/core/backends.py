"""``--backend`` for the packages that run models (specdec, quant), through the backend contract.

The contract is :class:`crossedge.core.contracts.backend.Backend`; plugins register subclasses
of it. crossedge-core registers one itself, :class:`TorchEagerBackend` (``torch-eager``, the
default), so ``--backend torch-eager`` works with no backend package installed;
crossedge-ondevice adds torch-compile, torch-onednn, onnxruntime and executorch.
:func:`resolve_backend` builds the backend a command names and checks it for the command's
purpose before any model loads.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from .contracts.backend import DEFAULT_BACKEND, Backend, PreparedModel, first_tensor, is_backend_class
from .errors import CrossedgeError, UnknownNameError
from .registry import get_registry
from .specs import Spec, build, parse_spec

__all__ = ["DEFAULT_BACKEND", "ONDEVICE_INSTALL", "TorchEagerBackend", "get_backend", "resolve_backend"]

ONDEVICE_INSTALL = "pip install crossedge-ondevice"
CONTRACT = "crossedge.core.contracts.backend.Backend"


class TorchEagerBackend(Backend):
    """Plain PyTorch eager execution: the default, and the reference every other backend is checked against."""

    name = DEFAULT_BACKEND
    description = "PyTorch eager mode (the default and the parity reference)"
    dtypes = ("float32", "bfloat16", "float16")
    dynamic_shapes = True
    training = True
    kv_cache_decoding = True
    custom_kernels = True
    module_interface = True

    def _prepare(self, model: Any, example_inputs: tuple[Any, ...], dtype: Any) -> PreparedModel:
        return PreparedModel(self, lambda *xs: first_tensor(model(*xs)), example_inputs, dtype, module=model)

    def prepare_causal_lm(self, model: Any) -> Any:
        """The model itself: eager mode runs whatever the packages do."""
        return model

    def prepare_module(self, model: Any) -> Any:
        """The module itself, in eval mode."""
        return model.eval()


def _unknown(name: str) -> UnknownNameError:
    registry = get_registry("backend")
    # Close matches among names and aliases, each reported by its primary name once.
    primary = {n: e.name for e in registry.entries() for n in (e.name, *e.aliases)}
    close = dict.fromkeys(primary[m] for m in difflib.get_close_matches(name, list(primary), n=5, cutoff=0.5))
    error = UnknownNameError("backend", name, registry.names())
    message = f"unknown backend {name!r}: "
    if close:
        message += "did you mean " + " or ".join(repr(c) for c in list(close)[:3]) + "?"
    # Every registered backend, third-party ones too: close matches alone hide what else is there.
    message += f" Registered backends: {', '.join(registry.names()) or 'none'}."
    if importlib.util.find_spec("crossedge.ondevice") is None:
        message += (
            f" Backends other than {DEFAULT_BACKEND} come from plugins, and crossedge-ondevice "
            f"(torch-compile, torch-onednn, onnxruntime, executorch) is not installed: run `{ONDEVICE_INSTALL}`."
        )
    # Still an UnknownNameError (callers catch one type), with the hints added.
    error.args = (message,)
    return error


def get_backend(spec: str | Spec = DEFAULT_BACKEND) -> Backend:
    """Build the backend ``spec`` names (``name[:key=value,...]``, docs/specs.md), refusing non-contract objects.

    The options are the class's ``__init__`` keyword arguments, coerced to their declared
    types (``torch-compile:mode=reduce-overhead``); an unknown option is a
    :class:`crossedge.core.specs.SpecError` listing the valid ones.
    """
    parsed = parse_spec(spec, kind="backend")
    registry = get_registry("backend")
    if parsed.name not in registry:
        raise _unknown(parsed.name)
    entry = registry.entry(parsed.name)
    factory = entry.obj  # the registry refuses an instance here, naming the plugin
    if not is_backend_class(factory):
        raise CrossedgeError(
            f"backend {entry.name!r} (plugin {entry.plugin!r}) is {factory!r}, not a subclass of {CONTRACT}: "
            f"the plugin must subclass {CONTRACT} and register the class; until then use --backend {DEFAULT_BACKEND}"
        )
    return build(parsed, factory, kind="backend")


def resolve_backend(spec: str | Spec, *, purpose: str, **capabilities: Any) -> Backend:
    """The backend ``spec`` names, built with its options and checked for ``purpose`` before any model loads.

    ``capabilities`` are the flags the use needs (``dynamic_shapes``, ``kv_cache_decoding``,
    ``custom_kernels``, ``training``, ``dtype``); :meth:`Backend.require` refuses with the
    missing capability and the registered backends that have it.
    """
    backend = get_backend(spec)
    backend.require(purpose=purpose, **capabilities)
    return backend
