"""Typed, versioned quantization configs that round-trip through plain dicts and JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from crossedge.core.errors import CrossedgeError

#: Version of the config dict format written by :meth:`QuantConfig.to_dict`.
CONFIG_VERSION = 1

GRANULARITIES = ("per_tensor", "per_channel", "per_token", "per_group")
GROUP_SIZES = (32, 64, 128)
WEIGHT_GRANULARITIES = ("per_tensor", "per_channel", "per_group")
ACT_GRANULARITIES = ("per_tensor", "per_token")
ACT_DTYPES = ("bfloat16", "float32")


class QuantConfigError(CrossedgeError):
    """A quantization config or method spec is malformed, or from an unsupported version."""


_CONFIG_CLASSES: dict[str, type[QuantConfig]] = {}


def config_class(cls: type[QuantConfig]) -> type[QuantConfig]:
    """Class decorator: make ``cls`` findable by its ``method`` in :func:`config_from_dict`."""
    if not cls.method:
        raise QuantConfigError(f"{cls.__name__} needs a non-empty class attribute 'method'")
    _CONFIG_CLASSES[cls.method] = cls
    return cls


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise QuantConfigError(message)


@dataclass(kw_only=True)
class QuantConfig:
    """Settings shared by every method: which modules to leave alone and which path to run.

    ``skip`` holds fnmatch patterns of module names kept in floating point;
    ``keep_lm_head`` keeps the output projection (and so tied input embeddings)
    unquantized; with ``keep_lm_head=False``, ``lm_head_int8`` quantizes the head as
    weight-only int8 whatever the method (a tied input embedding then shares its
    int8 rows); ``fake`` runs the fake-quant research path (dequantized float
    weights, simulated activation rounding) instead of the integer kernels.
    """

    method: ClassVar[str] = ""

    version: int = CONFIG_VERSION
    skip: list[str] = field(default_factory=list)
    keep_lm_head: bool = True
    lm_head_int8: bool = False
    fake: bool = False

    def __post_init__(self) -> None:
        _check(
            self.version == CONFIG_VERSION,
            f"{type(self).__name__} version {self.version} is not supported: this crossedge-quant reads version "
            f"{CONFIG_VERSION}; upgrade crossedge-quant or re-create the config",
        )
        self.skip = list(self.skip)
        _check(
            not (self.lm_head_int8 and self.keep_lm_head),
            "lm_head_int8=true quantizes the LM head: also set keep_lm_head=false",
        )
        self.validate()

    def validate(self) -> None:
        """Raise :class:`QuantConfigError` when a field is out of range."""

    def nominal_bits(self) -> int:
        """Nominal weight bit width, for tables."""
        return int(getattr(self, "bits", 16))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with ``method`` and ``version`` first."""
        data = {"method": self.method, "version": self.version}
        for f in dataclasses.fields(self):
            if f.name != "version":
                value = getattr(self, f.name)
                data[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return data

    def to_json(self) -> str:
        """The dict form as JSON text."""
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """Rebuild a config; unknown versions, methods and keys are refused."""
        return config_from_dict(data, expect=cls)


def config_from_dict(data: dict[str, Any], expect: type[QuantConfig] | None = None) -> QuantConfig:
    """Rebuild any registered config from its dict form."""
    if not isinstance(data, dict):
        raise QuantConfigError(f"a quantization config must be a dict, got {type(data).__name__}")
    data = dict(data)
    if "version" not in data:
        raise QuantConfigError(f"quantization config has no 'version' field: {data!r}; it was not written by crossedge")
    version = data.get("version")
    if version != CONFIG_VERSION:
        raise QuantConfigError(
            f"quantization config version {version!r} is not supported: this crossedge-quant reads version "
            f"{CONFIG_VERSION}; upgrade crossedge-quant to read it"
        )
    method = data.pop("method", None)
    cls = _CONFIG_CLASSES.get(method) if isinstance(method, str) else None
    if cls is None:
        raise QuantConfigError(
            f"quantization config names method {method!r}; known: {', '.join(sorted(_CONFIG_CLASSES))}"
        )
    if expect is not None and expect is not QuantConfig and not issubclass(cls, expect):
        raise QuantConfigError(f"config for method {method!r} is not a {expect.__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise QuantConfigError(
            f"{cls.__name__} has no field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(names))}"
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise QuantConfigError(f"bad {cls.__name__} fields: {exc}") from exc


def config_for(method: str, **fields: Any) -> QuantConfig:
    """Build the config of a method by name with keyword overrides."""
    return config_from_dict({"method": method, "version": CONFIG_VERSION, **fields})


def parse_value(text: str) -> Any:
    """A spec value: JSON when it parses (numbers, true/false, lists), otherwise the bare string."""
    lowered = text.strip()
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    try:
        return json.loads(lowered)
    except ValueError:
        return lowered


def parse_spec(spec: str) -> QuantConfig:
    """Turn ``"gptq:bits=4,group_size=128,act_order=true"`` into a config object.

    Lists are written with ``+``: ``mixed:bit_choices=4+8``; skip patterns with
    ``|``: ``rtn:skip=*.mlp.down_proj|*.0.*``.
    """
    spec = spec.strip()
    if not spec:
        raise QuantConfigError("empty method spec: write e.g. 'rtn:bits=8' or 'gptq:bits=4,group_size=128'")
    method, _, rest = spec.partition(":")
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise QuantConfigError(f"method spec {spec!r}: {part!r} is not KEY=VALUE")
        key = key.strip()
        if key == "skip":
            fields[key] = [p for p in value.split("|") if p]
        elif "+" in value:
            fields[key] = [parse_value(v) for v in value.split("+")]
        else:
            fields[key] = parse_value(value)
    if method.strip() not in _CONFIG_CLASSES:
        raise QuantConfigError(f"unknown quantization method {method!r}; known: {', '.join(sorted(_CONFIG_CLASSES))}")
    return config_for(method.strip(), **fields)


def spec_label(config: QuantConfig) -> str:
    """A short label for tables: the method plus the fields that differ from its defaults."""
    default = type(config)()
    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name != "version" and value != getattr(default, f.name):
            shown = "+".join(str(v) for v in value) if isinstance(value, list) else str(value).lower()
            parts.append(f"{f.name}={shown}")
    return config.method + (":" + ",".join(parts) if parts else "")


# ---------------------------------------------------------------- method configs


def _check_weight(bits: int, granularity: str, group_size: int) -> None:
    _check(bits in (4, 8), f"weight bits must be 4 or 8, got {bits}")
    _check(
        granularity in WEIGHT_GRANULARITIES,
        f"weight granularity must be one of {', '.join(WEIGHT_GRANULARITIES)}, got {granularity!r}",
    )
    _check(group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {group_size}")


@config_class
@dataclass(kw_only=True)
class RTNConfig(QuantConfig):
    """Round-to-nearest weight-only quantization (int8 or int4)."""

    method: ClassVar[str] = "rtn"

    bits: int = 8
    granularity: str = "auto"
    group_size: int = 128
    symmetric: bool | None = None
    act_dtype: str = "bfloat16"

    def validate(self) -> None:
        # "auto" picks what the kernels for that width take: one scale per output
        # channel for int8, asymmetric groups for int4.
        if self.granularity == "auto":
            self.granularity = "per_channel" if self.bits == 8 else "per_group"
        if self.symmetric is None:
            self.symmetric = self.bits == 8
        _check_weight(self.bits, self.granularity, self.group_size)
        _check(self.act_dtype in ACT_DTYPES, f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")
        if self.bits == 4 and not self.fake:
            _check(
                self.granularity == "per_group",
                "int4 weights run on the grouped int4 kernel: use granularity='per_group' "
                "(or fake=true for the research path)",
            )
        if self.bits == 8 and not self.fake:
            _check(
                self.granularity != "per_group",
                "the int8 weight kernel takes one scale per output channel: use granularity 'per_channel' or "
                "'per_tensor' (or fake=true for grouped int8)",
            )


@config_class
@dataclass(kw_only=True)
class W8A8Config(QuantConfig):
    """Int8 weights with dynamically quantized int8 activations, int8 x int8 -> int32 matmul."""

    method: ClassVar[str] = "w8a8"

    weight_granularity: str = "per_channel"
    act_granularity: str = "per_token"

    def nominal_bits(self) -> int:
        """Always 8."""
        return 8

    def validate(self) -> None:
        _check(
            self.weight_granularity in ("per_tensor", "per_channel"),
            f"w8a8 weight_granularity must be per_tensor or per_channel, got {self.weight_granularity!r}",
        )
        _check(
            self.act_granularity in ACT_GRANULARITIES,
            f"act_granularity must be one of {ACT_GRANULARITIES}, got {self.act_granularity!r}",
        )


@config_class
@dataclass(kw_only=True)
class SmoothQuantConfig(W8A8Config):
    """W8A8 after migrating activation outliers into weights: s_j = max|X_j|^alpha / max|W_j|^(1-alpha)."""

    method: ClassVar[str] = "smoothquant"

    alpha: float = 0.5

    def validate(self) -> None:
        super().validate()
        _check(0.0 <= self.alpha <= 1.0, f"smoothquant alpha must be in [0, 1], got {self.alpha}")


@config_class
@dataclass(kw_only=True)
class CrossQuantConfig(W8A8Config):
    """W8A8 with CrossQuant activation scales t_i^alpha * c_j^(1-alpha) (row and column absolute maxima)."""

    method: ClassVar[str] = "crossquant"

    alpha: float = 0.15

    def validate(self) -> None:
        super().validate()
        _check(0.0 <= self.alpha <= 1.0, f"crossquant alpha must be in [0, 1], got {self.alpha}")
        _check(self.act_granularity == "per_token", "crossquant scales activations per token (row): keep per_token")


@config_class
@dataclass(kw_only=True)
class GPTQConfig(QuantConfig):
    """GPTQ: weights quantized column by column with Hessian-based error compensation."""

    method: ClassVar[str] = "gptq"

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    act_dtype: str = "bfloat16"

    def validate(self) -> None:
        _check_weight(self.bits, "per_group", self.group_size)
        _check(0.0 < self.damp < 1.0, f"gptq damp must be in (0, 1), got {self.damp}")
        _check(self.block_size >= 1, f"gptq block_size must be positive, got {self.block_size}")
        _check(self.act_dtype in ACT_DTYPES, f"act_dtype must be one of {ACT_DTYPES}, got {self.act_dtype!r}")


@config_class
@dataclass(kw_only=True)
class MixedConfig(QuantConfig):
    """Per-layer bit widths chosen by an integer linear program under a weight-memory budget.

    The budget is ``budget_bytes`` when given, else ``budget_fraction`` of the fp32
    bytes of the layers being quantized.
    """

    method: ClassVar[str] = "mixed"

    bit_choices: list[int] = field(default_factory=lambda: [4, 8])
    group_size: int = 128
    budget_fraction: float = 0.2
    budget_bytes: int | None = None
    act_dtype: str = "bfloat16"

    def nominal_bits(self) -> int:
        """The smallest width it may choose."""
        return min(self.bit_choices)

    def validate(self) -> None:
        self.bit_choices = sorted({int(b) for b in self.bit_choices})
        _check(
            bool(self.bit_choices) and all(b in (4, 8) for b in self.bit_choices),
            f"mixed bit_choices must be drawn from 4 and 8, got {self.bit_choices}",
        )
        _check(self.group_size in GROUP_SIZES, f"group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        _check(0.0 < self.budget_fraction <= 1.0, f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        _check(
            self.budget_bytes is None or self.budget_bytes > 0,
            f"budget_bytes must be positive, got {self.budget_bytes}",
        )
