"""A decoder's verification costs t(k), kept on disk per model, backend, dtype, threads and CPU.

The cost-aware policy times a spread of verification lengths before its first draft
(:meth:`CostAwarePolicy.calibrate`). That takes a few dozen target forwards and is the same
every time one decoder runs on one machine, so the engine keeps the fastest time of each
length in :mod:`crossedge.core.measurements` under the model's structure fingerprint (its
config, module classes, tensor shapes and dtypes: quantization and backend preparation
included) and the machine's facts (CPU, flags, thread count, torch). Later runs answer the
policy's timing calls from the file; lengths it lacks are timed live and added. The policy
keeps refining its estimate from every real verification either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .errors import SpecdecError

__all__ = ["CALIBRATION_CACHE_CHOICES", "StoredVerificationCosts"]

#: ``use`` reads and extends the stored costs, ``refresh`` times every length again and replaces
#: them, ``off`` neither reads nor writes.
CALIBRATION_CACHE_CHOICES = ("use", "refresh", "off")
KIND = "verification-cost"


class StoredVerificationCosts:
    """t(k) of one decoder on this machine: read from the measurement cache, timed where missing."""

    def __init__(self, model: Any, mode: str = "use"):
        if mode not in CALIBRATION_CACHE_CHOICES:
            raise SpecdecError(f"calibration_cache must be one of {', '.join(CALIBRATION_CACHE_CHOICES)}, got {mode!r}")
        self.model = model
        self.mode = mode
        self.known: dict[int, float] = {}
        self.timed: dict[int, float] = {}
        self._store: Any = None
        self._key: dict[str, Any] | None = None

    def _open(self) -> None:
        from crossedge.core.measurements import MeasurementCache, module_fingerprint

        self._store = MeasurementCache(KIND)
        self._key = {"decoder": module_fingerprint(self.model)}
        stored = self._store.get(self._key) if self.mode == "use" else None
        if isinstance(stored, dict):
            try:
                table = {int(k): float(v) for k, v in stored.items()}
            except (TypeError, ValueError):
                table = {}
            self.known = {k: v for k, v in table.items() if math.isfinite(v) and v > 0}

    def measure(self, live: Callable[[int], float]) -> Callable[[int], float]:
        """``live`` answered from the stored costs where they have the length, else timed and recorded."""
        if self.mode == "off":
            return live
        if self._store is None:
            self._open()

        def timed(k: int) -> float:
            if k in self.known:
                return self.known[k]
            seconds = live(k)
            # Interference only adds time: keep the fastest sample of each length.
            self.timed[k] = min(seconds, self.timed.get(k, math.inf))
            return seconds

        return timed

    def save(self) -> None:
        """Write the stored costs with what was timed since :meth:`measure` (nothing when nothing was timed)."""
        if self.mode == "off" or not self.timed or self._store is None:
            return
        self.known = {**self.known, **self.timed}
        self.timed = {}
        self._store.put(self._key, {str(k): v for k, v in sorted(self.known.items())})
