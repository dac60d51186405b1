"""Quality on held-out prompts, measured against the teacher's answers: negative log-likelihood (and
perplexity) of the answer under teacher forcing, top-1 agreement with the teacher's tokens, and ROUGE-L
(word-level longest common subsequence) between the student's greedy answer and the teacher's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .model import Student
from .teacher import TeacherData


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: Sequence, reference: Sequence) -> float:
    """ROUGE-L F1: the LCS's harmonic mean of precision (over the candidate) and recall (over the reference)."""
    if not candidate or not reference:
        return float(not candidate and not reference)
    common = lcs_length(candidate, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def greedy(student: Any, inputs: torch.Tensor, new_tokens: int, eos_id: int | None = None) -> list[list[int]]:
    """Greedy answers (each cut after its first ``eos_id``) for a batch of equal-length prompts: ``prefill``
    once, then one cached ``step`` per token; stops early once every row has stopped."""
    state, logits = student.prefill(inputs, capacity=new_tokens)
    rows: list[list[int]] = [[] for _ in range(len(inputs))]
    done = torch.zeros(len(inputs), dtype=torch.bool)
    for i in range(new_tokens):
        token = logits.argmax(-1)
        for r in range(len(inputs)):
            if not done[r]:
                rows[r].append(int(token[r]))
        if eos_id is not None:
            done |= token == eos_id
        if bool(done.all()) or i == new_tokens - 1:
            break
        logits = student.step(state, token[:, None])
    return rows


def words(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Whitespace-separated words of decoded ids (special tokens dropped), the unit ROUGE-L counts."""
    return tokenizer.decode(list(ids), skip_special_tokens=True).split()


@torch.no_grad()
def quality(
    student: Student, data: TeacherData, tokenizer: Any, *, eos_id: int | None, batch_size: int = 8
) -> dict[str, Any]:
    """NLL per answer token, perplexity, top-1 agreement and mean ROUGE-L against the teacher on ``data``."""
    student.eval()
    total_nll, agree, count, scores = 0.0, 0, 0, []
    new_tokens = data.targets.shape[1]
    for begin in range(0, len(data), batch_size):
        rows = slice(begin, begin + batch_size)
        targets, mask = data.targets[rows], data.mask[rows]
        logits = student.target_logits(data.inputs[rows], targets).float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += float((nll * mask).sum())
        agree += int(((logits.argmax(-1) == targets) & mask).sum())
        count += int(mask.sum())
        answers = greedy(student, data.inputs[rows], new_tokens, eos_id)
        for offset, answer in enumerate(answers):
            scores.append(rouge_l(words(tokenizer, answer), words(tokenizer, data.answer(begin + offset))))
    nll = total_nll / max(1, count)
    return {
        "nll": nll,
        "perplexity": math.exp(min(nll, 50.0)),
        "agreement": agree / max(1, count),
        "rouge_l": sum(scores) / len(scores),
        "answer_tokens": count,
    }


def teacher_quality(data: TeacherData) -> dict[str, Any]:
    """The teacher scored on its own answers: its NLL is exact (the greedy token is its top-1, so its
    full-vocabulary log-probability is the first of the cached top-k); agreement and ROUGE-L are 1."""
    mask = data.mask
    nll = float(-(data.topk_logp[..., 0] * mask).sum() / mask.sum())
    return {"nll": nll, "perplexity": math.exp(nll), "agreement": 1.0, "rouge_l": 1.0, "answer_tokens": int(mask.sum())}


def lead_quality(passages: torch.Tensor, data: TeacherData, tokenizer: Any) -> dict[str, Any]:
    """The "lead" baseline of summarization: the passage's first tokens, as many as the teacher's answer has,
    scored by ROUGE-L (it has no distribution, so no NLL or agreement)."""
    scores = [
        rouge_l(words(tokenizer, passages[i, : int(data.lengths[i])].tolist()), words(tokenizer, data.answer(i)))
        for i in range(len(data))
    ]
    return {"nll": None, "perplexity": None, "agreement": None, "rouge_l": sum(scores) / len(scores)}
