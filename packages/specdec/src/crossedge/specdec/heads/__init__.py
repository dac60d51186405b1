"""Trained draft heads: small modules on the target's own hidden states that guess tokens further ahead.

Each kind is trained by self-distillation on the target's greedy continuations of prompts
cut from the bundled corpora (on CPU, the target frozen), saved as safetensors beside the
model cache, and drafts through its own drafter plugin. Built so far: ``medusa``
(:mod:`.medusa`, drafter :class:`.drafter.MedusaDrafter`). Importing this package does
not import torch, so the CLI can list the kinds cheaply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossedge.core import CrossedgeError

if TYPE_CHECKING:
    from .medusa import HeadsTrainResult

#: Head kinds that can be trained and drafted with.
HEAD_KINDS = ("medusa",)
#: Kinds issue 15 asks for that are not built yet: refused by name, never listed as choices.
PLANNED_KINDS = ("hidden-transfer", "clover", "ppd")


class HeadsError(CrossedgeError):
    """Draft heads cannot be built, trained, saved or loaded for this model."""


def check_kind(kind: str) -> str:
    """``kind`` when it is built; a one-line :class:`HeadsError` otherwise."""
    if kind in HEAD_KINDS:
        return kind
    built = ", ".join(HEAD_KINDS)
    if kind in PLANNED_KINDS:
        raise HeadsError(f"{kind!r} heads are not built yet; the kinds built are: {built}")
    raise HeadsError(f"unknown head kind {kind!r}; the kinds built are: {built}")


def train_heads(
    model: Any,
    tokenizer: Any,
    model_name: str,
    kind: str = "medusa",
    *,
    heads: int = 3,
    out: Path | str | None = None,
    **options: Any,
) -> HeadsTrainResult:
    """Train draft heads of ``kind`` by self-distillation and save them (see :func:`.medusa.train_medusa`).

    Returns per-head top-1 and top-k accuracy on held-out sequences and the training seconds.
    """
    check_kind(kind)
    from .medusa import train_medusa

    return train_medusa(model, tokenizer, model_name, heads=heads, out=out, **options)
