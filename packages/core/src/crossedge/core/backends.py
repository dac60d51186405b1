"""``--backend`` for the packages that run models (specdec, quant) without depending on a backend package.

crossedge-core owns the ``backend`` registry but registers no backend: crossedge-ondevice
(torch-eager, torch-compile, onnxruntime, executorch) and third-party plugins do. A
backend that other packages can run a causal LM through implements two methods:

- ``require(*, purpose, **capabilities)``: raise a :class:`CrossedgeError` naming the
  backend, the missing capability and what to use instead, when it cannot serve
  ``purpose``. Capabilities are keyword flags: ``dynamic_shapes`` (the sequence grows),
  ``kv_cache_decoding`` (incremental decoding of a causal LM with a mutable KV cache),
  ``custom_kernels`` (modules calling custom kernels, e.g. crossedge-quant's int8/int4).
- ``prepare_causal_lm(model)``: the model to run in its place (the same object, changed
  in place, or a stand-in with the same interface).

The default, ``torch-eager``, works even when no backend package is installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import CrossedgeError, UnknownNameError
from .registry import get_registry

DEFAULT_BACKEND = "torch-eager"
ONDEVICE_INSTALL = "pip install crossedge-ondevice"


class PlainEager:
    """Stand-in for ``torch-eager`` when no plugin registers it: runs the model as it is."""

    name = DEFAULT_BACKEND
    description = "PyTorch eager mode (crossedge-ondevice not installed)"

    def require(self, *, purpose: str, **capabilities: Any) -> None:
        """Eager PyTorch runs anything the packages do."""

    def prepare_causal_lm(self, model: Any) -> Any:
        """The model itself."""
        return model


def resolve_backend(name: str, *, purpose: str, **capabilities: bool) -> Any:
    """The backend registered as ``name``, checked for ``purpose`` before any model is loaded.

    ``capabilities`` are the flags the use needs (see the module docstring); the backend
    itself decides whether it has them, so a third-party backend declares its own support.
    """
    registry = get_registry("backend")
    if name not in registry:
        if name in (DEFAULT_BACKEND, "eager"):
            return PlainEager()
        known = [DEFAULT_BACKEND, *(n for e in registry.entries() for n in (e.name, *e.aliases))]
        error = UnknownNameError("backend", name, known)
        if importlib.util.find_spec("crossedge.ondevice") is None:
            # Still an UnknownNameError (callers catch one type), with the install hint added.
            error.args = (
                f"{error}; backends other than {DEFAULT_BACKEND} come from plugins, and crossedge-ondevice "
                f"(torch-compile, torch-onednn, onnxruntime, executorch) is not installed: run `{ONDEVICE_INSTALL}`",
            )
        raise error
    entry = registry.entry(name)
    backend = entry.obj
    for method in ("require", "prepare_causal_lm"):
        if not callable(getattr(backend, method, None)):
            raise CrossedgeError(
                f"backend {entry.name!r} (plugin {entry.plugin!r}) cannot be used for {purpose}: it has no "
                f"{method}() method to say whether it runs a causal LM; use --backend {DEFAULT_BACKEND}"
            )
    backend.require(purpose=purpose, **capabilities)
    return backend
