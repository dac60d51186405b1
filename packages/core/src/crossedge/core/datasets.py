"""Datasets built at run time from files already on the machine."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CrossedgeError, CrossedgeWarning


@dataclass(frozen=True)
class Document:
    """One text with a stable id and where it came from."""

    id: str
    text: str
    origin: str


class MissingSourceWarning(CrossedgeWarning):
    """A source file a dataset recipe names is not on this machine; it is skipped."""


class Dataset:
    """Base class of registered datasets: a name and a list of documents."""

    name: str = ""
    description: str = ""

    def documents(self) -> list[Document]:
        """All documents, in a stable order."""
        raise NotImplementedError


class TextCorpus(Dataset):
    """Documents produced by a loader function; the loader reads local files at run time."""

    def __init__(self, name: str, loader: Callable[[], Iterable[Document]], description: str = ""):
        self.name = name
        self.description = description
        self._loader = loader
        self._documents: list[Document] | None = None

    def documents(self) -> list[Document]:
        if self._documents is None:
            docs = [d for d in self._loader() if d.text.strip()]
            if not docs:
                raise CrossedgeError(f"dataset {self.name!r} found no source text on this machine")
            self._documents = docs
        return self._documents


def read_text_files(paths: Sequence[Path], prefix: str) -> list[Document]:
    """Read files into documents; a missing file is skipped with a warning that names it."""
    docs = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            warnings.warn(f"{path} is missing; skipping it", MissingSourceWarning, stacklevel=2)
            continue
        docs.append(Document(f"{prefix}/{path.name}", text, str(path)))
    return docs


def split_documents(docs: Sequence[Document], fraction: float, salt: str = "") -> tuple[list[Document], list[Document]]:
    """Split by a hash of each id into (first, second) with about ``fraction`` in the first.

    Hash-based rather than random so the split is stable when documents are
    added or missing, and the two parts never share a document.
    """
    if not 0.0 < fraction < 1.0:
        raise CrossedgeError(f"split fraction must be between 0 and 1, got {fraction}")
    first, second = [], []
    for doc in docs:
        bucket = int(hashlib.sha256((salt + doc.id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (first if bucket < fraction else second).append(doc)
    return first, second


def get_dataset(name: str) -> Dataset:
    """Look up a registered dataset by name or alias."""
    from .registry import get_registry

    return get_registry("dataset").get(name)
