"""Real text for the keyboard: the bundled corpora as word streams, split into training and held-out documents."""

from __future__ import annotations

from dataclasses import dataclass

from crossedge.core import CrossedgeError

from .lexicon import Lexicon, words_of

#: The bundled corpora the keyboard trains and evaluates on.
DEFAULT_SOURCES: tuple[str, ...] = ("pydoc-topics", "common-licenses")


@dataclass
class KeyboardCorpus:
    """Training and held-out word streams (one list of words per document), never sharing a document."""

    train: list[list[str]]
    test: list[list[str]]
    sources: tuple[str, ...]
    fraction: float

    @property
    def train_words(self) -> list[str]:
        """Every training word in order."""
        return [w for doc in self.train for w in doc]

    def lexicon(self, *, min_count: int = 1) -> Lexicon:
        """The lexicon and its counts, from the training split only."""
        return Lexicon.from_words(self.train_words, min_count=min_count)

    def messages(
        self, words_per_message: int = 20, limit: int | None = None, *, split: str = "test"
    ) -> list[list[str]]:
        """Held-out (or, with ``split="train"``, training) text cut into messages of consecutive words; the
        model's context restarts at each. ``limit`` words are taken as whole messages spread over documents."""
        if split not in ("train", "test"):
            raise CrossedgeError(f"split must be 'train' or 'test', got {split!r}")
        out: list[list[str]] = []
        for doc in self.test if split == "test" else self.train:
            for start in range(0, len(doc), words_per_message):
                out.append(doc[start : start + words_per_message])
        if limit is not None:
            total = sum(len(m) for m in out)
            step = max(1, total // max(1, limit))
            picked, count = [], 0
            for message in out[:: max(1, step // words_per_message)]:
                if count >= limit:
                    break
                picked.append(message[: limit - count])
                count += len(picked[-1])
            out = picked
        return out


def load_corpus(sources: tuple[str, ...] = DEFAULT_SOURCES, *, fraction: float = 0.8) -> KeyboardCorpus:
    """Documents of the named bundled datasets, split by a stable hash of their ids into train/test."""
    from crossedge.core.datasets import get_dataset, split_documents

    docs = [d for name in sources for d in get_dataset(name).documents()]
    train, test = split_documents(docs, fraction, salt="keyboard")
    if not train or not test:
        raise CrossedgeError(f"split of {len(docs)} documents left one side empty; use a fraction nearer 0.5")
    return KeyboardCorpus(
        train=[ws for d in train if (ws := words_of(d.text))],
        test=[ws for d in test if (ws := words_of(d.text))],
        sources=tuple(sources),
        fraction=fraction,
    )
