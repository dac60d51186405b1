"""The versioned config of 4-bit CNN training: a small dataclass with a strict dict form."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from crossedge.core.errors import CrossedgeError

#: The dict-form version :class:`FourBitTrainingConfig` reads and writes.
TRAINING_CONFIG_VERSION = 1
WEIGHT_BITS = (2, 3, 4)
ACT_BITS = (0, 4)


class TrainingConfigError(CrossedgeError):
    """A 4-bit training config has an unknown key, a wrong version or a value out of range."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TrainingConfigError(message)


@dataclass(kw_only=True)
class FourBitTrainingConfig:
    """How a small CNN is trained from scratch with quantized weights (and activations).

    ``bits`` weight bits and ``levels`` the symmetric weight levels (``2**bits - 1``:
    15 levels -7..7 at 4 bits); ``act_bits`` 4 quantizes every hidden activation to the
    unsigned codes 0..15 over ``[0, act_max]`` (0 keeps them in float); ``width`` is the
    first convolution's channel count (the others use 2x and 4x). Adam with ``lr``, a
    cosine schedule over ``epochs`` and ``weight_decay``; ``seed`` fixes the
    initialization and the batch order.
    """

    config_version: ClassVar[int] = TRAINING_CONFIG_VERSION

    version: int = TRAINING_CONFIG_VERSION
    bits: int = 4
    levels: int = 15
    act_bits: int = 4
    act_max: float = 3.0
    width: int = 16
    epochs: int = 15
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            wanted = (int, float) if f.type == "float" else int
            _check(
                isinstance(value, wanted) and not isinstance(value, bool),
                f"{f.name} must be a{'' if f.type == 'float' else 'n'} {f.type}, got {value!r}",
            )
        _check(
            self.version == self.config_version,
            f"FourBitTrainingConfig version {self.version} is not supported: this release reads version "
            f"{self.config_version}; re-create the config with this crossedge-quant",
        )
        _check(self.bits in WEIGHT_BITS, f"bits must be one of {WEIGHT_BITS}, got {self.bits}")
        _check(
            self.levels == 2**self.bits - 1,
            f"levels must be 2**bits - 1 = {2**self.bits - 1} symmetric levels for bits={self.bits}, got {self.levels}",
        )
        _check(self.act_bits in ACT_BITS, f"act_bits must be one of {ACT_BITS} (0 = float), got {self.act_bits}")
        _check(self.act_max > 0, f"act_max must be positive, got {self.act_max}")
        _check(1 <= self.width <= 256, f"width must be 1..256 channels, got {self.width}")
        _check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        _check(self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be non-negative, got {self.weight_decay}")
        _check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def qmax(self) -> int:
        """The largest weight code: codes run -qmax..qmax (7 at 4 bits)."""
        return (self.levels - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, ``version`` first."""
        return dataclasses.asdict(self)

    @classmethod
    def option_names(cls) -> list[str]:
        """The options a user may set (every field except ``version``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "version"]

    @classmethod
    def from_dict(cls, data: Any) -> FourBitTrainingConfig:
        """Rebuild a config from its dict form; a missing version and unknown keys are refused."""
        if not isinstance(data, dict):
            raise TrainingConfigError(f"a 4-bit training config must be a dict, got {type(data).__name__}")
        _check("version" in data, f"4-bit training config has no 'version' field: {data!r}; crossedge did not write it")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        _check(
            not unknown,
            f"FourBitTrainingConfig has no option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(sorted(cls.option_names()))}",
        )
        try:
            return cls(**data)
        except TypeError as exc:  # pragma: no cover - every key is a known field by now
            raise TrainingConfigError(f"bad FourBitTrainingConfig fields: {exc}") from exc
