"""What the CLI and the benchmark share: the recipe (which prompts, how long the teacher's answers), loading
the teacher, preparing its cached data, and building the matched pair of students."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError

from .data import DEFAULT_SOURCES, SummaryItems, split_corpus, summary_items
from .model import Student, StudentConfig, build_student, matched_decoder, teacher_projection
from .teacher import TeacherData, teacher_data

DEFAULT_TEACHER = "smollm2-135m"


@dataclass(frozen=True)
class Recipe:
    """The distillation data: bundled datasets and their split, prompt counts, passage length, the teacher's
    answer length and how many of its log-probabilities are kept per position."""

    sources: str = DEFAULT_SOURCES
    fraction: float = 0.7
    train_items: int = 64
    eval_items: int = 16
    passage_tokens: int = 192
    new_tokens: int = 32
    top_k: int = 32
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (kept in a student's record so ``eval`` can rebuild the held-out prompts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`, ignoring nothing: unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CrossedgeError(f"unknown recipe option(s) {unknown}; valid: {sorted(names)}")
        return cls(**data)


@dataclass
class Prepared:
    """The teacher, its tokenizer and special ids, and its cached answers on the training and held-out prompts."""

    teacher: Any
    tokenizer: Any
    recipe: Recipe
    train: TeacherData
    held_out: TeacherData
    held_out_items: SummaryItems
    eos_id: int
    pad_id: int
    start_id: int

    @property
    def vocab(self) -> int:
        """The teacher's output vocabulary (the students' too)."""
        return int(self.teacher.config.vocab_size)

    def to_dict(self) -> dict[str, Any]:
        """What was prepared, for records and reports."""
        return {
            "recipe": self.recipe.to_dict(),
            "train": self.train.to_dict(),
            "held_out": self.held_out.to_dict(),
            "vocab": self.vocab,
            "eos_id": self.eos_id,
            "start_id": self.start_id,
        }


def load_teacher(name: str = DEFAULT_TEACHER) -> tuple[Any, Any]:
    """(model, tokenizer) of a model name, folder or hub id through crossedge's sources, frozen in eval mode."""
    from crossedge.core.sources import load_model

    loaded = load_model(name)
    model = loaded.model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, loaded.tokenizer


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(eos, pad, start): the tokenizer's end token, its pad (else the end token), its bos (else the end)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CrossedgeError("the teacher's tokenizer has no end-of-sequence token; the answers could not stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return int(eos), int(pad), int(start)


def prepare(
    teacher: Any,
    tokenizer: Any,
    recipe: Recipe | None = None,
    *,
    folder: Path | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> Prepared:
    """Build the training and held-out prompts (disjoint documents) and the teacher's data for both, from the
    cache when this recipe ran before."""
    recipe = recipe or Recipe()
    eos, pad, start = special_ids(tokenizer)
    train_docs, held_out_docs = split_corpus(recipe.sources, recipe.fraction)
    train_items = summary_items(
        tokenizer, train_docs, recipe.train_items, passage_tokens=recipe.passage_tokens, seed=recipe.seed
    )
    held_out_items = summary_items(
        tokenizer, held_out_docs, recipe.eval_items, passage_tokens=recipe.passage_tokens, seed=recipe.seed
    )
    options = {"new_tokens": recipe.new_tokens, "top_k": recipe.top_k, "eos_id": eos, "pad_id": pad}
    options.update(batch_size=batch_size, folder=folder, progress=progress)
    train = teacher_data(teacher, train_items.inputs, **options)
    held_out = teacher_data(teacher, held_out_items.inputs, **options)
    return Prepared(teacher, tokenizer, recipe, train, held_out, held_out_items, eos, pad, start)


def matched_configs(
    vocab: int,
    start_id: int,
    *,
    d_model: int = 192,
    heads: int = 4,
    encoder_layers: int = 6,
    decoder_layers: int = 2,
    mlp_hidden: int = 512,
) -> tuple[StudentConfig, StudentConfig]:
    """(encdec, decoder-only) configs of the same parameter count on the teacher's vocabulary."""
    encdec = StudentConfig(
        kind="encdec",
        vocab=vocab,
        d_model=d_model,
        heads=heads,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        mlp_hidden=mlp_hidden,
        start_id=start_id,
    )
    return encdec, matched_decoder(encdec)


def new_student(config: StudentConfig, teacher: Any | None = None, *, seed: int = 0) -> Student:
    """A student initialised from ``seed``; given the teacher, its embedding starts as the teacher's projected
    on its leading principal directions (the same for both students, so neither gets a head start)."""
    torch.manual_seed(seed)
    student = build_student(config)
    if teacher is not None:
        weight = teacher.get_input_embeddings().weight
        if weight.shape[0] != config.vocab:
            raise CrossedgeError(
                f"the teacher's embedding has {weight.shape[0]} rows; the student's vocab is {config.vocab}"
            )
        with torch.no_grad():
            student.embed.weight.copy_(teacher_projection(weight, config.d_model, seed=seed))
    return student
