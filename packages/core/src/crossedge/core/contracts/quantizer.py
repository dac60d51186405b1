"""The quantizer contract: a method name, a versioned config dataclass beside it, and one verb, ``quantize``.

A quantizer is registered as a *class* (``register_quantizers(register)``), keyed by its
``name``, the method name users write in specs (``rtn:bits=4``). Its ``config_class``
is a dataclass whose fields are the method's options; configs round-trip through plain
dicts that carry ``method`` and ``version``, so a file written by a method is read back
by looking the method up in the one quantizer registry (after plugins load). ``quantize``
returns a :class:`QuantizeResult` holding what it found; nothing is left on the instance.
``save`` writes a folder that a model format registered by the same plugin loads back
through :func:`crossedge.core.sources.load_model`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CrossedgeError

#: Default version of a config's dict form; a config class may raise its own ``config_version``.
CONFIG_VERSION = 1


class QuantizerConfigError(CrossedgeError):
    """A quantization config, its dict form or a method spec is malformed or from an unsupported version."""


def _fail(condition: bool, message: str) -> None:
    if not condition:
        raise QuantizerConfigError(message)


@dataclass(kw_only=True)
class QuantizerConfig:
    """Base of every method's config: a dataclass with ``method`` (class attribute) and a ``version`` field.

    Subclasses add fields with type hints and defaults, and check ranges in ``validate``.
    """

    method: ClassVar[str] = ""
    #: The dict-form version this class reads and writes.
    config_version: ClassVar[int] = CONFIG_VERSION

    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _fail(
            self.version == self.config_version,
            f"{type(self).__name__} version {self.version} is not supported: this release reads version "
            f"{self.config_version}; upgrade the package of method {self.method!r} or re-create the config",
        )
        self.validate()

    def validate(self) -> None:
        """Raise :class:`QuantizerConfigError` when a field is out of range."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``method`` and ``version`` first."""
        data: dict[str, Any] = {"method": self.method, "version": self.version}
        for f in dataclasses.fields(self):
            if f.name != "version":
                value = getattr(self, f.name)
                data[f.name] = list(value) if isinstance(value, (list, tuple)) else value
        return data

    def to_json(self) -> str:
        """The dict form as JSON text."""
        return json.dumps(self.to_dict())

    @classmethod
    def option_names(cls) -> list[str]:
        """The options a user may set (every field except ``version``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "version"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizerConfig:
        """Rebuild a config from its dict form; unknown versions, methods and keys are refused.

        Called on the base class, the method is looked up in the quantizer registry.
        """
        if not isinstance(data, Mapping):
            raise QuantizerConfigError(f"a quantization config must be a dict, got {type(data).__name__}")
        data = dict(data)
        if "version" not in data:
            raise QuantizerConfigError(
                f"quantization config has no 'version' field: {data!r}; it was not written by crossedge"
            )
        method = data.pop("method", None)
        target = cls
        if not cls.method:
            target = config_class_for(method)
        elif method != cls.method:
            raise QuantizerConfigError(f"config for method {method!r} is not a {cls.__name__} (method {cls.method!r})")
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise QuantizerConfigError(
                f"{target.__name__} has no option(s) {', '.join(unknown)}; valid options: "
                f"{', '.join(sorted(target.option_names()))}"
            )
        try:
            return target(**data)
        except TypeError as exc:
            raise QuantizerConfigError(f"bad {target.__name__} fields: {exc}") from exc


@dataclass
class QuantizeResult:
    """What one ``quantize`` call did: the model (quantized in place), its config, the layers and the details."""

    model: Any
    config: QuantizerConfig
    #: Replaced module name -> the kind of module it became.
    modules: dict[str, str] = field(default_factory=dict)
    #: Facts about the run worth keeping (JSON-ready), e.g. a per-layer bit plan.
    details: dict[str, Any] = field(default_factory=dict)


class Quantizer:
    """A quantization method. Subclasses set ``name``, ``description``, ``config_class`` and implement the verbs."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    #: Whether ``quantize`` reads statistics from calibration batches.
    needs_calibration: ClassVar[bool] = False

    def quantize(
        self,
        model: Any,
        config: QuantizerConfig,
        *,
        calibration: Iterable[Any] | None = None,
        filter_fn: Callable[[Any, str], bool] | None = None,
    ) -> QuantizeResult:
        """Quantize ``model`` in place under ``config`` and say what was done.

        ``calibration`` is an iterable of input batches (input_ids tensors for a causal LM);
        ``filter_fn(module, name)`` narrows the layers considered.
        """
        raise NotImplementedError

    def save(self, model: Any, folder: Path | str, tokenizer: Any = None) -> Path:
        """Write the quantized model to ``folder`` so that ``crossedge.core.sources.load_model`` loads it back."""
        raise NotImplementedError


def quantizer_class(method: str) -> type[Quantizer]:
    """The registered quantizer class for a method name (close matches when unknown)."""
    from ..registry import get_registry

    return get_registry("quantizer").get(method)  # the registry refuses an instance, naming the plugin


def config_class_for(method: Any) -> type[QuantizerConfig]:
    """The config class of a registered method; a missing or unknown method is a config error."""
    from ..errors import UnknownNameError

    if not isinstance(method, str) or not method:
        raise QuantizerConfigError(f"quantization config names no method (got {method!r})")
    try:
        return quantizer_class(method).config_class
    except UnknownNameError as exc:
        raise QuantizerConfigError(f"quantization config names {exc}") from exc


# ----------------------------------------------------------------- spec strings


def parse_config_spec(spec: Any) -> QuantizerConfig:
    """Turn ``"gptq:bits=4,group_size=128"`` (or a parsed :class:`crossedge.core.specs.Spec`) into a config.

    The method is looked up in the quantizer registry (after plugins load); the options are
    bound to its config dataclass's fields by :func:`crossedge.core.specs.bind` (one grammar,
    one coercion; lists with ``+``). Every error is a ``SpecError`` naming the character.
    """
    from ..errors import UnknownNameError
    from ..specs import bind, parse_spec

    parsed = parse_spec(spec, kind="quantizer")
    try:
        cls = quantizer_class(parsed.name).config_class
    except UnknownNameError as exc:
        raise parsed.error(str(exc)) from None
    kwargs = bind(parsed, cls, kind="quantizer", exclude=("version",))
    try:
        return cls(**kwargs)
    except QuantizerConfigError as exc:
        key = next((k for k in parsed.options if k.replace("-", "_") in str(exc)), None)
        raise parsed.error(str(exc), key, at_value=key is not None) from None
