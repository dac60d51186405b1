"""Accelerator backends: each prepares a model for inference through one runtime.

A backend declares what it can do as class attributes (dtypes, dynamic shapes,
training) and checks that its own dependencies import before doing anything, the
way OpenTelemetry's instrumentors do. ``prepare(model, example_inputs)`` returns a
:class:`PreparedModel`: call it with tensors shaped like the examples and it returns
tensors.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError, get_registry

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class BackendUnavailableError(CrossedgeError):
    """A backend's runtime package is not installed."""


class BackendCapabilityError(CrossedgeError):
    """A backend was asked for something it does not support (a dtype, training, a new shape)."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name (``float32``, ``bfloat16``, ``float16``) of a dtype or its short alias."""
    if isinstance(dtype, torch.dtype):
        for name, value in DTYPES.items():
            if value == dtype:
                return name
        raise CrossedgeError(f"dtype {dtype} is not one crossedge backends use: {', '.join(DTYPES)}")
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise CrossedgeError(f"unknown dtype {dtype!r}: choose one of {', '.join([*DTYPES, *DTYPE_ALIASES])}")
    return name


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """Example inputs as a tuple (a lone tensor becomes a 1-tuple)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def cast_inputs(inputs: Sequence[Any], dtype: torch.dtype) -> tuple[Any, ...]:
    """Cast floating tensors to ``dtype``; integer tensors (token ids, masks) stay as they are."""
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in inputs)


def first_tensor(output: Any) -> torch.Tensor:
    """The tensor a model returned (the first one of a tuple or a transformers output)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise CrossedgeError(f"cannot find a tensor in the model output of type {type(output).__name__}")


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
        self.backend = backend
        self._run = run
        self.example_shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
        self.dtype = dtype
        self.artifact = artifact
        self.module = module

    def __call__(self, *inputs: Any) -> torch.Tensor:
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
    """Base class of backends: capabilities as class attributes, ``prepare`` as the one verb."""

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
    #: (module to import, pip requirement) pairs the backend needs
    requires: tuple[tuple[str, str], ...] = ()
    #: the pip command that installs what is missing
    install_hint: str = ""

    def missing_dependencies(self) -> list[str]:
        """Requirements whose module cannot be found."""
        return [req for module, req in self.requires if importlib.util.find_spec(module) is None]

    def available(self) -> bool:
        """Whether every dependency is importable."""
        return not self.missing_dependencies()

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
            "available": self.available(),
            "unavailable_reason": self.unavailable_reason(),
        }

    def require(
        self,
        *,
        purpose: str,
        dynamic_shapes: bool = False,
        training: bool = False,
        dtype: str | torch.dtype | None = None,
        kv_cache_decoding: bool = False,
        custom_kernels: bool = False,
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
        }
        lacking = [CAPABILITY_LABELS[flag] for flag, needed in wanted.items() if needed and not getattr(self, flag)]
        if dtype is not None and not self.supports_dtype(dtype):
            lacking.append(f"dtype {dtype_name(dtype)}")
        if lacking:
            able = [
                b.name
                for b in _known_backends()
                if all(getattr(b, flag, False) for flag, needed in wanted.items() if needed)
                and (dtype is None or b.supports_dtype(dtype))
            ]
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
            f"backend {self.name!r} cannot run a causal LM with a KV cache; use --backend torch-eager"
        )

    def supports_dtype(self, dtype: str | torch.dtype) -> bool:
        """Whether ``dtype`` is one the backend declares."""
        return dtype_name(dtype) in self.dtypes

    def prepare(self, model: nn.Module, example_inputs: Any, *, dtype: str | torch.dtype = "float32") -> PreparedModel:
        """Check dependencies and capabilities, then compile/export ``model`` for ``example_inputs``."""
        self.check_dependencies()
        name = dtype_name(dtype)
        if name not in self.dtypes:
            raise BackendCapabilityError(
                f"backend {self.name!r} runs {', '.join(self.dtypes)}, not {name}; choose another --dtype or backend"
            )
        if not isinstance(model, nn.Module):
            raise BackendCapabilityError(f"backend {self.name!r} prepares torch.nn.Module objects, got {type(model)}")
        torch_dtype = DTYPES[name]
        model = model.eval()
        if torch_dtype != torch.float32:
            # A copy, so the caller's fp32 model stays the parity reference.
            model = copy.deepcopy(model).to(torch_dtype)
        examples = cast_inputs(as_tuple(example_inputs), torch_dtype)
        return self._prepare(model, examples, torch_dtype)

    def _prepare(self, model: nn.Module, example_inputs: tuple[Any, ...], dtype: torch.dtype) -> PreparedModel:
        raise NotImplementedError


class TorchEagerBackend(Backend):
    """Plain PyTorch eager execution: the reference every other backend is checked against."""

    name = "torch-eager"
    description = "PyTorch eager mode (the default and the parity reference)"
    dtypes = ("float32", "bfloat16", "float16")
    dynamic_shapes = True
    training = True
    kv_cache_decoding = True
    custom_kernels = True

    def _prepare(self, model, example_inputs, dtype):
        return PreparedModel(self, lambda *xs: first_tensor(model(*xs)), example_inputs, dtype, module=model)

    def prepare_causal_lm(self, model):
        return model


class TorchCompileBackend(Backend):
    """``torch.compile`` with the inductor backend, which on CPU generates C++ (needs a C++ compiler)."""

    name = "torch-compile"
    description = "torch.compile (inductor, C++ code generation on CPU)"
    dtypes = ("float32", "bfloat16")
    dynamic_shapes = True
    training = True
    # Checked on a tiny Llama: speculative and vanilla decoding stay token-identical to eager,
    # and crossedge-quant's int8/int4/W8A8 modules compile (their kernels are aten ops).
    kv_cache_decoding = True
    custom_kernels = True

    def __init__(self, mode: str | None = None):
        self.mode = mode

    def unavailable_reason(self) -> str | None:
        import shutil

        if not any(shutil.which(cc) for cc in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            return f"backend {self.name!r} needs a C++ compiler for inductor on CPU: install g++ (apt-get install g++)"
        return super().unavailable_reason()

    def _prepare(self, model, example_inputs, dtype):
        compiled = torch.compile(model, backend="inductor", mode=self.mode)

        def run(*xs):
            return first_tensor(compiled(*xs))

        with torch.inference_mode():
            run(*example_inputs)  # compile now, so timings and errors do not hide in the first call
        return PreparedModel(self, run, example_inputs, dtype, module=model)

    def prepare_causal_lm(self, model):
        """Compile the model's forward in place with dynamic shapes; ``generate`` and the KV cache keep working.

        Compilation happens at the first call (callers warm up before timing). Every model
        compiled in one process adds guards to the same transformers forward (quant eval
        compiles one model per method); past dynamo's default limit of 8 it would silently
        run eagerly, so the limit is raised.
        """
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        model.compile(backend="inductor", mode=self.mode, dynamic=True)
        return model


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose weight is reordered once into oneDNN's blocked layout.

    PyTorch's CPU ``linear`` calls MKL's sgemm on the plain row-major weight, which for
    a handful of rows (2 to 16: verifying a few drafted tokens, a small batch) is slow:
    on the AVX-512 machine of docs/benchmarks.md two rows cost twice one row and three
    rows three times. oneDNN's matmul on a prepacked weight streams the weight once for
    all rows, so a few rows cost about what one does. Same fp32 arithmetic, different
    summation order: results agree with ``nn.Linear`` to float rounding.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        if weight.dtype not in (torch.float32, torch.bfloat16):
            raise BackendCapabilityError(f"oneDNN packed linear runs float32 or bfloat16 weights, not {weight.dtype}")
        # An opaque oneDNN tensor, so it is an attribute and not a parameter: the module is for inference only.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise BackendCapabilityError("PackedLinear is inference-only: its weight takes no gradients")
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Replace every plain ``nn.Linear`` of ``model`` (in place) by a :class:`PackedLinear`; returns how many.

    Subclasses of ``nn.Linear`` and other modules (quantized linears, convolutions,
    embeddings) are left as they are. A weight tied to an embedding is copied into
    the packed layout, so a tied output head costs its bytes twice.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count


class TorchOneDNNBackend(Backend):
    """Eager PyTorch with every ``nn.Linear`` on oneDNN prepacked weights (fast for a few rows at a time)."""

    name = "torch-onednn"
    description = "PyTorch eager, linear layers on oneDNN prepacked weights (inference)"
    dtypes = ("float32",)
    dynamic_shapes = True
    training = False
    kv_cache_decoding = True
    # Only plain nn.Linear modules are swapped; quantized modules keep their own kernels.
    custom_kernels = True

    def unavailable_reason(self) -> str | None:
        if not torch.backends.mkldnn.is_available():
            return f"backend {self.name!r} needs a PyTorch build with oneDNN (mkldnn), which this one lacks"
        return super().unavailable_reason()

    def _prepare(self, model, example_inputs, dtype):
        # A copy, so the caller's model stays the eager parity reference.
        packed = copy.deepcopy(model)
        pack_linears(packed)
        return PreparedModel(self, lambda *xs: first_tensor(packed(*xs)), example_inputs, dtype, module=packed)

    def prepare_causal_lm(self, model):
        """Pack the model's linear layers in place (it can no longer be trained or saved as it was)."""
        self.check_dependencies()
        pack_linears(model)
        return model


class OnnxRuntimeBackend(Backend):
    """Export with ``torch.onnx.export`` and run with an ONNX Runtime ``InferenceSession`` on CPU."""

    name = "onnxruntime"
    description = "torch.onnx.export + ONNX Runtime CPUExecutionProvider"
    dtypes = ("float32",)
    dynamic_shapes = False
    training = False
    requires = (("onnxruntime", "onnxruntime"), ("onnx", "onnx"), ("onnxscript", "onnxscript"))
    install_hint = "pip install 'crossedge-ondevice[onnx]'"

    def __init__(self, workdir: Path | str | None = None, threads: int | None = None, dynamo: bool = True):
        self.workdir = Path(workdir) if workdir else None
        self.threads = threads
        # The TorchScript exporter (dynamo=False) is ~50x faster to export small CNNs; the latency
        # study uses it to export hundreds of sub-networks. The dynamo exporter is the default.
        self.dynamo = dynamo

    def export(self, model: nn.Module, example_inputs: tuple[Any, ...], path: Path) -> Path:
        """Write ``model`` as ONNX at ``path`` (the dynamo exporter, onnxscript ops)."""
        import warnings

        names = [f"input_{i}" for i in range(len(example_inputs))]
        # The exporter prints its progress on stdout, which would corrupt --json output on the terminal.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model, example_inputs, str(path), input_names=names, output_names=["output"], dynamo=self.dynamo
                )
            except Exception as exc:
                raise BackendCapabilityError(
                    f"torch.onnx.export could not export {type(model).__name__}: {type(exc).__name__}: {exc}"
                ) from exc
        return path

    def _prepare(self, model, example_inputs, dtype):
        import onnxruntime as ort

        if not all(isinstance(t, torch.Tensor) for t in example_inputs):
            raise BackendCapabilityError(f"backend {self.name!r} takes tensor inputs only")
        folder = self.workdir or Path(tempfile.mkdtemp(prefix="crossedge-onnx-"))
        folder.mkdir(parents=True, exist_ok=True)
        path = self.export(model, example_inputs, folder / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_names = [i.name for i in session.get_inputs()]

        def run(*xs):
            # The exporter drops inputs the graph does not use; feed only the ones it kept.
            feed = {
                name: x.detach().cpu().numpy()
                for name, x in zip([f"input_{i}" for i in range(len(xs))], xs, strict=True)
                if name in input_names
            }
            return torch.from_numpy(session.run(None, feed)[0])

        return PreparedModel(self, run, example_inputs, dtype, artifact=path)


class ExecuTorchBackend(Backend):
    """``torch.export`` lowered to XNNPACK, written as a ``.pte`` program and run by the ExecuTorch runtime."""

    name = "executorch"
    description = "torch.export -> ExecuTorch (XNNPACK delegate) .pte, run by executorch.runtime"
    dtypes = ("float32",)
    dynamic_shapes = False
    training = False
    requires = (("executorch", "executorch"),)
    install_hint = "pip install 'crossedge-ondevice[executorch]' (its wheel must match the installed torch)"

    def __init__(self, workdir: Path | str | None = None):
        self.workdir = Path(workdir) if workdir else None

    def _prepare(self, model, example_inputs, dtype):
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            from executorch.runtime import Runtime
        except ImportError as exc:  # a wheel built against another torch fails here, not at find_spec
            raise BackendUnavailableError(
                f"executorch is installed but does not import ({exc}); install the executorch wheel built for "
                f"torch {torch.__version__}: {self.install_hint}"
            ) from exc
        try:
            exported = torch.export.export(model, example_inputs)
            program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as exc:
            raise BackendCapabilityError(
                f"ExecuTorch could not lower {type(model).__name__}: {type(exc).__name__}: {exc}"
            ) from exc
        folder = self.workdir or Path(tempfile.mkdtemp(prefix="crossedge-executorch-"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.pte"
        path.write_bytes(program.buffer)
        method = Runtime.get().load_program(path).load_method("forward")

        def run(*xs):
            return method.execute([x.contiguous() for x in xs])[0]

        return PreparedModel(self, run, example_inputs, dtype, artifact=path)


BUILTIN_BACKENDS: tuple[type[Backend], ...] = (
    TorchEagerBackend,
    TorchCompileBackend,
    TorchOneDNNBackend,
    OnnxRuntimeBackend,
    ExecuTorchBackend,
)

DEFAULT_BACKEND = "torch-eager"

#: what ``require`` calls each capability flag in its messages
CAPABILITY_LABELS = {
    "dynamic_shapes": "dynamic input shapes",
    "training": "training (gradients)",
    "kv_cache_decoding": "decoding a causal LM with a mutable KV cache (incremental steps)",
    "custom_kernels": "modules with custom (quantized int8/int4) kernels",
}

#: dynamo's recompile limit while causal LMs are compiled (see TorchCompileBackend.prepare_causal_lm)
RECOMPILE_LIMIT = 64


def _known_backends() -> list[Backend]:
    """Registered backends (third-party ones included), or the built-ins when none are registered; default first."""
    registered = [e.obj for e in get_registry("backend").entries() if isinstance(e.obj, Backend)]
    return sorted(registered or [cls() for cls in BUILTIN_BACKENDS], key=lambda b: b.name != DEFAULT_BACKEND)


def get_backend(name: str = DEFAULT_BACKEND) -> Backend:
    """The registered backend called ``name`` (unknown names get close matches in the error)."""
    return get_registry("backend").get(name)


def prepare(
    model: nn.Module, example_inputs: Any, *, backend: str | Backend = DEFAULT_BACKEND, dtype: str = "float32"
) -> PreparedModel:
    """Prepare ``model`` with a backend given by name or object."""
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    return chosen.prepare(model, example_inputs, dtype=dtype)


def max_abs_diff(prepared: Callable[..., torch.Tensor], reference: nn.Module, inputs: Any) -> float:
    """Largest absolute difference between a prepared model and the eager fp32 model on ``inputs``."""
    inputs = as_tuple(inputs)
    with torch.inference_mode():
        expected = first_tensor(reference(*inputs)).float()
        got = prepared(*inputs).float()
    if got.shape != expected.shape:
        raise CrossedgeError(f"prepared model returned shape {tuple(got.shape)}, eager {tuple(expected.shape)}")
    return float((got - expected).abs().max())
