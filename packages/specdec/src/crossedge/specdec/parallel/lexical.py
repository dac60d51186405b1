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
import time
from collections.abc import Callable

import torch

from crossedge.core.errors import CrossedgeError

from . import tasks as T
from .decoding import Decoded
from .model import DiffusionLM
from .train import Batch, autoregressive_loss, make_batch


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
    progress: Callable[[int, float], None] | None = None,
) -> tuple[DiffusionLM, dict[str, float]]:
    """A copy of autoregressive ``model`` fine-tuned for lexical units of up to ``span + 1`` tokens."""
    if model.info.objective != "autoregressive":
        raise CrossedgeError(
            "lexical-unit fine-tuning starts from an autoregressive model (train-dllm --objective autoregressive)"
        )
    if span < 1:
        raise CrossedgeError(f"span must be at least 1, got {span}")
    if steps is None and seconds is None:
        raise CrossedgeError("give a fine-tuning budget: steps, seconds, or both")
    info = copy.deepcopy(model.info)
    info.objective, info.span = "lexical", span
    tuned = DiffusionLM(copy.deepcopy(model.model), model.tokenizer, info)
    tuned.train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    start, step, value = time.perf_counter(), 0, float("nan")
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
        chosen = [rng.choice(info.tasks) for _ in range(batch_size)]
        examples = [T.make_examples([name], 1, seed=rng.randrange(2**31))[0] for name in chosen]
        batch = make_batch(tuned, examples)
        loss = autoregressive_loss(tuned, batch) + lexical_loss(tuned, batch, span, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        if progress is not None:
            progress(step, value)
    tuned.eval()
    record = {"steps": step, "seconds": round(time.perf_counter() - start, 1), "final_loss": round(value, 4)}
    tuned.info.trained = {**model.info.trained, "lexical": {**record, "span": span, "lr": lr}}
    return tuned, record


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
        out.append(int(logits[base].argmax()))
        for i in range(1, info.span + 1):
            if len(out) >= gen_length or out[-1] == info.eos_token_id:
                break
            probs = torch.softmax(logits[base + i], dim=-1)
            conf, token = probs.max(dim=-1)
            if float(conf) < tau:
                break
            out.append(int(token))
    if info.eos_token_id in out:
        out = out[: out.index(info.eos_token_id) + 1]
    out += [info.eos_token_id] * (gen_length - len(out))
    return Decoded(model.decode(out), out, forwards)
