"""Trained draft heads: small modules on the target's own computation that guess tokens further ahead.

Each kind is trained by self-distillation on the target's greedy continuations of prompts
cut from the bundled corpora (on CPU, the target frozen), saved as safetensors beside the
model cache, and drafts through its own drafter plugin (:mod:`.drafter`). The kinds:
``medusa`` (:mod:`.medusa`), ``hidden-transfer`` (:mod:`.hidden_transfer`), ``clover``
(:mod:`.clover`) and ``ppd`` (:mod:`.ppd`). Importing this package does not import torch,
so the CLI can list the kinds cheaply.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossedge.core import CrossedgeError

if TYPE_CHECKING:
    from .base import DraftHeads, HeadsTrainResult

#: Head kinds that can be trained and drafted with, and the module:class that builds each.
HEADS = {
    "medusa": "medusa:MedusaHeads",
    "hidden-transfer": "hidden_transfer:HiddenTransferHeads",
    "clover": "clover:CloverHeads",
    "ppd": "ppd:PromptHeads",
}
HEAD_KINDS = tuple(HEADS)


#: The instructions training prompts frame their passages with. ``tasks`` (the default) asks for the
#: kinds of answer chat users ask for (explanations, summaries, translations, questions and answers,
#: lists, worked examples); its prompts leave out the documents the default bench suite reads, so no
#: bench prompt's passage is trained on. ``explain`` is the one instruction of the first recipes.
PROMPT_MIXES: dict[str, tuple[str, ...]] = {
    "explain": ("Explain the following passage in plain words.",),
    "tasks": (
        "Explain the following passage in plain words.",
        "Summarize this text in a few sentences.",
        "Translate this text into French.",
        "Translate this text into German.",
        "Translate this text into Spanish.",
        "Write two questions a reader could ask about this text, and answer each one.",
        "List the main points of this text.",
        "Describe when this matters in practice, with a short example.",
        "Make up a small arithmetic problem about this text and solve it step by step.",
        "Rewrite this text more simply, for a beginner.",
    ),
}
DEFAULT_PROMPT_MIX = "tasks"


class HeadsError(CrossedgeError):
    """Draft heads cannot be built, trained, saved or loaded for this model."""


def check_kind(kind: str) -> str:
    """``kind`` when it is built; a one-line :class:`HeadsError` otherwise."""
    if kind in HEADS:
        return kind
    raise HeadsError(f"unknown head kind {kind!r}; the kinds built are: {', '.join(HEAD_KINDS)}")


def heads_class(kind: str) -> type[DraftHeads]:
    """The :class:`.base.DraftHeads` subclass of ``kind``."""
    module, name = HEADS[check_kind(kind)].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def train_heads(
    model: Any,
    tokenizer: Any,
    model_name: str,
    kind: str = "medusa",
    *,
    heads: int = 3,
    out: Path | str | None = None,
    options: dict[str, Any] | None = None,
    **training: Any,
) -> HeadsTrainResult:
    """Train draft heads of ``kind`` by self-distillation and save them (see :func:`.base.train_kind`).

    ``options`` are the kind's own constructor keywords (``layer`` for hidden-transfer,
    ``window`` for clover; medusa and ppd have none). Returns per-depth top-1 and top-k accuracy
    on held-out sequences and the training seconds.
    """
    cls = heads_class(kind)
    from .base import train_kind

    return train_kind(cls, model, tokenizer, model_name, depth=heads, out=out, options=options or {}, **training)
