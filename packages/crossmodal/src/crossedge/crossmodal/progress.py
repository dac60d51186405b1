"""Progress bars for the commands: one tqdm bar per stage of a bench, each started when its stage is."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping


@contextlib.contextmanager
def stage_bars(totals: Mapping[str, int], units: Mapping[str, str]) -> Iterator[Callable[[str, int], None]]:
    """Yield ``progress(stage, n)``: advance ``stage``'s bar by ``n`` (its total from ``totals``, its unit
    from ``units``, default "step"), opening it on the stage's first report; every bar is closed at exit."""
    from tqdm.auto import tqdm

    bars: dict = {}

    def progress(stage: str, n: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=totals[stage], desc=stage, unit=units.get(stage, "step"))
        bars[stage].update(n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()
