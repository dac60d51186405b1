"""``int8`` and ``int4``: the user picks the weight width, timing on this machine picks the kernel.

Which integer kernel is fastest depends on the CPU: on an AVX2 CPU without VNNI, W8A8
through ``torch._int_mm`` decoded slower than fp32 while weight-only int8 was faster; on a
VNNI CPU W8A8 won some shapes. So each distinct layer shape is timed with every candidate
kernel built from one of its real layers, at the row counts decoding uses (one token, and a
speculative verification block), and the candidate with the least total time is used for
every layer of that shape. Choices are kept on disk per machine, thread count and torch
build (:mod:`crossedge.core.measurements`), so a model quantized twice on one machine gets
the same kernels, and so the same outputs.

``int4`` puts every layer the int4 kernel takes (``out_features`` divisible by 16) on one of
the int4 candidates, and the rest on the fastest int8 kernel. Both quantize the LM head
(``keep_lm_head=false`` by default: in float it is the largest matmul of a small model's
step) and put it on an int8 kernel, whose rows a tied input embedding then shares. RTN
rounding throughout: for Hessian-compensated int4 use ``gptq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..api import Quantizer, Replacements, output_head_names
from ..config import GROUP_SIZES, KernelTiming, QuantConfig, check
from ..modules import Int4WeightLinear, Int8DynamicLinear, Int8WeightLinear, int_mm_is_exact
from .common import int4_supported, time_kernels
from .rtn import RTNConfig, rtn_module
from .w8a8 import W8A8Config, w8a8_module

#: Candidate kernels by name: the width they store and how one layer is built on them.
INT8_KERNELS = ("int8-weight-bf16", "int8-weight-fp32", "w8a8")
INT4_KERNELS = ("int4-bf16", "int4-fp32")


def build_on(kernel: str, linear: nn.Linear, group_size: int) -> nn.Module:
    """``linear`` quantized by round-to-nearest onto the named candidate kernel."""
    if kernel == "w8a8":
        module = w8a8_module(linear, W8A8Config())
        # Where torch._int_mm is not exact (no VNNI) the same W8A8 sums run exactly in float32.
        module.matmul = "int_mm" if int_mm_is_exact() else "fp32-codes"
        return module
    act_dtype = "bfloat16" if kernel.endswith("bf16") else "float32"
    bits = 4 if kernel.startswith("int4") else 8
    return rtn_module(linear, RTNConfig(bits=bits, group_size=group_size, act_dtype=act_dtype))


@dataclass(kw_only=True)
class Int8Config(KernelTiming):
    """Weight-only int8 or W8A8, whichever this machine runs fastest, per layer shape."""

    method: ClassVar[str] = "int8"
    #: The kernels this width may choose from.
    candidates: ClassVar[tuple[str, ...]] = INT8_KERNELS

    #: Unlike the methods, the presets quantize the head (onto int8, which a tied embedding shares).
    keep_lm_head: bool = False
    #: ``auto`` times the candidates; a candidate's name uses it for every layer.
    kernel: str = "auto"

    def nominal_bits(self) -> int:
        return 8

    def validate(self) -> None:
        names = ("auto", *self.candidates)
        check(self.kernel in names, f"{self.method} kernel must be one of {', '.join(names)}, got {self.kernel!r}")
        super().validate()
        check(not self.fake, f"{self.method} chooses integer kernels; for the fake-quant path use rtn:fake=true")


@dataclass(kw_only=True)
class Int4Config(Int8Config):
    """Int4 weights in groups on the fastest int4 kernel; layers int4 cannot take go to the fastest int8 kernel."""

    method: ClassVar[str] = "int4"
    candidates: ClassVar[tuple[str, ...]] = INT4_KERNELS

    group_size: int = 64

    def nominal_bits(self) -> int:
        return 4

    def validate(self) -> None:
        super().validate()
        check(self.group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {self.group_size}")


class Int8Quantizer(Quantizer):
    """Round-to-nearest int8 onto the kernel timed fastest here for each layer shape."""

    name = "int8"
    description = "int8 weights on the kernel timed fastest on this machine (weight-only bf16/fp32 or W8A8)"
    config_class: ClassVar[type[QuantConfig]] = Int8Config
    produces = (Int8WeightLinear, Int8DynamicLinear)

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, Int8Config)
        group_size = getattr(config, "group_size", 128)
        heads = output_head_names(model)
        groups: dict[tuple[int, int, bool, bool], list[str]] = {}
        for name, linear in targets.items():
            shape = (linear.out_features, linear.in_features, linear.bias is not None, name in heads)
            groups.setdefault(shape, []).append(name)
        out: dict[str, nn.Module] = {}
        chosen: dict[str, dict[str, Any]] = {}
        for (out_f, in_f, bias, head), names in groups.items():
            first = targets[names[0]]
            # int4 rows cannot be shared with a tied input embedding, and the int4 kernel needs out % 16 == 0.
            candidates = config.candidates if int4_supported(first) and not head else INT8_KERNELS
            if not int_mm_is_exact():
                # W8A8 would be a float32 matmul plus rounding the activations: never faster than these.
                candidates = tuple(c for c in candidates if c != "w8a8")
            if config.kernel != "auto" and config.kernel in candidates:
                choice = {"kernel": config.kernel, "ms": {}}
            else:
                choice = self._choose(first, candidates, config, group_size)
            label = f"{out_f}x{in_f}{'+bias' if bias else ''}{' (head)' if head else ''}"
            chosen[label] = {**choice, "layers": len(names)}
            for name in names:
                out[name] = build_on(choice["kernel"], targets[name], group_size)
        return Replacements(out, {"kernels": chosen})

    @staticmethod
    def _choose(linear: nn.Linear, candidates: tuple[str, ...], config: Int8Config, group_size: int) -> dict[str, Any]:
        """The fastest candidate for ``linear``'s shape: this machine's stored choice, else timed now."""
        from crossedge.core.measurements import MeasurementCache

        key = {
            "shape": [linear.out_features, linear.in_features],
            "bias": linear.bias is not None,
            "candidates": list(candidates),
            "rows": config.rows,
            "repeats": config.repeats,
            "group_size": group_size if any(c.startswith("int4") for c in candidates) else None,
        }

        def measure() -> dict[str, Any]:
            modules = {kernel: build_on(kernel, linear, group_size) for kernel in candidates}
            ms = time_kernels(modules, linear.in_features, config.rows, config.repeats)
            return {"kernel": min(ms, key=ms.__getitem__), "ms": {k: round(v, 5) for k, v in ms.items()}}

        return MeasurementCache("kernels").get_or_measure(key, measure, again=config.remeasure)


class Int4Quantizer(Int8Quantizer):
    """Round-to-nearest int4 groups onto the fastest int4 kernel (int8 where int4 cannot go)."""

    name = "int4"
    description = "int4 weight groups on the int4 kernel timed fastest here; the fastest int8 kernel elsewhere"
    config_class: ClassVar[type[QuantConfig]] = Int4Config
    produces = (Int4WeightLinear, Int8WeightLinear, Int8DynamicLinear)
