"""The backend contract: a class that prepares a model for inference through one runtime.

A backend declares what it can do as class attributes (dtypes, dynamic shapes, training,
KV-cache decoding, custom kernels) and checks that its own dependencies import before it
does anything, the way OpenTelemetry's instrumentors do. Plugins register the *class*
(``register(MyBackend)``); options are ``__init__`` keyword arguments with type hints, so
``--backend torch-compile:mode=reduce-overhead`` can be bound to them. Two verbs:

- ``prepare(model, example_inputs, dtype=...)`` returns a :class:`PreparedModel`: call it
  with tensors shaped like the examples and it returns a tensor.
- ``prepare_causal_lm(model)`` returns the causal LM to decode with in place of ``model``
  (same interface: ``config``, ``generate``, caches), for backends with ``kv_cache_decoding``.
- ``prepare_module(model)`` readies any module in place, keeping its interface (submodules
  called one by one, keyword arguments, transformers outputs), for backends with
  ``module_interface``: rerankers call an encoder's layers directly, so a traced graph of
  ``forward`` alone cannot serve them.

Callers check first with ``require(purpose=..., **capabilities)``, which names what is
missing and which registered backends would serve. Torch is imported inside functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossedge.core.errors import CrossedgeError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: the backend every command uses unless told otherwise; crossedge-core itself provides it
DEFAULT_BACKEND = "torch-eager"

#: canonical dtype names backends declare, and the short aliases users may type
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: what ``require`` calls each capability flag in its messages
CAPABILITY_LABELS = {
    "dynamic_shapes": "dynamic input shapes",
    "training": "training (gradients)",
    "kv_cache_decoding": "decoding a causal LM with a mutable KV cache (incremental steps)",
    "custom_kernels": "modules with custom (quantized int8/int4) kernels",
    "module_interface": "running a model in place with its own interface (submodules called directly)",
}


class BackendUnavailableError(CrossedgeError):
    """A backend's runtime package is not installed."""


class BackendCapabilityError(CrossedgeError):
    """A backend was asked for something it does not support (a dtype, training, a new shape)."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name (``float32``, ``bfloat16``, ``float16``) of a dtype or its short alias."""
    if not isinstance(dtype, str):
        name = str(dtype).removeprefix("torch.")
        if name not in DTYPE_NAMES:
            raise CrossedgeError(f"dtype {dtype} is not one crossedge backends use: {', '.join(DTYPE_NAMES)}")
        return name
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPE_NAMES:
        raise CrossedgeError(f"unknown dtype {dtype!r}: choose one of {', '.join([*DTYPE_NAMES, *DTYPE_ALIASES])}")
    return name


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) under which its bfloat16 matmuls still have native instructions
BF16_ONEDNN_ISAS = (
    "ALL",
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)


def native_bf16(flags: Sequence[str] | None = None, caps: dict[str, str | None] | None = None) -> tuple[bool, str]:
    """Whether bfloat16 matmuls run on native instructions here, and why (a short reason for reports).

    On CPUs without them (AVX2 only, or AVX-512 without ``avx512_bf16``) torch emulates bfloat16
    through float32 conversions, and a bfloat16 scorer measured 4x *slower* than float32 with the
    kernels capped at AVX2 (docs/benchmarks.md), so ``--dtype auto`` only picks it where this is true.
    """
    from crossedge.core.bench import cpu_flags, instruction_caps

    flags = cpu_flags() if flags is None else flags
    caps = instruction_caps() if caps is None else caps
    have = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    if not have:
        return False, "the CPU has no avx512_bf16 or amx_bf16"
    capability = (caps.get("torch_cpu_capability") or "").upper()
    if capability and not capability.startswith("AVX512"):
        return False, f"torch's kernels are capped at {capability} (ATEN_CPU_CAPABILITY)"
    onednn = (caps.get("onednn_max_isa") or "all").upper()
    if onednn not in BF16_ONEDNN_ISAS:
        return False, f"oneDNN is capped at {onednn} (ONEDNN_MAX_CPU_ISA)"
    return True, f"the CPU has {' and '.join(have)}"


def resolve_dtype(dtype: str | torch.dtype, *, quantized: bool = False) -> tuple[str, str | None]:
    """The canonical dtype to run, and for ``auto`` the reason it was chosen (``None`` otherwise).

    ``auto`` is bfloat16 where the CPU runs it natively (:func:`native_bf16`), else float32;
    with ``quantized`` (a ``--quant`` plan, whose linears take float32 activations) it is float32.
    """
    if dtype != "auto":
        return dtype_name(dtype), None
    if quantized:
        return "float32", "auto: float32, since the quantized linears take float32 activations"
    native, why = native_bf16()
    return ("bfloat16", f"auto: bfloat16, since {why}") if native else ("float32", f"auto: float32, since {why}")


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The ``torch.dtype`` for a canonical name or alias."""
    import torch

    return getattr(torch, dtype_name(dtype))


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """Example inputs as a tuple (a lone tensor becomes a 1-tuple)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def cast_inputs(inputs: Sequence[Any], dtype: torch.dtype) -> tuple[Any, ...]:
    """Cast floating tensors to ``dtype``; integer tensors (token ids, masks) stay as they are."""
    import torch

    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a model returned (the first one of a tuple or a transformers output)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise CrossedgeError(f"cannot find a tensor in the model output of type {type(output).__name__}")


def max_abs_diff(prepared: Callable[..., torch.Tensor], reference: nn.Module, inputs: Any) -> float:
    """Largest absolute difference between a prepared model and the eager fp32 model on ``inputs``."""
    import torch

    inputs = as_tuple(inputs)
    with torch.inference_mode():
        expected = first_tensor(reference(*inputs)).float()
        got = prepared(*inputs).float()
    if got.shape != expected.shape:
        raise CrossedgeError(f"prepared model returned shape {tuple(got.shape)}, eager {tuple(expected.shape)}")
    return float((got - expected).abs().max())


class PreparedModel:
    """A model prepared by a backend: ``prepared(*inputs) -> tensor``."""

    def __init__(
        self,
        backend: Backend,
        run: Callable[..., torch.Tensor],
        example_inputs: tuple[Any, ...],
        dtype: torch.dtype,
        artifact: Path | None = None,
        module: nn.Module | None = None,
    ):
        import torch

        self.backend = backend
        self._run = run
        self.example_shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        self.dtype = dtype
        self.artifact = artifact
        self.module = module

    def __call__(self, *inputs: Any) -> torch.Tensor:
        import torch

        if not self.backend.dynamic_shapes:
            shapes = [tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
            if shapes != self.example_shapes:
                raise BackendCapabilityError(
                    f"backend {self.backend.name!r} was prepared for input shapes {self.example_shapes} "
                    f"and does not support dynamic shapes; got {shapes}. Prepare it again with these inputs."
                )
        with torch.inference_mode():
            return self._run(*cast_inputs(inputs, self.dtype))

    def __repr__(self) -> str:
        return f"PreparedModel(backend={self.backend.name!r}, dtype={dtype_name(self.dtype)})"


class Backend:
    """Base class of backends: capabilities as class attributes, ``prepare`` as the one verb.

    Subclasses set ``name`` and ``description``, declare their capabilities, and implement
    ``_prepare`` (and ``prepare_causal_lm`` when they set ``kv_cache_decoding``).
    """

    name: str = ""
    description: str = ""
    #: dtypes the backend runs, by canonical name
    dtypes: tuple[str, ...] = ("float32",)
    #: whether a prepared model accepts input shapes other than the examples'
    dynamic_shapes: bool = False
    #: whether gradients flow through the prepared model
    training: bool = False
    #: whether a causal LM can be decoded through it step by step with a mutable KV cache
    #: (speculative decoding, ``generate``): exported static graphs cannot
    kv_cache_decoding: bool = False
    #: whether modules calling custom kernels (crossedge-quant's int8/int4 linears) run through it
    custom_kernels: bool = False
    #: whether ``prepare_module`` readies a module in place with its interface intact (its submodules
    #: may be called one by one, with keyword arguments): what scorers that walk an encoder's layers need
    module_interface: bool = False
    #: (module to import, pip requirement) pairs the backend needs
    requires: tuple[tuple[str, str], ...] = ()
    #: the pip command that installs what is missing
    install_hint: str = ""

    def missing_dependencies(self) -> list[str]:
        """Requirements whose module cannot be found."""
        return [req for module, req in self.requires if importlib.util.find_spec(module) is None]

    def available(self) -> bool:
        """Whether the backend can run here (every dependency importable)."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why the backend cannot run here, or None when it can."""
        missing = self.missing_dependencies()
        if not missing:
            return None
        hint = self.install_hint or "pip install " + " ".join(missing)
        return f"backend {self.name!r} needs {', '.join(missing)}, which is not installed: run `{hint}`"

    def check_dependencies(self) -> None:
        """Raise :class:`BackendUnavailableError` naming the package and the install command."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(reason)

    def capabilities(self) -> dict[str, Any]:
        """The declared capabilities as a plain dict."""
        return {
            "name": self.name,
            "dtypes": list(self.dtypes),
            "dynamic_shapes": self.dynamic_shapes,
            "training": self.training,
            "kv_cache_decoding": self.kv_cache_decoding,
            "custom_kernels": self.custom_kernels,
            "module_interface": self.module_interface,
            "available": self.available(),
            "unavailable_reason": self.unavailable_reason(),
        }

    @classmethod
    def supports(cls, *, dtype: str | torch.dtype | None = None, **flags: bool) -> bool:
        """Whether the class declares every capability flag set in ``flags`` (and ``dtype``)."""
        unknown = sorted(set(flags) - set(CAPABILITY_LABELS))
        if unknown:
            raise CrossedgeError(f"unknown backend capabilities {unknown}: choose from {', '.join(CAPABILITY_LABELS)}")
        if dtype is not None and dtype_name(dtype) not in cls.dtypes:
            return False
        return all(getattr(cls, flag) for flag, needed in flags.items() if needed)

    def require(
        self,
        *,
        purpose: str,
        dynamic_shapes: bool = False,
        training: bool = False,
        dtype: str | torch.dtype | None = None,
        kv_cache_decoding: bool = False,
        custom_kernels: bool = False,
        module_interface: bool = False,
    ) -> None:
        """Refuse clearly when this backend lacks what a caller (``purpose``, e.g. "specdec bench") needs.

        Other packages call this (through ``crossedge.core.backends.resolve_backend``) before
        they load a model: speculative decoding needs dynamic shapes and KV-cache decoding,
        quantized evaluation also needs custom kernels, quantization-aware training needs
        training. Capabilities are checked before dependencies, so nobody is told to install
        a runtime that would then be refused.
        """
        wanted = {
            "dynamic_shapes": dynamic_shapes,
            "training": training,
            "kv_cache_decoding": kv_cache_decoding,
            "custom_kernels": custom_kernels,
            "module_interface": module_interface,
        }
        lacking = [CAPABILITY_LABELS[flag] for flag, needed in wanted.items() if needed and not getattr(self, flag)]
        if dtype is not None and not self.supports_dtype(dtype):
            lacking.append(f"dtype {dtype_name(dtype)}")
        if lacking:
            able = [cls.name for cls in registered_backend_classes() if cls.supports(dtype=dtype, **wanted)]
            instead = "use --backend " + " or ".join(able) if able else "no installed backend supports it"
            raise BackendCapabilityError(
                f"backend {self.name!r} cannot be used for {purpose}: it does not support {', '.join(lacking)}; "
                f"{instead}"
            )
        self.check_dependencies()

    def prepare_causal_lm(self, model: nn.Module) -> nn.Module:
        """The causal LM to decode with in place of ``model`` (same interface: ``config``, ``generate``, caches).

        Only backends with ``kv_cache_decoding`` implement it; call :meth:`require` first.
        """
        raise BackendCapabilityError(
            f"backend {self.name!r} cannot run a causal LM with a KV cache; use --backend {DEFAULT_BACKEND}"
        )

    def prepare_module(self, model: nn.Module) -> nn.Module:
        """``model`` readied in place for inference, with its interface intact (submodules, keyword calls).

        Only backends with ``module_interface`` implement it; call :meth:`require` first. Casting
        to another dtype is the caller's step (``require(dtype=...)`` checks the backend runs it).
        """
        raise BackendCapabilityError(
            f"backend {self.name!r} cannot run a module in place with its own interface; "
            f"use --backend {DEFAULT_BACKEND}"
        )

    def supports_dtype(self, dtype: str | torch.dtype) -> bool:
        """Whether ``dtype`` is one the backend declares."""
        return dtype_name(dtype) in self.dtypes

    def prepare(self, model: nn.Module, example_inputs: Any, *, dtype: str | torch.dtype = "float32") -> PreparedModel:
        """Check dependencies and capabilities, then compile/export ``model`` for ``example_inputs``."""
        from torch import nn

        self.check_dependencies()
        name = dtype_name(dtype)
        if name not in self.dtypes:
            raise BackendCapabilityError(
                f"backend {self.name!r} runs {', '.join(self.dtypes)}, not {name}; choose another --dtype or backend"
            )
        if not isinstance(model, nn.Module):
            raise BackendCapabilityError(f"backend {self.name!r} prepares torch.nn.Module objects, got {type(model)}")
        target = torch_dtype(name)
        model = model.eval()
        if name != "float32":
            # A copy, so the caller's fp32 model stays the parity reference.
            model = copy.deepcopy(model).to(target)
        examples = cast_inputs(as_tuple(example_inputs), target)
        return self._prepare(model, examples, target)

    def _prepare(self, model: nn.Module, example_inputs: tuple[Any, ...], dtype: torch.dtype) -> PreparedModel:
        """Compile or export ``model`` (already in ``dtype`` and eval mode); subclasses implement it."""
        raise NotImplementedError(f"backend {self.name!r} does not implement _prepare()")


def is_backend_class(obj: Any) -> bool:
    """Whether ``obj`` is a subclass of :class:`Backend` (what the ``backend`` registry holds)."""
    return isinstance(obj, type) and issubclass(obj, Backend)


def registered_backend_classes() -> list[type[Backend]]:
    """Registered backend classes (third-party ones included), the default first."""
    from crossedge.core.registry import get_registry

    classes = [e.obj for e in get_registry("backend").entries() if is_backend_class(e.obj)]
    return sorted(classes, key=lambda cls: cls.name != DEFAULT_BACKEND)
