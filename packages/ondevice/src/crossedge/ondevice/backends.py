"""Accelerator backends beyond eager: torch.compile, oneDNN prepacked linears, ONNX Runtime, ExecuTorch.

Each subclasses the backend contract in crossedge-core
(:class:`crossedge.core.contracts.backend.Backend`), which also defines
:class:`PreparedModel` and the capability checks; ``torch-eager`` itself is crossedge-core's
:class:`crossedge.core.backends.TorchEagerBackend`. The names below that come from core are
re-exported so existing imports keep working.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.backends import TorchEagerBackend, get_backend
from crossedge.core.contracts.backend import (
    CAPABILITY_LABELS,
    DEFAULT_BACKEND,
    Backend,
    BackendCapabilityError,
    BackendUnavailableError,
    PreparedModel,
    as_tuple,
    cast_inputs,
    dtype_name,
    first_tensor,
    max_abs_diff,
)

__all__ = [
    "BUILTIN_BACKENDS",
    "CAPABILITY_LABELS",
    "DEFAULT_BACKEND",
    "Backend",
    "BackendCapabilityError",
    "BackendUnavailableError",
    "ExecuTorchBackend",
    "OnnxRuntimeBackend",
    "PackedLinear",
    "PreparedModel",
    "TorchCompileBackend",
    "TorchEagerBackend",
    "TorchOneDNNBackend",
    "as_tuple",
    "cast_inputs",
    "dtype_name",
    "first_tensor",
    "get_backend",
    "max_abs_diff",
    "pack_linears",
    "prepare",
]


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
    module_interface = True

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

    def prepare_module(self, model):
        """Pack any module's plain linear layers in place, keeping its submodules and calls as they were."""
        return self.prepare_causal_lm(model).eval()


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


#: the backends this package registers (torch-eager is crossedge-core's own)
BUILTIN_BACKENDS: tuple[type[Backend], ...] = (
    TorchCompileBackend,
    TorchOneDNNBackend,
    OnnxRuntimeBackend,
    ExecuTorchBackend,
)

#: dynamo's recompile limit while causal LMs are compiled (see TorchCompileBackend.prepare_causal_lm)
RECOMPILE_LIMIT = 64


def prepare(
    model: nn.Module, example_inputs: Any, *, backend: str | Backend = DEFAULT_BACKEND, dtype: str = "float32"
) -> PreparedModel:
    """Prepare ``model`` with a backend given by name or object."""
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    return chosen.prepare(model, example_inputs, dtype=dtype)
