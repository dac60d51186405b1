"""Bundled text as byte streams, split by document into training and held-out parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossedge.core import CrossedgeError

DEFAULT_SOURCE = "pydoc-topics"
SEPARATOR = b"\n\n"


@dataclass
class ByteCorpus:
    """UTF-8 bytes of the training and held-out documents (each a 1-D long tensor), never sharing a document."""

    train: torch.Tensor
    test: torch.Tensor
    source: str
    fraction: float
    documents: tuple[int, int]  # (training, held-out) document counts

    def to_dict(self) -> dict:
        """What the corpus is, for records and reports."""
        return {
            "source": self.source,
            "fraction": self.fraction,
            "train_bytes": len(self.train),
            "test_bytes": len(self.test),
            "train_documents": self.documents[0],
            "test_documents": self.documents[1],
        }


def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as a long tensor."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: torch.Tensor | list[int]) -> str:
    """Text of byte ids (invalid UTF-8 sequences replaced)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def load_corpus(source: str = DEFAULT_SOURCE, *, fraction: float = 0.85) -> ByteCorpus:
    """The named bundled dataset's documents, split by a stable hash of their ids, joined by blank lines."""
    from crossedge.core.datasets import get_dataset, split_documents

    docs = get_dataset(source).documents()
    train, test = split_documents(docs, fraction, salt="gmu")
    if not train or not test:
        raise CrossedgeError(f"split of {len(docs)} documents of {source} left one side empty; use another fraction")

    def stream(part) -> torch.Tensor:
        return torch.tensor(list(SEPARATOR.join(d.text.encode("utf-8") for d in part)), dtype=torch.long)

    return ByteCorpus(stream(train), stream(test), source, fraction, (len(train), len(test)))
