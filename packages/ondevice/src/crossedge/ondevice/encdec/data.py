"""Summarization-style prompts from the bundled texts: a passage of the teacher's tokens inside an instruction,
training and held-out passages drawn from disjoint documents.

Every prompt is the same instruction around a window of exactly ``passage_tokens`` tokens, built in token space
(head ids + window + tail ids), so all prompts of a recipe have one length and batch without padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from crossedge.core import CrossedgeError

DEFAULT_SOURCES = "pydoc-topics,common-licenses"
INSTRUCTION = "Summarize the following passage in one or two sentences."
MARK = "\x00PASSAGE\x00"
SALT = "return-encoder"


@dataclass
class SummaryItems:
    """Prompts (N, L) token ids, the passage window inside each (N, P), and the document each came from."""

    inputs: torch.Tensor
    passages: torch.Tensor
    documents: list[str]

    def __len__(self) -> int:
        return len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        """What the items are, for records and reports."""
        return {
            "items": len(self),
            "input_tokens": int(self.inputs.shape[1]),
            "passage_tokens": int(self.passages.shape[1]),
            "documents": len(set(self.documents)),
        }


def prompt_parts(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids before and after the passage: the teacher's chat template around the instruction when it has
    one (so an instruction-tuned teacher answers), else a plain "Passage: ... Summary:" frame."""
    content = f"{INSTRUCTION}\n\n{MARK}"
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    else:
        text = f"{content}\n\nSummary:"
    head, tail = text.split(MARK)
    return (
        tokenizer(head, add_special_tokens=False).input_ids,
        tokenizer(tail, add_special_tokens=False).input_ids,
    )


def parse_sources(sources: str) -> list[str]:
    """``"pydoc-topics,common-licenses"`` -> the dataset names, refusing an empty list."""
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if not names:
        raise CrossedgeError(f"give at least one bundled dataset, like {DEFAULT_SOURCES}; got {sources!r}")
    return names


def split_corpus(sources: str = DEFAULT_SOURCES, fraction: float = 0.8) -> tuple[list, list]:
    """(training, held-out) documents of the named datasets, split by a stable hash of their ids."""
    from crossedge.core.datasets import get_dataset, split_documents

    docs = [doc for name in parse_sources(sources) for doc in get_dataset(name).documents()]
    train, held_out = split_documents(docs, fraction, salt=SALT)
    if not train or not held_out:
        raise CrossedgeError(f"splitting {len(docs)} documents of {sources} left one side empty; use another fraction")
    return train, held_out


def summary_items(
    tokenizer: Any,
    documents: Sequence,
    count: int,
    *,
    passage_tokens: int = 256,
    per_document: int = 2,
    seed: int = 0,
) -> SummaryItems:
    """``count`` prompts, each around a window of ``passage_tokens`` tokens; documents are visited in a seeded
    order and give at most ``per_document`` non-overlapping windows each (shorter documents are skipped)."""
    if count < 1 or passage_tokens < 1 or per_document < 1:
        raise CrossedgeError(
            f"need positive item count, passage length and windows per document: {count}, "
            f"{passage_tokens}, {per_document}"
        )
    head, tail = prompt_parts(tokenizer)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    windows: list[list[int]] = []
    names: list[str] = []
    for index in order:
        doc = documents[index]
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        for k in range(min(per_document, len(ids) // passage_tokens)):
            windows.append(ids[k * passage_tokens : (k + 1) * passage_tokens])
            names.append(doc.id)
            if len(windows) == count:
                break
        if len(windows) == count:
            break
    if len(windows) < count:
        raise CrossedgeError(
            f"only {len(windows)} passages of {passage_tokens} tokens in {len(documents)} documents; "
            f"ask for fewer items or shorter passages"
        )
    passages = torch.tensor(windows, dtype=torch.long)
    inputs = torch.cat(
        [
            torch.tensor(head, dtype=torch.long).expand(count, -1),
            passages,
            torch.tensor(tail, dtype=torch.long).expand(count, -1),
        ],
        1,
    )
    return SummaryItems(inputs, passages, names)
