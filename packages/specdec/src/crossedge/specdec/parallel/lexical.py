"""Lexical-unit decoding for autoregressive models (after "Decoding at the Speed of Thought").

An autoregressive model is fine-tuned to guess, in the same forward as its next token, the
``span`` tokens after it: ``span`` mask tokens are appended to the context and the logits at the
i-th mask are trained toward the token i+1 places after the next one. The ordinary next-token loss
is kept, so one-token-per-forward decoding stays as it was.

Decoding (``decode(model, prompt, tau=0.9)``): each forward sees the answer so far plus ``span``
masks; the next token is always taken and the guesses after it are taken while each one's
probability passes ``tau``, so a confident run of tokens (a lexical unit: a name, a phrase) costs
one forward and an uncertain token ends the run. Unlike speculative decoding nothing verifies the
run: it is a lossy speedup whose quality ``parallel-bench`` measures.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch

from crossedge.core.errors import CrossedgeError

from .budget import run_budget
from .decoding import Decoded
from .model import DiffusionLM
from .train import Batch, autoregressive_loss, draw_examples, make_batch


def span_batch(model: DiffusionLM, batch: Batch, span: int, rng: random.Random) -> tuple[torch.Tensor, ...]:
    """Rows cut after a random answer position and followed by ``span`` masks, with their targets.

    Returns ids (B, L), keep (B, L), target (B, L) (-100 where no loss) for the next token (at the
    last kept position) and the ``span`` tokens after it (at the masks).
    """
    info = model.info
    rows, targets = [], []
    for ids, answer in zip(batch.ids, batch.answer, strict=True):
        where = answer.nonzero().squeeze(1)
        lo, hi = int(where[0]), int(where[-1]) + 1
        cut = rng.randint(lo, hi - 1)
        future = ids[cut : min(hi, cut + span + 1)].tolist()
        future += [info.eos_token_id] * (span + 1 - len(future))
        row = ids[:cut].tolist() + [info.mask_token_id] * span
        target = [-100] * (cut - 1) + future
        rows.append(row)
        targets.append(target)
    width = max(map(len, rows))
    out = torch.full((len(rows), width), info.pad_token_id)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    target = torch.full((len(rows), width), -100)
    for i, (row, tgt) in enumerate(zip(rows, targets, strict=True)):
        out[i, : len(row)] = torch.tensor(row)
        keep[i, : len(row)] = True
        target[i, : len(tgt)] = torch.tensor(tgt)
    return out, keep, target


def lexical_loss(model: DiffusionLM, batch: Batch, span: int, rng: random.Random) -> torch.Tensor:
    """Cross-entropy of the next token and the ``span`` guesses after it, from masks."""
    ids, keep, target = span_batch(model, batch, span, rng)
    logits = model(ids, keep)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100)


def fine_tune(
    model: DiffusionLM,
    *,
    span: int = 3,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[DiffusionLM, dict[str, float]]:
    """A copy of autoregressive ``model`` fine-tuned for lexical units of up to ``span + 1`` tokens."""
    if model.info.objective != "autoregressive":
        raise CrossedgeError(
            "lexical-unit fine-tuning starts from an autoregressive model (train-dllm --objective autoregressive)"
        )
    if span < 1:
        raise CrossedgeError(f"span must be at least 1, got {span}")
    info = copy.deepcopy(model.info)
    info.objective, info.span = "lexical", span
    tuned = DiffusionLM(copy.deepcopy(model.model), model.tokenizer, info)
    tuned.train()
    rng = random.Random(seed)

    def loss_at(step: int, done: float) -> torch.Tensor:
        batch = make_batch(tuned, draw_examples(info.tasks, batch_size, rng))
        return autoregressive_loss(tuned, batch) + lexical_loss(tuned, batch, span, rng)

    run = run_budget(
        tuned.parameters(),
        loss_at,
        lr=lr,
        steps=steps,
        seconds=seconds,
        weight_decay=0.01,
        progress=progress,
        what="fine-tuning",
    )
    tuned.eval()
    record = {"steps": run.steps, "seconds": round(run.seconds, 1), "final_loss": round(run.last_loss, 4)}
    tuned.info.trained = {**model.info.trained, "lexical": {**record, "span": span, "lr": lr}}
    return tuned, record


def confident_run(logits: torch.Tensor, base: int, span: int, tau: float, stop: set[int], room: int) -> list[int]:
    """The next token (argmax at ``base``) and the guesses after it (rows ``base + 1 ...``) while each one's
    probability passes ``tau``, no further than a stop token or ``room`` tokens."""
    run = [int(logits[base].argmax())]
    for i in range(1, span + 1):
        if run[-1] in stop or len(run) >= room:
            break
        conf, token = torch.softmax(logits[base + i], dim=-1).max(dim=-1)
        if float(conf) < tau:
            break
        run.append(int(token))
    return run


@torch.inference_mode()
def decode_lexical(model: DiffusionLM, head: list[int], gen_length: int, tau: float) -> Decoded:
    """Decode with lexical units: the next token plus the confident guesses after it, per forward."""
    if not 0.0 < tau <= 1.0:
        raise CrossedgeError(f"tau must be in (0, 1], got {tau}")
    info = model.info
    out: list[int] = []
    forwards = 0
    while len(out) < gen_length and info.eos_token_id not in out:
        ids = torch.tensor([head + out + [info.mask_token_id] * info.span])
        logits = model(ids)[0].float()
        logits[:, info.mask_token_id] = float("-inf")
        forwards += 1
        base = len(head) + len(out) - 1
        out += confident_run(logits, base, info.span, tau, {info.eos_token_id}, gen_length - len(out))
    if info.eos_token_id in out:
        out = out[: out.index(info.eos_token_id) + 1]
    out += [info.eos_token_id] * (gen_length - len(out))
    return Decoded(model.decode(out), out, forwards)
