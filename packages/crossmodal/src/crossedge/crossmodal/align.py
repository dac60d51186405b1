"""Contrastive alignment of a brain (or sensor) signal with stimulus embeddings, after NeuroBridge.

Both sides are encoded, passed through one *shared* projector into a common space and
L2-normalized; a bidirectional InfoNCE loss (signal -> stimulus and stimulus -> signal over
the in-batch pairs) pulls matching pairs together. The temperature is learned as a logit
scale, ``logits = exp(logit_scale) * cos``, and clamped after every step to
``[1 / max_temperature, 1 / min_temperature]`` (CLIP clamps the same way). The signal side is
augmented per step (NeuroBridge's cognitive-prior augmentation: temporal jitter, channel
dropout, noise), and the stimulus side is seen in several noisy views whose losses are
averaged. :func:`retrieve` scores zero-shot N-way retrieval of stimuli never trained on.

```python
result = train_alignment(signal_train, stimulus_train, epochs=60)
scores = retrieve(result.model, signal_test, stimulus_test)  # {"top1": ..., "top5": ..., "chance": ...}
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from crossedge.core.errors import CrossedgeError

from .training import Objective, train_steps


class AlignmentError(CrossedgeError, ValueError):
    """Signals and stimuli that cannot be aligned as given, or bad alignment settings."""


@dataclass(frozen=True)
class SignalAugmentation:
    """Signal-side augmentations applied per step: jitter (samples), channel dropout (probability), noise (x std)."""

    jitter: int = 2
    channel_dropout: float = 0.1
    noise: float = 0.1

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An augmented copy of ``x``: (N, T, C) windows, or (N, D) features (no jitter then)."""
        n = x.shape[0]
        if self.jitter and x.ndim == 3:
            # shift every window by its own offset, wrapping around, as a small timing error would
            length = x.shape[1]
            shifts = torch.randint(-self.jitter, self.jitter + 1, (n, 1), generator=generator)
            index = (torch.arange(length).unsqueeze(0) - shifts) % length
            x = torch.gather(x, 1, index.unsqueeze(-1).expand_as(x))
        if self.channel_dropout:
            keep_shape = (n, 1, x.shape[-1]) if x.ndim == 3 else (n, x.shape[-1])
            keep = torch.rand(keep_shape, generator=generator) >= self.channel_dropout
            x = x * keep.to(x.dtype)
        if self.noise:
            scale = x.flatten(1).std(dim=1).clamp_min(1e-6).view(n, *([1] * (x.ndim - 1)))
            x = x + self.noise * scale * torch.randn(x.shape, generator=generator)
        return x


@dataclass(frozen=True)
class StimulusViews:
    """Several views of each stimulus embedding per step: ``views`` copies with feature dropout and noise."""

    views: int = 2
    dropout: float = 0.1
    noise: float = 0.05

    def __call__(self, e: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """``views`` augmented copies of the embeddings ``e`` (N, D)."""
        out = []
        for _ in range(self.views):
            v = e
            if self.dropout:
                v = v * (torch.rand(v.shape, generator=generator) >= self.dropout).to(v.dtype)
            if self.noise:
                v = v + self.noise * v.std().clamp_min(1e-6) * torch.randn(v.shape, generator=generator)
            out.append(v)
        return out


def info_nce(
    signal: torch.Tensor, stimulus: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, signal->stimulus, stimulus->signal)``: bidirectional InfoNCE of normalized pairs (row i matches i)."""
    logits = logit_scale.exp() * signal @ stimulus.T
    targets = torch.arange(signal.shape[0], device=signal.device)
    to_stimulus = F.cross_entropy(logits, targets)
    to_signal = F.cross_entropy(logits.T, targets)
    return (to_stimulus + to_signal) / 2, to_stimulus, to_signal


class AlignmentModel(nn.Module):
    """Signal encoder and stimulus encoder into one width, a shared projector, and a learned logit scale."""

    def __init__(
        self,
        signal_shape: Sequence[int],
        stimulus_dim: int,
        width: int = 128,
        shared_dim: int = 64,
        temperature: float = 0.07,
        min_temperature: float = 0.01,
        max_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= temperature <= max_temperature:
            raise AlignmentError(
                f"temperatures must satisfy 0 < min ({min_temperature}) <= initial ({temperature}) <= max "
                f"({max_temperature}); change the one out of order"
            )
        self.signal_shape = tuple(int(s) for s in signal_shape)
        self.min_logit_scale = math.log(1.0 / max_temperature)
        self.max_logit_scale = math.log(1.0 / min_temperature)
        flat = math.prod(self.signal_shape)
        self.signal_encoder = nn.Sequential(nn.Flatten(), nn.Linear(flat, width), nn.GELU(), nn.Linear(width, width))
        self.stimulus_encoder = nn.Sequential(nn.Linear(stimulus_dim, width), nn.GELU(), nn.Linear(width, width))
        # one projector for both sides: the shared space is shaped by the same map (NeuroBridge)
        self.projector = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, shared_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def embed_signal(self, signal: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, shared_dim) for signals of shape (N, *signal_shape)."""
        return F.normalize(self.projector(self.signal_encoder(signal)), dim=-1)

    def embed_stimulus(self, stimulus: torch.Tensor) -> torch.Tensor:
        """Unit vectors (N, shared_dim) for stimulus embeddings (N, stimulus_dim)."""
        return F.normalize(self.projector(self.stimulus_encoder(stimulus)), dim=-1)

    def clamp_temperature_(self) -> None:
        """Clamp the logit scale into its bounds in place (after every optimizer step)."""
        with torch.no_grad():
            self.logit_scale.clamp_(self.min_logit_scale, self.max_logit_scale)

    @property
    def temperature(self) -> float:
        """The current temperature, ``1 / exp(logit_scale)``."""
        return float(torch.exp(-self.logit_scale.detach()))


@dataclass
class AlignmentResult:
    """The trained model and one record per epoch (mean loss, both directions, logit scale)."""

    model: AlignmentModel
    history: list[dict[str, float]] = field(default_factory=list)


def _check_pairs(signal: Any, stimulus: Any) -> tuple[torch.Tensor, torch.Tensor]:
    signal = torch.as_tensor(signal, dtype=torch.float32)
    stimulus = torch.as_tensor(stimulus, dtype=torch.float32)
    if stimulus.ndim != 2:
        raise AlignmentError(f"stimulus embeddings have shape {tuple(stimulus.shape)}; pass (N, D)")
    if signal.ndim not in (2, 3):
        raise AlignmentError(f"signal has shape {tuple(signal.shape)}; pass (N, T, C) windows or (N, D) features")
    if signal.shape[0] != stimulus.shape[0]:
        raise AlignmentError(
            f"{signal.shape[0]} signals but {stimulus.shape[0]} stimulus embeddings; pass one stimulus per signal"
        )
    return signal, stimulus


def train_alignment(
    signal: Any,
    stimulus_embeddings: Any,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    width: int = 128,
    shared_dim: int = 64,
    temperature: float = 0.07,
    min_temperature: float = 0.01,
    max_temperature: float = 1.0,
    augmentation: SignalAugmentation | None = SignalAugmentation(),
    stimulus_views: StimulusViews | None = StimulusViews(),
    seed: int = 0,
    progress: bool = False,
) -> AlignmentResult:
    """Align ``signal`` (N, T, C) or (N, D) with ``stimulus_embeddings`` (N, D_s), row i with row i."""
    signal, stimulus = _check_pairs(signal, stimulus_embeddings)
    if signal.shape[0] < 2 or batch_size < 2:
        raise AlignmentError(
            "contrastive alignment needs at least 2 pairs per batch; pass more pairs or a larger batch"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = AlignmentModel(
        signal.shape[1:], stimulus.shape[1], width, shared_dim, temperature, min_temperature, max_temperature
    )
    result = AlignmentResult(model)
    n = signal.shape[0]
    # epochs of shuffled batches; a last batch of one pair has no negatives and is dropped
    per_epoch = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size) if min(s + batch_size, n) - s >= 2]
    order: list[torch.Tensor] = []
    parts_seen: list[tuple[float, float]] = []

    def contrastive(module: AlignmentModel, x: torch.Tensor, views: list[torch.Tensor]) -> torch.Tensor:
        z_signal = module.embed_signal(x)
        parts = [info_nce(z_signal, module.embed_stimulus(v), module.logit_scale) for v in views]
        parts_seen.append(
            (
                float(torch.stack([p[1].detach() for p in parts]).mean()),
                float(torch.stack([p[2].detach() for p in parts]).mean()),
            )
        )
        return torch.stack([p[0] for p in parts]).mean()

    def step_loss(objective: nn.Module, step: int) -> torch.Tensor:
        if step % len(per_epoch) == 0:  # a new epoch: a new shuffle
            order[:] = [torch.randperm(n, generator=generator)]
        begin, stop = per_epoch[step % len(per_epoch)]
        index = order[0][begin:stop]
        x = signal[index]
        if augmentation is not None:
            x = augmentation(x, generator)
        views = stimulus_views(stimulus[index], generator) if stimulus_views is not None else [stimulus[index]]
        return objective(x, views)

    steps_per_epoch = len(per_epoch)
    scales: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="align", unit="epoch")

    def after_step() -> None:
        model.clamp_temperature_()
        if len(parts_seen) % steps_per_epoch == 0:  # an epoch ended
            scales.append(float(model.logit_scale.detach()))
            if bar is not None:
                bar.update(1)

    model.train()
    try:
        losses = train_steps(
            Objective(model, contrastive), list(model.parameters()), step_loss, epochs * steps_per_epoch, lr=lr,
            weight_decay=weight_decay, after_step=after_step,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    for epoch in range(epochs):
        part = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        seen = parts_seen[part]
        result.history.append(
            {
                "loss": sum(losses[part]) / steps_per_epoch,
                "signal_to_stimulus": sum(p[0] for p in seen) / steps_per_epoch,
                "stimulus_to_signal": sum(p[1] for p in seen) / steps_per_epoch,
                "epoch": float(epoch),
                "logit_scale": scales[epoch],
            }
        )
    model.eval()
    return result


def retrieval_accuracy(
    similarity: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy of rows of ``similarity`` (queries x candidates) against the target column of each row."""
    ranks = (similarity > similarity.gather(1, targets.view(-1, 1))).sum(dim=1)  # candidates scored above the truth
    return {f"top{k}": float((ranks < k).float().mean()) for k in topk}


@torch.no_grad()
def retrieve(
    model: AlignmentModel,
    signal: Any,
    candidates: Any,
    *,
    targets: Any = None,
    ways: int | None = None,
    topk: Sequence[int] = (1, 5),
    repeats: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Zero-shot N-way retrieval: rank candidate stimulus embeddings for each signal by cosine similarity.

    ``targets[i]`` is the candidate row that signal ``i`` saw (by default ``i``). With ``ways``,
    each query is scored against its target and ``ways - 1`` distractors drawn at random
    (seeded, ``repeats`` draws averaged), as 200-way retrieval is reported; otherwise against
    every candidate. Returns ``top{k}`` accuracies and ``chance`` (``1 / ways``).
    """
    signal = torch.as_tensor(signal, dtype=torch.float32)
    candidates = torch.as_tensor(candidates, dtype=torch.float32)
    m = candidates.shape[0]
    targets = torch.arange(signal.shape[0]) if targets is None else torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (signal.shape[0],) or targets.min() < 0 or targets.max() >= m:
        raise AlignmentError(
            f"targets must give one candidate row in [0, {m}) per signal; got shape {tuple(targets.shape)}"
        )
    model.eval()
    similarity = model.embed_signal(signal) @ model.embed_stimulus(candidates).T
    if ways is None or ways == m:
        return {**retrieval_accuracy(similarity, targets, topk), "chance": 1.0 / m}
    if not 2 <= ways <= m:
        raise AlignmentError(f"{ways}-way retrieval needs 2..{m} candidates; pass ways <= {m}")
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys((f"top{k}" for k in topk), 0.0)
    rows = torch.arange(signal.shape[0]).unsqueeze(1)
    for _ in range(repeats):
        # distractors: a random permutation of the other candidates, per query
        noise = torch.rand(signal.shape[0], m, generator=generator)
        noise[rows.squeeze(1), targets] = 2.0  # the target sorts last: never drawn as a distractor
        distractors = noise.argsort(dim=1)[:, : ways - 1]
        chosen = torch.cat([targets.view(-1, 1), distractors], dim=1)
        scores = retrieval_accuracy(similarity[rows, chosen], torch.zeros_like(targets), topk)
        for key, value in scores.items():
            totals[key] += value / repeats
    return {**totals, "chance": 1.0 / ways}
