"""Long texts from the bundled corpora as token streams, split by document, and the items read from them.

Training and held-out documents never overlap (a stable hash split; byte-identical documents such as a license
and its versioned copy are kept once). Every item is a long context, a prompt after it and a reference answer:

- ``recall``: a span stated somewhere in the context; the prompt quotes the few tokens before it and asks what
  follows, the answer is the span (the answer is known exactly, so it is scored by its likelihood);
- ``question``: a hand-written question about a fact of a held-out reference topic, with its verbatim answer;
- ``continue`` (training only): no prompt, the answer is the text right after the context.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crossedge.core import CrossedgeError

DEFAULT_SOURCES: tuple[str, ...] = ("pydoc-topics", "common-licenses")
SEPARATOR = "\n\n"
RECALL_HEAD = '\n\nQuestion: In the text above, what comes right after "'
RECALL_TAIL = '"?\nAnswer:'
QUESTION = "\n\nQuestion: {question}\nAnswer:"

#: (document id, question, verbatim answer) about facts of the Python reference; their documents are always held
#: out from training. A question whose answer is not in this interpreter's text is skipped.
HAND_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("pydoc-topics/truth", "Which constants are defined to be false?", '"None" and "False"'),
    ("pydoc-topics/pass", 'What happens when "pass" is executed?', "nothing happens"),
    (
        "pydoc-topics/break",
        'When a "for" loop is terminated by "break", what does the loop control target keep?',
        "its current value",
    ),
    (
        "pydoc-topics/while",
        'What does a "continue" statement executed in the first suite of a "while" loop do?',
        "skips the rest of the suite and goes back to testing the expression",
    ),
    (
        "pydoc-topics/for",
        'How many times is the "starred_list" expression of a "for" statement evaluated?',
        "once",
    ),
    (
        "pydoc-topics/import",
        "What is the first step of a basic import statement?",
        "find a module, loading and initializing it if necessary",
    ),
    (
        "pydoc-topics/lambda",
        "What can functions created with lambda expressions not contain?",
        "statements or annotations",
    ),
    (
        "pydoc-topics/raise",
        'If there is no active exception, which exception does a bare "raise" raise?',
        '"RuntimeError"',
    ),
    (
        "pydoc-topics/return",
        'If no expression list is present in a "return" statement, what is substituted?',
        '"None"',
    ),
    ("pydoc-topics/del", 'Which exception does "del" raise when the name is unbound?', '"NameError"'),
)


@dataclass
class TextSplit:
    """Training and held-out documents (lists of ``Document``), never sharing one."""

    train: list[Any]
    test: list[Any]
    sources: tuple[str, ...]
    fraction: float

    def to_dict(self) -> dict[str, Any]:
        """What the split is, for records and reports."""
        return {
            "sources": list(self.sources),
            "fraction": self.fraction,
            "train_documents": len(self.train),
            "test_documents": len(self.test),
            "train_chars": sum(len(d.text) for d in self.train),
            "test_chars": sum(len(d.text) for d in self.test),
        }


def load_split(sources: Sequence[str] = DEFAULT_SOURCES, *, fraction: float = 0.8) -> TextSplit:
    """The named bundled datasets' documents, deduplicated by content and split by a stable hash of their ids;
    the hand-written questions' documents always go to the held-out side."""
    from crossedge.core.datasets import get_dataset, split_documents

    docs, seen = [], set()
    for source in sources:
        for doc in get_dataset(source).documents():
            digest = hashlib.sha256(doc.text.encode()).hexdigest()
            if doc.text.strip() and digest not in seen:  # GPL and GPL-3 are one file under two names
                seen.add(digest)
                docs.append(doc)
    held = {doc_id for doc_id, _, _ in HAND_QUESTIONS}
    train, test = split_documents([d for d in docs if d.id not in held], fraction, salt="dolphin")
    test = test + [d for d in docs if d.id in held]
    if not train or not test:
        raise CrossedgeError(
            f"split of {len(docs)} documents of {list(sources)} left one side empty; use another fraction"
        )
    return TextSplit(train, test, tuple(sources), fraction)


@dataclass
class TokenStream:
    """Documents tokenized one by one and joined by a separator: ids, and where each document starts."""

    ids: torch.Tensor
    starts: dict[str, int]
    offsets: dict[str, list[tuple[int, int]]] = field(repr=False)
    texts: dict[str, str] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_stream(docs: Sequence[Any], tokenizer: Any) -> TokenStream:
    """Token ids of the documents in order, each followed by the separator's tokens."""
    sep = tokenizer(SEPARATOR, add_special_tokens=False).input_ids
    ids: list[int] = []
    starts, offsets, texts = {}, {}, {}
    for doc in docs:
        encoded = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        starts[doc.id] = len(ids)
        offsets[doc.id] = [tuple(o) for o in encoded["offset_mapping"]]
        texts[doc.id] = doc.text
        ids.extend(encoded.input_ids)
        ids.extend(sep)
    return TokenStream(torch.tensor(ids, dtype=torch.long), starts, offsets, texts)


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, as a 1-D long tensor."""
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


@dataclass
class QAItem:
    """A context, the prompt read after it and the reference answer (all 1-D token ids)."""

    kind: str
    context: torch.Tensor
    prompt: torch.Tensor
    answer: torch.Tensor
    answer_at: int  # where the answer's evidence starts in the context (-1: after it)
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Sizes and the label, for rows."""
        return {
            "kind": self.kind,
            "label": self.label,
            "context_tokens": len(self.context),
            "prompt_tokens": len(self.prompt),
            "answer_tokens": len(self.answer),
            "answer_at": self.answer_at,
        }


class ItemTemplates:
    """The prompt pieces, tokenized once for one tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.recall_head = encode(tokenizer, RECALL_HEAD)
        self.recall_tail = encode(tokenizer, RECALL_TAIL)

    def recall(self, context: torch.Tensor, at: int, prefix: int, answer: int, label: str = "") -> QAItem:
        """Ask for the ``answer`` tokens of ``context`` that follow its ``prefix`` tokens starting at ``at``."""
        quoted = context[at : at + prefix]
        prompt = torch.cat([self.recall_head, quoted, self.recall_tail, quoted])
        return QAItem("recall", context, prompt, context[at + prefix : at + prefix + answer], at, label)

    def question(self, context: torch.Tensor, question: str, answer: str, at: int, label: str = "") -> QAItem:
        """A hand-written question and its verbatim answer about ``context``."""
        prompt = encode(self.tokenizer, QUESTION.format(question=question))
        return QAItem("question", context, prompt, encode(self.tokenizer, " " + answer), at, label)


def _check_room(stream: TokenStream, needed: int, what: str) -> None:
    if len(stream) < needed:
        raise CrossedgeError(f"{what} has {len(stream)} tokens; need at least {needed}: use a shorter context")


def recall_items(
    stream: TokenStream,
    templates: ItemTemplates,
    count: int,
    *,
    context_tokens: int,
    prefix_tokens: int = 8,
    answer_tokens: int = 16,
    seed: int = 0,
) -> list[QAItem]:
    """``count`` recall items on contexts spread evenly over ``stream``, the span at a seeded uniform place."""
    _check_room(stream, context_tokens, "the held-out text")
    room = context_tokens - prefix_tokens - answer_tokens
    if room < 0:
        raise CrossedgeError(
            f"a context of {context_tokens} tokens cannot hold a {prefix_tokens}-token quote and a "
            f"{answer_tokens}-token answer"
        )
    g = torch.Generator().manual_seed(seed)
    last = len(stream) - context_tokens
    items = []
    for i in range(count):
        start = last * i // max(1, count - 1) if count > 1 else 0
        context = stream.ids[start : start + context_tokens]
        at = int(torch.randint(0, room + 1, (1,), generator=g))
        items.append(templates.recall(context, at, prefix_tokens, answer_tokens, label=f"recall@{start}+{at}"))
    return items


def _answer_token(stream: TokenStream, doc_id: str, answer: str) -> tuple[int, int] | None:
    """(first, last + 1) stream positions of the tokens covering the first whitespace-insensitive match."""
    pattern = r"\s+".join(re.escape(w) for w in answer.split())
    pattern = (r"\b" if answer[0].isalnum() else "") + pattern + (r"\b" if answer[-1].isalnum() else "")
    match = re.search(pattern, stream.texts[doc_id])
    if match is None:
        return None
    offsets = stream.offsets[doc_id]
    covering = [i for i, (a, b) in enumerate(offsets) if b > match.start() and a < match.end()]
    return stream.starts[doc_id] + covering[0], stream.starts[doc_id] + covering[-1] + 1


def question_items(
    stream: TokenStream, templates: ItemTemplates, *, context_tokens: int, seed: int = 0
) -> list[QAItem]:
    """The hand-written questions whose documents are in ``stream``, each on a context of ``context_tokens`` that
    holds the answer at a seeded uniform place (the rest is neighbouring held-out text)."""
    _check_room(stream, context_tokens, "the held-out text")
    g = torch.Generator().manual_seed(seed + 1)
    items = []
    for doc_id, question, answer in HAND_QUESTIONS:
        if doc_id not in stream.starts:
            continue
        found = _answer_token(stream, doc_id, answer)
        if found is None:
            continue
        first, end = found
        if end - first > context_tokens:
            continue
        place = int(torch.randint(0, context_tokens - (end - first) + 1, (1,), generator=g))
        start = min(max(0, first - place), len(stream) - context_tokens)
        context = stream.ids[start : start + context_tokens]
        items.append(templates.question(context, question, answer, first - start, label=doc_id))
    return items


def training_windows(stream: TokenStream, count: int, *, context_tokens: int, after: int, seed: int = 0) -> list[int]:
    """``count`` seeded window starts with ``after`` tokens of room past each context (for continuation)."""
    _check_room(stream, context_tokens + after + 1, "the training text")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(stream) - context_tokens - after, (count,), generator=g).tolist()
