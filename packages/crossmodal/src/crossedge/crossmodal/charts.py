"""PNG charts of the package's benchmarks and audits, drawn with matplotlib's file-only backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossedge.core.errors import CrossedgeError


class ChartError(CrossedgeError, RuntimeError):
    """A chart could not be drawn (matplotlib missing)."""


@contextlib.contextmanager
def chart(
    path: str | Path, figsize: tuple[float, float], rows: int = 1, cols: int = 1, dpi: int = 120, **subplots: Any
) -> Iterator[Any]:
    """Yield the axes of a new figure (one, or an array for ``rows`` x ``cols``); on a clean exit the
    figure is laid out and written to ``path`` as PNG. The figure is closed either way."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ChartError(
            "charts need matplotlib, which is not installed; pip install 'crossedge-crossmodal[plot]'"
        ) from exc
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=figsize, **subplots)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(Path(path), dpi=dpi)
    finally:
        plt.close(fig)
