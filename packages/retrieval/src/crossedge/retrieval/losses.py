"""Ranking and distillation losses, registered through ``register_losses`` (classes of core's Loss contract).

Every loss takes the student's scores ``[B, K]`` for B queries with K candidates
each, and either teacher scores ``[B, K]`` (distillation) or labels ``[B, K]`` in
{0, 1}. ``mask`` ``[B, K]`` marks real candidates when lists are padded. The
distillation losses use only the teacher, so comparing them is a comparison of
objectives with the same information.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from crossedge.core.contracts.loss import Loss, LossError

_NEG = -1e4

#: The base of retrieval's losses is core's contract; the old name stays for callers that import it.
RankingLoss = Loss


class PointwiseBCE(Loss):
    """Binary cross-entropy per candidate against labels, or against sigmoid(teacher) when distilling."""

    name = "pointwise-bce"
    description = "pointwise: BCE of each score against its label or the teacher's probability"
    needs_teacher = False

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        if labels is None and teacher is None:
            raise LossError("pointwise-bce needs labels or teacher scores")
        target = labels.float() if labels is not None else torch.sigmoid(self.teacher_scores(teacher))
        valid = self.candidate_mask(scores, mask)
        return F.binary_cross_entropy_with_logits(scores[valid].float(), target[valid])


class MarginMSE(Loss):
    """Margin-MSE (Hofstaetter et al. 2020): match the teacher's positive-minus-negative margins.

    Column 0 is the positive (or, when distilling, the candidate the teacher ranks
    first is treated as the positive); each other real candidate is a negative.
    """

    name = "margin-mse"
    description = "pairwise: MSE between student and teacher score margins (positive minus each negative)"
    exact_at_teacher = True

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        t = self.teacher_scores(teacher)
        valid = self.candidate_mask(scores, mask)
        t_masked = t.masked_fill(~valid, float("-inf"))
        pos = t_masked.argmax(1, keepdim=True)
        s_margin = scores.float().gather(1, pos) - scores.float()
        t_margin = t.gather(1, pos) - t
        negatives = valid & (torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) != pos)
        return F.mse_loss(s_margin[negatives], t_margin[negatives])


class InfoNCE(Loss):
    """Listwise InfoNCE: cross-entropy of the softmax over the list toward one positive.

    The positive is the labelled one when labels are given, otherwise the teacher's top candidate.
    ``temperature`` divides the scores first.
    """

    name = "infonce"
    description = "listwise: softmax cross-entropy toward the positive (the teacher's top when distilling)"
    needs_teacher = False

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        valid = self.candidate_mask(scores, mask)
        if labels is not None:
            target = labels.float().masked_fill(~valid, float("-inf")).argmax(1)
        else:
            target = self.teacher_scores(teacher).masked_fill(~valid, float("-inf")).argmax(1)
        logits = (scores.float() / self.temperature).masked_fill(~valid, _NEG)
        return F.cross_entropy(logits, target)


class ListNetKL(Loss):
    """ListNet distillation: KL(teacher softmax || student softmax) over each candidate list."""

    name = "listnet-kl"
    description = "listwise: KL divergence from the teacher's softmax over the list to the student's"
    exact_at_teacher = True

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        t = self.teacher_scores(teacher)
        valid = self.candidate_mask(scores, mask)
        log_p_teacher = F.log_softmax((t / self.temperature).masked_fill(~valid, _NEG), dim=1)
        log_p_student = F.log_softmax((scores.float() / self.temperature).masked_fill(~valid, _NEG), dim=1)
        per_item = log_p_teacher.exp() * (log_p_teacher - log_p_student)
        return per_item.masked_fill(~valid, 0.0).sum(1).mean()


class PartialRankingDistillation(Loss):
    """Contrastive partial ranking distillation: keep only the teacher's order among its top candidates.

    The candidates are sorted by teacher score; for each of the first ``top``
    ranks r, the candidate at rank r is a positive contrasted against every
    candidate the teacher ranks below it (an InfoNCE term, i.e. a Plackett-Luce
    factor). The order below rank ``top`` is not imposed: the teacher's fine
    order among easy candidates is noise the student need not copy. The loss is
    the mean over the ``top`` terms and the batch.
    """

    name = "partial-ranking"
    description = "contrastive partial ranking: teacher order kept among its top (hard) candidates only"

    def __init__(self, top: int = 4, temperature: float = 1.0):
        self.top = top
        self.temperature = temperature

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        t = self.teacher_scores(teacher)
        valid = self.candidate_mask(scores, mask)
        order = t.masked_fill(~valid, float("-inf")).argsort(dim=1, descending=True)
        s_sorted = (scores.float() / self.temperature).gather(1, order)
        v_sorted = valid.gather(1, order)
        k = scores.shape[1]
        total, count = scores.new_zeros((), dtype=torch.float32), 0
        for r in range(min(self.top, k - 1)):
            # Rank r against itself and everything ranked below it by the teacher.
            tail = s_sorted[:, r:].masked_fill(~v_sorted[:, r:], _NEG)
            term = torch.logsumexp(tail, dim=1) - s_sorted[:, r]
            # A list with fewer than r+2 real candidates has nothing left to contrast at rank r.
            use = v_sorted[:, r] & (v_sorted[:, r + 1 :].sum(1) > 0)
            if use.any():
                total = total + term[use].sum()
                count += int(use.sum())
        if count == 0:
            raise LossError("partial-ranking needs lists with at least two real candidates")
        return total / count


class LabelsWithDistillation(Loss):
    """Labels and a teacher together: InfoNCE toward the labelled positive (the teacher's top without
    labels) plus ``alpha`` times ListNet-KL to the teacher's softmax.

    With the zero-shot bi-encoder as the teacher, a reranker learns the labels of its training
    collection without forgetting the ranking that already works elsewhere (the term keeps its
    scores close to the first stage's order where the labels say nothing).
    """

    name = "infonce-kl"
    description = "labels plus distillation: InfoNCE toward the positive + alpha * KL to the teacher's softmax"

    def __init__(self, alpha: float = 1.0, temperature: float = 1.0):
        if alpha < 0:
            raise LossError(f"infonce-kl: alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.labelled = InfoNCE(temperature)
        self.distilled = ListNetKL(temperature)

    def __call__(self, scores, teacher=None, labels=None, mask=None):
        # Without labels the positive is the teacher's top candidate, as for InfoNCE itself.
        term = self.labelled(scores, teacher=teacher, labels=labels, mask=mask)
        return term + self.alpha * self.distilled(scores, teacher=teacher, mask=mask)


LOSSES: tuple[type[Loss], ...] = (
    PointwiseBCE,
    MarginMSE,
    InfoNCE,
    ListNetKL,
    PartialRankingDistillation,
    LabelsWithDistillation,
)

__all__ = ["LOSSES", "InfoNCE", "LabelsWithDistillation", "ListNetKL", "LossError", "MarginMSE",
           "PartialRankingDistillation", "PointwiseBCE", "RankingLoss", "get_loss"]  # fmt: skip


def get_loss(name: str, **options: object) -> Loss:
    """A loss instance by name from the loss registry (plugins included), built with ``options``."""
    from crossedge.core import get_registry

    return get_registry("loss").get(name)(**options)
