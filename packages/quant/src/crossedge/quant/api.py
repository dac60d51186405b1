"""The entry call ``quantize_(model, config, filter_fn)`` and the base class of the built-in methods."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.contracts.quantizer import Quantizer as CoreQuantizer
from crossedge.core.contracts.quantizer import QuantizerConfig, QuantizeResult, quantizer_class
from crossedge.core.errors import CrossedgeError

from .calibration import CalibrationError
from .config import QuantConfig, config_from_dict, parse_spec
from .modules import Int8Embedding, Int8WeightLinear, QuantizedLinear, shared_head_buffers

FilterFn = Callable[[nn.Module, str], bool]

#: Attribute on a quantized model holding its quantization map (see :func:`quantization_map`).
MAP_ATTRIBUTE = "crossedge_quantization"


@dataclass
class Replacements:
    """What a method's :meth:`Quantizer.replace` returns: new modules by name, and facts about the run."""

    modules: dict[str, nn.Module]
    details: dict[str, Any] = field(default_factory=dict)


class Quantizer(CoreQuantizer):
    """A built-in-style quantization method: core's contract plus the layer selection and swapping all share.

    Subclasses set ``name``, ``description``, ``config_class`` (a :class:`QuantConfig`
    dataclass defined beside the method), ``produces`` (the module classes it builds, so a
    saved folder is rebuilt through the method) and implement :meth:`replace`, which gets
    the float linear layers chosen by the filters and returns their replacements;
    :meth:`quantize` swaps them in and returns a :class:`QuantizeResult`.
    """

    config_class: ClassVar[type[QuantConfig]] = QuantConfig
    #: Module classes this method may put into a model (each with a unique ``kind``).
    produces: ClassVar[tuple[type[nn.Module], ...]] = ()

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        """Replacement modules for (some of) ``targets``, keyed by module name, and the run's details."""
        raise NotImplementedError

    @classmethod
    def module_classes(cls) -> dict[str, type[nn.Module]]:
        """kind -> class of every module a model quantized by this method may hold (the LM head and tied
        embedding modules that every method can add included)."""
        return {m.kind: m for m in (*cls.produces, Int8WeightLinear, Int8Embedding)}

    def quantize(
        self,
        model: nn.Module,
        config: QuantizerConfig,
        *,
        calibration: Iterable[Any] | None = None,
        filter_fn: FilterFn | None = None,
    ) -> QuantizeResult:
        """Quantize ``model`` in place; the result names the replaced layers and carries the details."""
        if not isinstance(config, self.config_class):
            raise CrossedgeError(f"quantizer {self.name!r} takes a {self.config_class.__name__}")
        if getattr(model, MAP_ATTRIBUTE, None) is not None:
            raise CrossedgeError("this model is already quantized; load a fresh float model to quantize it again")
        targets = select_modules(model, config, filter_fn)
        if not targets:
            raise CrossedgeError("no layer to quantize: the filters and skip list left no nn.Linear layer")
        batches = None
        if self.needs_calibration:
            if calibration is None:
                raise CalibrationError(
                    f"method {config.method!r} needs calibration data: pass calibration=<iterable of input batches>"
                )
            batches = list(calibration)
        was_training = model.training
        model.eval()
        tied_head = _tied_head(model)
        heads = output_head_names(model) if config.lm_head_int8 else set()
        head_targets = {name: targets.pop(name) for name in list(targets) if name in heads}
        found = self.replace(model, config, targets, batches) if targets else Replacements({})
        replacements = dict(found.modules)
        for name, linear in head_targets.items():
            replacements[name] = Int8WeightLinear.from_weight(
                linear.weight, linear.bias, symmetric=True, per_tensor=False, act_dtype="bfloat16"
            )
        modules_map = {}
        for name, new in replacements.items():
            model.set_submodule(name, new)
            if isinstance(new, QuantizedLinear):
                modules_map[name] = {"kind": new.kind, "spec": new.spec()}
        if tied_head is not None and tied_head in replacements:
            modules_map.update(_tie_embedding(model, tied_head))
        model.train(was_training)
        qmap: dict[str, Any] = {"config": config.to_dict(), "modules": modules_map}
        if found.details:
            qmap["details"] = found.details
        setattr(model, MAP_ATTRIBUTE, qmap)
        keep_rows_invariant(model)
        return QuantizeResult(
            model=model,
            config=config,
            modules={name: entry["kind"] for name, entry in modules_map.items()},
            details=dict(found.details),
        )

    def save(self, model: nn.Module, folder: Path | str, tokenizer: Any = None) -> Path:
        """Write safetensors and ``quantization.json`` (see :func:`crossedge.quant.save_quantized`)."""
        from .serialization import save_quantized

        return save_quantized(model, folder, tokenizer)


def get_quantizer(method: str) -> CoreQuantizer:
    """A fresh instance of the quantizer registered for a method name."""
    return quantizer_class(method)()


def as_config(config: QuantizerConfig | dict[str, Any] | str) -> QuantizerConfig:
    """Accept a config object, its dict form, or a method spec string (methods looked up in the registry)."""
    if isinstance(config, QuantizerConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, str):
        return parse_spec(config)
    raise CrossedgeError(f"expected a quantization config, dict or spec string, got {type(config).__name__}")


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the output projection (LM head) of a transformers model, if any."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        return set()
    return {name for name, module in model.named_modules() if module is head}


def default_filter(module: nn.Module, name: str) -> bool:
    """Quantize float ``nn.Linear`` layers (torchao's default shape of filter)."""
    return isinstance(module, nn.Linear) and not isinstance(module, QuantizedLinear)


def select_modules(model: nn.Module, config: QuantConfig, filter_fn: FilterFn | None = None) -> dict[str, nn.Linear]:
    """The float ``nn.Linear`` layers that ``filter_fn`` accepts, minus skipped ones and the kept LM head."""
    filter_fn = filter_fn or default_filter
    skip_names = output_head_names(model) if config.keep_lm_head else set()
    chosen = {}
    for name, module in model.named_modules():
        if not name or name in skip_names or any(fnmatch.fnmatchcase(name, p) for p in config.skip):
            continue
        # Only float nn.Linear layers are candidates; filter_fn narrows them further.
        if default_filter(module, name) and filter_fn(module, name):
            chosen[name] = module
    return chosen


def quantize_(
    model: nn.Module,
    config: QuantizerConfig | dict[str, Any] | str,
    filter_fn: FilterFn | None = None,
    *,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Quantize ``model`` in place and return it (use :func:`quantize` for the details).

    ``config`` picks the method (a config object, its dict, or a spec such as
    ``"rtn:bits=4,group_size=64"``); ``filter_fn(module, name)`` narrows the layers
    (default: every ``nn.Linear``, minus ``config.skip`` and the LM head when
    ``config.keep_lm_head``); ``calibration`` is an iterable of input batches
    (input_ids tensors for causal LMs) for methods that need statistics.
    """
    return quantize(model, config, filter_fn, calibration=calibration).model


def quantize(
    model: nn.Module,
    config: QuantizerConfig | dict[str, Any] | str,
    filter_fn: FilterFn | None = None,
    *,
    calibration: Iterable[Any] | None = None,
) -> QuantizeResult:
    """Like :func:`quantize_`, returning the :class:`QuantizeResult` (replaced layers, details)."""
    config = as_config(config)
    return get_quantizer(config.method).quantize(model, config, calibration=calibration, filter_fn=filter_fn)


def _tied_head(model: nn.Module) -> str | None:
    """The LM head's name when it shares its weight with the input embedding."""
    heads = output_head_names(model)
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if len(heads) != 1 or embedding is None:
        return None
    head = model.get_submodule(next(iter(heads)))
    return next(iter(heads)) if getattr(head, "weight", None) is getattr(embedding, "weight", False) else None


def _tie_embedding(model: nn.Module, head_name: str) -> dict[str, Any]:
    """Make the input embedding read the quantized head's int8 rows, keeping the model tied."""
    head = model.get_submodule(head_name)
    shared = shared_head_buffers(head)
    embedding = model.get_input_embeddings()
    embedding_name = next(n for n, m in model.named_modules() if m is embedding)
    if shared is None:
        warnings.warn(
            f"the tied LM head became a {type(head).__name__}, which the input embedding cannot share; "
            f"{embedding_name} stays in float and the pair is no longer tied (more bytes)",
            stacklevel=3,
        )
        return {}
    qweight, scale = shared
    extra = getattr(embedding, "embed_scale", None)
    new = Int8Embedding(
        qweight.shape[0],
        qweight.shape[1],
        head_name,
        "bfloat16" if scale.dtype == torch.bfloat16 else "float32",
        output_scale=None if extra is None else float(extra),
    )
    new.share(qweight, scale)
    model.set_submodule(embedding_name, new)
    return {embedding_name: {"kind": new.kind, "spec": new.spec()}}


def keep_rows_invariant(model: nn.Module) -> None:
    """Give a quantized transformers model row-invariant attention (see :mod:`crossedge.core.attention`).

    Quantized kernels round activations (to bf16, or to int8), which turns the ~1e-7 by which
    attention over k queries differs from attention over one into whole rounding steps; the
    logits of a verification forward would then differ from one-token decoding steps and
    speculative decoding would not reproduce the model's own greedy output. The kernels
    themselves are row-invariant (a test compares one row with a block bit for bit).
    """
    from crossedge.core.attention import use_row_invariant_attention

    if hasattr(getattr(model, "config", None), "_attn_implementation") and any(
        isinstance(m, QuantizedLinear) for m in model.modules()
    ):
        use_row_invariant_attention(model)


def relink_tied(model: nn.Module) -> None:
    """After loading, point every :class:`Int8Embedding` back at its head's buffers (one copy in memory)."""
    for module in model.modules():
        if isinstance(module, Int8Embedding):
            shared = shared_head_buffers(model.get_submodule(module.tied_to))
            if shared is not None:
                module.share(*shared)


def quantization_map(model: nn.Module) -> dict[str, Any]:
    """The config and the per-module kinds/specs of a model quantized by :func:`quantize_`."""
    found = getattr(model, MAP_ATTRIBUTE, None)
    if found is None:
        raise CrossedgeError("this model was not quantized by crossedge.quant.quantize_")
    return found


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, counting shared (tied) storage once."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += tensor.untyped_storage().nbytes()
    return total
