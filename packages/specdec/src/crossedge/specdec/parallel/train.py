"""Training a small masked diffusion LM (and its autoregressive twin) on the ParallelBench-style tasks.

The masked-diffusion objective, as in MDLM / LLaDA's supervised fine-tuning: each row is
``prompt [SEP] answer [EOS]...`` with the answer padded by end-of-text to ``gen_length``; a
mask ratio ``t ~ U(eps, 1)`` is drawn per row, every answer position is masked with
probability ``t`` (the prompt never is), and the loss is the cross-entropy at the masked
positions weighted by ``1 / t``, summed and divided by the row's answer length. The
autoregressive twin has the same architecture, data and budget, trained causally with the
next-token loss on the answer and its first end-of-text.

Rows are drawn fresh at every step from the task generators (``tasks.make_examples`` with a
per-step seed), so the model never sees the held-out split's seeds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from crossedge.core.errors import CrossedgeError

from . import tasks as T
from .budget import run_budget
from .model import DLLM_FILE, DiffusionLM, DLLMInfo, build_tokenizer, new_config

#: Lowest mask ratio drawn (a ratio of 0 would mask nothing and divide by zero).
MIN_RATIO = 1e-3


def vocabulary_texts(task_names: Sequence[str], *, seed: int = 0, samples: int = 300) -> list[str]:
    """Texts whose words make the tokenizer: sampled prompts and answers, every name and sentence."""
    texts = []
    for split in ("train", "test"):
        texts += [f"{e.prompt} {e.answer}" for e in T.make_examples(task_names, samples, seed=seed, split=split)]
    if any(t not in ("latin_square", "sudoku", "words_to_sentence") for t in task_names):
        firsts, lasts = T.names()
        texts += [*firsts, *lasts, " ".join(str(i) for i in range(1, 8))]
    if "words_to_sentence" in task_names:
        texts += list(T.license_sentences())
    texts += [T.ITEM_SEP, T.ROW_SEP, "0 1 2 3 4", " ".join(T.SYMBOLS)]
    return texts


def longest_answer(model: DiffusionLM, task_names: Sequence[str], *, seed: int = 0, samples: int = 300) -> int:
    """Tokens in the longest answer among sampled examples of the tasks."""
    examples = T.make_examples(task_names, samples, seed=seed)
    return max(len(model.encode(e.answer)) for e in examples)


def draw_examples(task_names: Sequence[str], count: int, rng: random.Random) -> list[T.TaskExample]:
    """``count`` fresh training examples, each of a task drawn from ``task_names`` with its own seed."""
    chosen = [rng.choice(task_names) for _ in range(count)]  # all tasks first, then the seeds: one stream
    return [T.make_examples([name], 1, seed=rng.randrange(2**31))[0] for name in chosen]


@dataclass
class Batch:
    """Token rows (B, L), the real-token mask, where each row's answer canvas starts and its length."""

    ids: torch.Tensor
    keep: torch.Tensor
    answer: torch.Tensor  # (B, L) True on the answer canvas positions


def make_batch(model: DiffusionLM, examples: Sequence[T.TaskExample]) -> Batch:
    """Rows ``prompt [SEP] answer [EOS]*`` (answer canvas of ``gen_length``), right-padded."""
    info = model.info
    rows, spans = [], []
    for e in examples:
        head = model.encode(e.prompt) + ([info.sep_token_id] if info.sep_token_id is not None else [])
        answer = model.encode(e.answer)
        if len(answer) >= info.gen_length:
            raise CrossedgeError(
                f"a {e.task} answer has {len(answer)} tokens but the canvas holds {info.gen_length} "
                "(with end-of-text); build the model with a larger gen_length"
            )
        rows.append(head + answer + [info.eos_token_id] * (info.gen_length - len(answer)))
        spans.append((len(head), len(head) + info.gen_length))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), info.pad_token_id)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    answer = torch.zeros_like(keep)
    for i, (row, (lo, hi)) in enumerate(zip(rows, spans, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        keep[i, : len(row)] = True
        answer[i, lo:hi] = True
    return Batch(ids, keep, answer)


def diffusion_loss(
    model: DiffusionLM, batch: Batch, generator: torch.Generator | None = None, edit_ratio: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked-diffusion loss of a batch, and the mask used (True where the input was masked).

    With ``edit_ratio`` that share of the answer positions left unmasked is replaced by random
    tokens and the model is also taught to restore them (LLaDA2.1's token-to-token objective, which
    token editing needs: a model trained on masks alone never learns to rewrite a wrong token).
    """
    b = batch.ids.shape[0]
    t = torch.rand(b, 1, generator=generator) * (1 - MIN_RATIO) + MIN_RATIO
    masked = (torch.rand(batch.ids.shape, generator=generator) < t) & batch.answer
    # Every row masks at least one answer position, so every row teaches something.
    empty = ~masked.any(dim=1)
    if bool(empty.any()):
        first = batch.answer.float().argmax(dim=1)
        masked[empty.nonzero().squeeze(1), first[empty]] = True
    mask_id = model.info.mask_token_id
    inputs = torch.where(masked, torch.full_like(batch.ids, mask_id), batch.ids)
    corrupted = torch.zeros_like(masked)
    if edit_ratio:
        corrupted = (torch.rand(batch.ids.shape, generator=generator) < edit_ratio) & batch.answer & ~masked
        noise = torch.randint(0, len(model.tokenizer), batch.ids.shape, generator=generator)
        noise = torch.where(noise == mask_id, torch.full_like(noise, model.info.eos_token_id), noise)
        inputs = torch.where(corrupted, noise, inputs)
    logits = model(inputs, batch.keep)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.ids, reduction="none")
    per_row = ((ce * masked / t).sum(dim=1) + (ce * corrupted).sum(dim=1)) / batch.answer.sum(dim=1)
    return per_row.mean(), masked


def autoregressive_loss(model: DiffusionLM, batch: Batch) -> torch.Tensor:
    """Next-token loss on each row's answer tokens and its first end-of-text."""
    eos = model.info.eos_token_id
    target = batch.answer & ((batch.ids != eos) | (torch.cumsum(batch.answer & (batch.ids == eos), dim=1) == 1))
    logits = model(batch.ids, batch.keep)[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.ids[:, 1:], reduction="none")
    weight = target[:, 1:].float()
    return (ce * weight).sum() / weight.sum()


@dataclass
class TrainReport:
    """What a training run did."""

    steps: int
    seconds: float
    final_loss: float
    held_out_loss: float
    parameters: int


def new_model(
    task_names: Sequence[str],
    *,
    objective: str = "diffusion",
    hidden: int = 192,
    layers: int = 4,
    heads: int = 4,
    gen_length: int | None = None,
    block_length: int = 8,
    seed: int = 0,
) -> DiffusionLM:
    """A freshly initialized model and tokenizer sized for ``task_names`` (canvas fitted to their answers)."""
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer(vocabulary_texts(task_names, seed=seed))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("[MASK]", "[EOS]", "[PAD]", "[SEP]")}
    probe = DiffusionLM(None, tokenizer, DLLMInfo(objective, ids["[MASK]"], ids["[EOS]"], ids["[PAD]"], ids["[SEP]"]))
    if gen_length is None:
        need = longest_answer(probe, task_names, seed=seed) + 1
        gen_length = block_length * math.ceil(need / block_length)
    info = DLLMInfo(
        objective,
        ids["[MASK]"],
        ids["[EOS]"],
        ids["[PAD]"],
        ids["[SEP]"],
        gen_length=gen_length,
        block_length=block_length,
        tasks=list(task_names),
    )
    longest_prompt = max(len(tokenizer(e.prompt).input_ids) for e in T.make_examples(task_names, 100, seed=seed))
    torch.manual_seed(seed)
    config = new_config(
        len(tokenizer), hidden=hidden, layers=layers, heads=heads, positions=longest_prompt + gen_length + 16
    )
    return DiffusionLM(LlamaForCausalLM(config), tokenizer, info)


def train(
    model: DiffusionLM,
    *,
    seconds: float | None = None,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup: int = 50,
    ar_warmup: float = 0.0,
    edit_ratio: float = 0.0,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> TrainReport:
    """Train ``model`` in place on fresh rows of its tasks until ``steps`` or ``seconds`` run out.

    With ``ar_warmup`` a diffusion LM spends that share of the budget trained causally with the
    next-token loss first (as Dream and DiffuLLaMA adapt autoregressive models), then switches to
    bidirectional attention and the masked-diffusion loss; the data, optimizer and schedule run on.
    ``edit_ratio`` adds the token-to-token objective (:func:`diffusion_loss`). A model that was
    trained before keeps the record of that run in ``info.trained["before"]``.
    """
    if not 0.0 <= ar_warmup < 1.0:
        raise CrossedgeError(f"ar_warmup must be in [0, 1), got {ar_warmup}")
    if not 0.0 <= edit_ratio < 1.0:
        raise CrossedgeError(f"edit_ratio must be in [0, 1), got {edit_ratio}")
    objective = model.info.objective
    if (ar_warmup or edit_ratio) and objective != "diffusion":
        raise CrossedgeError("ar_warmup and edit_ratio apply to a diffusion LM only")
    before = dict(model.info.trained) if model.info.trained else None
    task_names = model.info.tasks
    rng = random.Random(seed)
    held_out = make_batch(model, T.make_examples(task_names, max(2, 256 // len(task_names)), seed=seed, split="test"))
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_at(step: int, done: float) -> torch.Tensor:
        batch = make_batch(model, draw_examples(task_names, batch_size, rng))
        # The warm-up trains the same weights causally: the objective decides how forward attends.
        model.info.objective = "autoregressive" if done < ar_warmup else objective
        if model.info.objective == "diffusion":
            return diffusion_loss(model, batch, generator, edit_ratio)[0]
        return autoregressive_loss(model, batch)

    model.train()
    try:
        run = run_budget(
            params,
            loss_at,
            lr=lr,
            steps=steps,
            seconds=seconds,
            weight_decay=0.01,
            betas=(0.9, 0.98),
            schedule=lambda step, done: min(1.0, (step + 1) / warmup) * max(0.05, 1.0 - done),
            progress=progress,
        )
    finally:
        model.info.objective = objective
    model.eval()
    with torch.no_grad():
        if model.info.objective == "diffusion":
            held = float(diffusion_loss(model, held_out, torch.Generator().manual_seed(seed + 1))[0])
        else:
            held = float(autoregressive_loss(model, held_out))
    report = TrainReport(run.steps, run.seconds, run.last_loss, held, sum(p.numel() for p in params))
    model.info.trained = {
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "final_loss": round(report.final_loss, 4),
        "held_out_loss": round(report.held_out_loss, 4),
        "parameters": report.parameters,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "ar_warmup": ar_warmup,
        "edit_ratio": edit_ratio,
    }
    if before:
        model.info.trained["before"] = before
    return report


#: The files :meth:`DiffusionLM.save` writes; a folder holding anything else is never written into.
WRITTEN = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "learn2pd.safetensors",
        DLLM_FILE,
    }
)


def check_out(out: Path | str) -> Path:
    """``out``, created if needed, once it is new, empty, or holds only a model these commands wrote."""
    from ..exit_head import claim_folder

    out = Path(out)
    written_by_us = (out / DLLM_FILE).is_file()
    return claim_folder(out, lambda p: written_by_us and p.name in WRITTEN, what="diffusion LM", error=CrossedgeError)


def save_new(model: DiffusionLM, out: Path | str) -> Path:
    """Save into ``out``: a new or empty folder, or one holding only a model these commands wrote."""
    return model.save(check_out(out))
