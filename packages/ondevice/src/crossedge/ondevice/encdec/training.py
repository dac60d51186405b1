"""Cross-architecture distillation: a student learns the teacher's answers (cross-entropy on its tokens) and
its distributions at every answer position (KL to the top-k, renormalised).

The alignment is by answer position: the decoder-only student reads prompt then answer in one sequence, the
encoder-decoder reads the prompt in its encoder and the answer in its decoder; both predict answer token j from
the prompt and answer tokens before j, exactly the teacher's context, so the teacher's logits fit both.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .model import Student
from .teacher import TeacherData


@dataclass(frozen=True)
class DistillConfig:
    """AdamW steps over random batches of prompts; ``kl_weight`` mixes the KL (token-level) and the
    cross-entropy on the teacher's tokens (sequence-level) as ``w * KL + (1 - w) * CE``."""

    steps: int = 160
    batch_size: int = 4
    lr: float = 3e-3
    warmup: int = 6
    weight_decay: float = 0.01
    kl_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise CrossedgeError(f"need positive steps, batch size and learning rate: {self.to_dict()}")
        if not 0.0 <= self.kl_weight <= 1.0:
            raise CrossedgeError(f"kl_weight mixes KL and cross-entropy, so it lies in [0, 1]; got {self.kl_weight}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class DistillResult:
    """Loss per step (and its KL and CE parts, nats per answer token), wall time and answer tokens seen."""

    losses: list[float]
    kl: list[float]
    ce: list[float]
    seconds: float
    tokens: int
    config: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(sum(tail) / len(tail))

    def to_dict(self) -> dict:
        """Plain-dict form (curves thinned to about 60 points)."""
        stride = max(1, len(self.losses) // 60)
        return {
            "losses": self.losses[::stride],
            "kl": self.kl[::stride],
            "ce": self.ce[::stride],
            "loss_stride": stride,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.final_loss,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "config": self.config,
        }


def distill_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logp: torch.Tensor,
    kl_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, KL, CE), each a mean over real answer tokens. The KL compares the teacher's top-k distribution
    (renormalised over its k tokens) with the student's full-vocabulary one, so it is >= 0 and 0 only when the
    student puts exactly the teacher's renormalised mass on those k tokens."""
    logq = logits.float().log_softmax(-1)
    weights = mask.float()
    count = weights.sum().clamp_min(1.0)
    ce = -(logq.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * weights).sum() / count
    # renormalise over the top k; padding positions hold -inf, made finite first so no NaN reaches the gradient
    p_logp = torch.where(mask.unsqueeze(-1), topk_logp, 0.0).log_softmax(-1)
    per_token = (p_logp.exp() * (p_logp - logq.gather(-1, topk_ids))).sum(-1)
    kl = (per_token * weights).sum() / count
    return kl_weight * kl + (1.0 - kl_weight) * ce, kl, ce


def _learning_rate(config: DistillConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def distill(
    student: Student, data: TeacherData, config: DistillConfig | None = None, *, progress: bool = False
) -> DistillResult:
    """Train ``student`` in place on the teacher's answers; the batch order depends only on ``config.seed``, so
    two students trained with one config see the same prompts in the same order."""
    config = config or DistillConfig()
    if len(data) < 1:
        raise CrossedgeError("no teacher data to distil from")
    sampler = torch.Generator().manual_seed(config.seed)
    decay = [p for p in student.parameters() if p.ndim >= 2]
    no_decay = [p for p in student.parameters() if p.ndim < 2]  # norms
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )
    mask = data.mask
    losses, kls, ces = [], [], []
    tokens = 0
    student.train()
    start = time.perf_counter()
    for i in progress_bar(range(config.steps), desc=f"distilling {student.config.kind}", enabled=progress):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, i)
        rows = torch.randint(0, len(data), (min(config.batch_size, len(data)),), generator=sampler)
        width = int(data.lengths[rows].max())  # drop the columns that are padding in every row of this batch
        targets = data.targets[rows, :width]
        logits = student.target_logits(data.inputs[rows], targets)
        loss, kl, ce = distill_loss(
            logits,
            targets,
            mask[rows, :width],
            data.topk_ids[rows, :width],
            data.topk_logp[rows, :width],
            config.kl_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        kls.append(kl.item())
        ces.append(ce.item())
        tokens += int(mask[rows, :width].sum())
    student.eval()
    return DistillResult(losses, kls, ces, time.perf_counter() - start, tokens, config.to_dict())
