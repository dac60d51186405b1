"""The model-format contract: a plugin that knows how to load folders of its own on-disk layout.

Core loads plain transformers folders itself. A folder in another layout (a quantized
model written by ``crossedge quant run``, say) is claimed by the format whose
``detect`` says yes, and loaded by its ``load``, so every ``--model`` accepts it.
Formats are registered as instances (named resources, like model sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar


class ModelFormat:
    """A folder layout that one plugin loads: a name, ``detect(folder)`` and ``load(folder, ...)``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: A file whose presence marks folders of this format (used for the missing-plugin hint).
    marker: ClassVar[str | None] = None

    def detect(self, folder: Path) -> bool:
        """Whether ``folder`` is in this format (cheap: look at file names or a small JSON file)."""
        return self.marker is not None and (folder / self.marker).is_file()

    def load(self, folder: Path, *, name: str, source: Any, task: str = "causal-lm", **kwargs: Any) -> Any:
        """A :class:`crossedge.core.sources.LoadedModel` with the real weights of ``folder``; never random ones."""
        raise NotImplementedError


#: Marker file -> (what writes it, the distribution that loads it), for a clear error when no plugin claims a folder.
KNOWN_MARKERS: dict[str, tuple[str, str]] = {
    "quantization.json": ("crossedge quant run", "crossedge-quant"),
}
