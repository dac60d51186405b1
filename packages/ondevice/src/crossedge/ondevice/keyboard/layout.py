"""A keyboard layout: key centres in key-width units and the spatial likelihood of a tap."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crossedge.core import CrossedgeError

#: The 26 letters the keyboard types, in the index order every array in this package uses.
ALPHABET = "abcdefghijklmnopqrstuvwxyz"

#: QWERTY letter rows with each row's horizontal offset in key widths (the stagger of a phone keyboard).
QWERTY_ROWS: tuple[tuple[str, float], ...] = (("qwertyuiop", 0.0), ("asdfghjkl", 0.25), ("zxcvbnm", 0.75))


@dataclass(frozen=True)
class KeyboardLayout:
    """Letter keys as centres (x, y) in key-width units; a key is 1 wide and 1 tall."""

    rows: tuple[tuple[str, float], ...] = QWERTY_ROWS
    centres: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = {}
        for row, (keys, offset) in enumerate(self.rows):
            for col, key in enumerate(keys):
                points[key] = (offset + col + 0.5, row + 0.5)
        missing = sorted(set(ALPHABET) - set(points))
        if missing:
            raise CrossedgeError(f"layout has no key for {''.join(missing)!r}; every letter a-z needs one")
        object.__setattr__(self, "centres", np.array([points[c] for c in ALPHABET], dtype=np.float64))

    @property
    def area(self) -> float:
        """Area of the bounding box of the keys, in key widths squared (for a uniform stray-tap density)."""
        width = max(offset + len(keys) for keys, offset in self.rows) - min(offset for _, offset in self.rows)
        return float(width * len(self.rows))

    def centre(self, char: str) -> np.ndarray:
        """The (x, y) centre of one letter's key."""
        return self.centres[char_index(char)]

    def nearest_key(self, point: np.ndarray) -> str:
        """The letter whose key centre is closest to ``point``."""
        return ALPHABET[int(np.argmin(((self.centres - point) ** 2).sum(axis=1)))]

    def log_likelihood(self, point: np.ndarray, sigma: float) -> np.ndarray:
        """log N(point; centre_c, sigma^2 I) for every letter c, shape (26,)."""
        d2 = ((self.centres - np.asarray(point, dtype=np.float64)) ** 2).sum(axis=1)
        return -d2 / (2 * sigma * sigma) - math.log(2 * math.pi * sigma * sigma)


def char_index(char: str) -> int:
    """Index of a letter in :data:`ALPHABET`."""
    index = ALPHABET.find(char)
    if index < 0 or len(char) != 1:
        raise CrossedgeError(f"{char!r} is not a letter a-z; the keyboard types lowercase letters only")
    return index


QWERTY = KeyboardLayout()
