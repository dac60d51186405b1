"""The per-keystroke latency budget: measure what each beam width costs, then pick the widest that fits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from crossedge.core import CrossedgeError

from .decoder import BeamDecoder
from .noise import TapSimulator


@dataclass(frozen=True)
class KeystrokeCost:
    """Measured decode time per keystroke at one beam width (seconds)."""

    beam: int
    median_s: float
    p90_s: float
    keystrokes: int

    def to_row(self) -> dict:
        """Plain-dict form in milliseconds."""
        return {
            "beam": self.beam,
            "median_ms": 1e3 * self.median_s,
            "p90_ms": 1e3 * self.p90_s,
            "keystrokes": self.keystrokes,
        }


def measure_keystroke_costs(
    make_decoder: Callable[[int], BeamDecoder],
    messages: Sequence[Sequence[str]],
    simulator: Callable[[], TapSimulator],
    widths: Sequence[int],
    *,
    k: int = 3,
) -> list[KeystrokeCost]:
    """Type ``messages`` (calibration text, not the test text) at every beam width and time each keystroke."""
    from .evaluation import type_messages

    costs = []
    for width in widths:
        result = type_messages(make_decoder(int(width)), messages, simulator(), k=k)
        costs.append(KeystrokeCost(int(width), result.latency_median_s, result.latency_p90_s, len(result.latencies)))
    return costs


def choose_beam(
    costs: Sequence[KeystrokeCost] | Mapping[int, float], budget_s: float, *, statistic: str = "p90"
) -> int:
    """The widest beam whose measured cost per keystroke is within ``budget_s``.

    ``costs`` are :class:`KeystrokeCost` (``statistic`` picks ``p90`` or ``median``) or a mapping
    width -> seconds. Widest-that-fits is monotone in the budget even where measured costs are not
    monotone in the width: a larger budget only adds widths that fit.
    """
    if budget_s <= 0:
        raise CrossedgeError(f"latency budget must be positive, got {budget_s} s")
    if isinstance(costs, Mapping):
        table = {int(w): float(s) for w, s in costs.items()}
    else:
        if statistic not in ("p90", "median"):
            raise CrossedgeError(f"statistic must be 'p90' or 'median', got {statistic!r}")
        table = {c.beam: (c.p90_s if statistic == "p90" else c.median_s) for c in costs}
    if not table:
        raise CrossedgeError("no beam widths were measured; give at least one width")
    fitting = [w for w, s in table.items() if s <= budget_s]
    if not fitting:
        narrow = min(table)
        raise CrossedgeError(
            f"no beam width fits {1e3 * budget_s:.3g} ms per keystroke (beam {narrow} takes "
            f"{1e3 * table[narrow]:.3g} ms); raise the budget or use a smaller character model"
        )
    return max(fitting)


def cost_table(costs: Sequence[KeystrokeCost]) -> list[dict]:
    """Rows for a terminal table or JSON."""
    return [c.to_row() for c in costs]
