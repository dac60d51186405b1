"""Simulated touch input: Gaussian offsets around key centres, with skipped and stray taps."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from crossedge.core import CrossedgeError

from .layout import QWERTY, KeyboardLayout, char_index


@dataclass(frozen=True)
class TapNoise:
    """How a user misses: ``sigma`` (key widths) of touch offset, chance a letter is skipped or a stray tap added."""

    sigma: float = 0.45
    skip: float = 0.0
    extra: float = 0.0

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise CrossedgeError(f"tap noise sigma must be positive (key widths), got {self.sigma}")
        for name in ("skip", "extra"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise CrossedgeError(f"tap noise {name} must be a probability below 0.5, got {value}")

    def to_dict(self) -> dict[str, float]:
        """Plain-dict form."""
        return asdict(self)


class TapSimulator:
    """Seeded generator of noisy tap sequences for words typed on ``layout``."""

    def __init__(self, noise: TapNoise | None = None, layout: KeyboardLayout = QWERTY, seed: int = 0):
        self.noise = noise or TapNoise()
        self.layout = layout
        self.rng = np.random.default_rng(seed)

    def taps(self, word: str) -> np.ndarray:
        """Touch points (n, 2) for typing ``word``; n differs from len(word) when taps are skipped or added."""
        if not word:
            raise CrossedgeError("cannot simulate taps for an empty word")
        noise, rng, centres = self.noise, self.rng, self.layout.centres
        points = []
        for position, char in enumerate(word):
            centre = centres[char_index(char)]
            # never skip everything: a word is at least one tap
            skipped = noise.skip > 0 and rng.random() < noise.skip and (points or position < len(word) - 1)
            if not skipped:
                points.append(centre + rng.normal(0.0, noise.sigma, size=2))
            if noise.extra > 0 and rng.random() < noise.extra:
                # a stray touch lands on a key next to the intended one (fat finger), not anywhere
                near = np.flatnonzero(((centres - centre) ** 2).sum(axis=1) < 1.3**2)
                points.append(centres[rng.choice(near)] + rng.normal(0.0, noise.sigma, size=2))
        return np.array(points, dtype=np.float64)
