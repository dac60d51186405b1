"""The config base every built-in method extends: shared fields, validation helpers, spec labels.

Each method's own config dataclass lives beside the method (``methods/rtn.py`` holds
``RTNConfig`` ...); the one registry of methods is core's quantizer registry, keyed by
method name, so a config dict or spec is read by looking its method up there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from crossedge.core.contracts.quantizer import (
    CONFIG_VERSION,
    QuantizerConfig,
    QuantizerConfigError,
    parse_config_spec,
)

__all__ = [
    "ACT_DTYPES",
    "ACT_GRANULARITIES",
    "CONFIG_VERSION",
    "GRANULARITIES",
    "GROUP_SIZES",
    "KernelTiming",
    "MAX_ROWS",
    "QuantConfig",
    "QuantConfigError",
    "WEIGHT_GRANULARITIES",
    "check",
    "check_weight",
    "config_from_dict",
    "parse_spec",
    "spec_label",
]

GRANULARITIES = ("per_tensor", "per_channel", "per_token", "per_group")
GROUP_SIZES = (32, 64, 128)
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
ACT_GRANULARITIES = ("per_tensor", "per_token")
ACT_DTYPES = ("bfloat16", "float32")

#: A quant config error is core's quantizer-config error (one class, caught the same everywhere).
QuantConfigError = QuantizerConfigError


def check(condition: bool, message: str) -> None:
    """Raise :class:`QuantConfigError` with ``message`` unless ``condition``."""
    if not condition:
        raise QuantConfigError(message)


@dataclass(kw_only=True)
class QuantConfig(QuantizerConfig):
    """Settings shared by every built-in method: which modules to leave alone and which path to run.

    ``skip`` holds fnmatch patterns of module names kept in floating point;
    ``keep_lm_head`` keeps the output projection (and so tied input embeddings)
    unquantized; with ``keep_lm_head=False``, ``lm_head_int8`` quantizes the head as
    weight-only int8 whatever the method (a tied input embedding then shares its
    int8 rows); ``fake`` runs the fake-quant research path (dequantized float
    weights, simulated activation rounding) instead of the integer kernels.
    """

    skip: list[str] = field(default_factory=list)
    keep_lm_head: bool = True
    lm_head_int8: bool = False
    fake: bool = False

    def __post_init__(self) -> None:
        # ``|`` separated patterns are the older spelling of a skip list; ``+`` is the spec grammar's.
        self.skip = [p for entry in self.skip for p in str(entry).split("|") if p]
        check(
            not (self.lm_head_int8 and self.keep_lm_head),
            "lm_head_int8=true quantizes the LM head: also set keep_lm_head=false",
        )
        super().__post_init__()

    def nominal_bits(self) -> int:
        """Nominal weight bit width, for tables."""
        return int(getattr(self, "bits", 16))


#: The most rows a kernel is timed at (an encoder batch of 32 sequences of 256 tokens).
MAX_ROWS = 8192


@dataclass(kw_only=True)
class KernelTiming(QuantConfig):
    """Fields of the methods that time candidate kernels on this machine and keep the choice."""

    #: Row counts timed: a one-token decoding step and a verification block (a reranker's batch
    #: sends thousands of rows through each linear, and crossedge-retrieval times at those).
    rows: list[int] = field(default_factory=lambda: [1, 4])
    repeats: int = 15
    #: Time the candidates again instead of reading this machine's earlier choice.
    remeasure: bool = False

    def validate(self) -> None:
        self.rows = [int(m) for m in self.rows]
        in_range = bool(self.rows) and all(1 <= m <= MAX_ROWS for m in self.rows)
        check(in_range, f"rows must be 1..{MAX_ROWS}, got {self.rows}")
        check(1 <= self.repeats <= 1000, f"repeats must be 1..1000, got {self.repeats}")


def config_from_dict(data: dict[str, Any]) -> QuantizerConfig:
    """Rebuild any registered method's config from its dict form (the method is looked up in the registry)."""
    return QuantizerConfig.from_dict(data)


def parse_spec(spec: str) -> QuantizerConfig:
    """Turn ``"gptq:bits=4,group_size=128,act_order=true"`` into the registered method's config object.

    Lists are written with ``+``: ``mixed:bit_choices=4+8``, ``rtn:skip=*.mlp.down_proj+*.0.*``.
    """
    return parse_config_spec(spec)


def spec_label(config: QuantizerConfig) -> str:
    """A short label for tables: the method plus the fields that differ from its defaults."""
    default = type(config)()
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name != "version" and value != getattr(default, f.name):
            shown = "+".join(str(v) for v in value) if isinstance(value, list) else str(value).lower()
            parts.append(f"{f.name}={shown}")
    return config.method + (":" + ",".join(parts) if parts else "")


def check_weight(bits: int, granularity: str, group_size: int) -> None:
    """Refuse weight settings no kernel takes."""
    check(bits in (4, 8), f"weight bits must be 4 or 8, got {bits}")
    check(
        granularity in WEIGHT_GRANULARITIES,
        f"weight granularity must be one of {', '.join(WEIGHT_GRANULARITIES)}, got {granularity!r}",
    )
    check(group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {group_size}")
