"""Built-in text corpora, read from files every Python and Debian install has."""

from __future__ import annotations

from pathlib import Path

from crossedge.core.datasets import Document, TextCorpus, read_text_files
from crossedge.core.hookspecs import hookimpl

LICENSES_DIR = Path("/usr/share/common-licenses")


def _pydoc_topics() -> list[Document]:
    from pydoc_data.topics import topics

    return [
        Document(f"pydoc-topics/{key}", text, f"pydoc_data.topics[{key!r}]") for key, text in sorted(topics.items())
    ]


def _licenses() -> list[Document]:
    if not LICENSES_DIR.is_dir():
        return []
    return read_text_files(sorted(p for p in LICENSES_DIR.iterdir() if p.is_file()), "common-licenses")


PYDOC_TOPICS = TextCorpus(
    "pydoc-topics",
    _pydoc_topics,
    "Python language reference topics shipped with the interpreter (pydoc_data.topics)",
)
COMMON_LICENSES = TextCorpus(
    "common-licenses",
    _licenses,
    "License texts under /usr/share/common-licenses (Debian-based systems)",
)


@hookimpl
def register_datasets(register):
    register(PYDOC_TOPICS)
    register(COMMON_LICENSES)
