"""Stage-1 training of the compressor through the frozen decoder.

The encoder is frozen, so its features for the training contexts are computed once and reused every step; each
step draws fresh items (a recall span at a new place, or the continuation) on those contexts, puts the memory
embeddings ahead of the prompt and answer, and backpropagates the answer's cross-entropy through the frozen
decoder into the compressor alone.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from crossedge.core import CrossedgeError
from crossedge.core.bench import progress_bar

from .data import ItemTemplates, QAItem, TokenStream, training_windows
from .model import DolphinReader


@dataclass(frozen=True)
class TrainConfig:
    """Steps, batch, the contexts and items trained on, and AdamW's peak learning rate (warmup, cosine decay)."""

    steps: int = 120
    batch_size: int = 4
    windows: int = 32
    context_tokens: int = 512
    prefix_tokens: int = 8
    answer_tokens: int = 16
    recall_fraction: float = 0.75
    lr: float = 5e-3
    warmup: int = 4
    weight_decay: float = 0.0
    bf16: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.windows < 1:
            raise CrossedgeError(
                f"steps, batch size and windows must be positive, got {self.steps}, {self.batch_size}, {self.windows}"
            )
        if not 0.0 <= self.recall_fraction <= 1.0:
            raise CrossedgeError(f"recall fraction must be between 0 and 1, got {self.recall_fraction}")
        if self.context_tokens < self.prefix_tokens + self.answer_tokens:
            raise CrossedgeError(
                f"a context of {self.context_tokens} tokens cannot hold a {self.prefix_tokens}-token quote and a "
                f"{self.answer_tokens}-token answer"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return asdict(self)


@dataclass
class TrainResult:
    """Loss per step (nats per answer token), wall time of the features and of the steps."""

    losses: list[float]
    seconds: float
    feature_seconds: float
    items: int
    config: dict = field(default_factory=dict)
    decoder_unchanged: bool = True

    @property
    def first_loss(self) -> float:
        """Mean loss of the first tenth of the steps."""
        head = self.losses[: max(1, len(self.losses) // 10)]
        return float(sum(head) / len(head))

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return float(sum(tail) / len(tail))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return {
            "losses": self.losses,
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "seconds": self.seconds,
            "feature_seconds": self.feature_seconds,
            "items": self.items,
            "decoder_unchanged": self.decoder_unchanged,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Inverse of :meth:`to_dict` (derived fields dropped)."""
        keep = ("losses", "seconds", "feature_seconds", "items", "config", "decoder_unchanged")
        return cls(**{k: data[k] for k in keep if k in data})


def decoder_fingerprint(decoder: torch.nn.Module) -> list[float]:
    """Per-tensor float64 sums of the decoder's weights: any update to a weight changes them."""
    return [float(p.detach().double().sum()) for p in decoder.parameters()]


def _learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def answer_loss(
    reader: DolphinReader, memory: torch.Tensor | None, items: list[QAItem], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoder cross-entropy of each item's answer given ``memory`` (batch, M, d; or None) then its prompt.

    Returns (mean loss over every answer token, the logits of the last positions that predict an answer token,
    their label mask); sequences are right-padded, which a causal decoder never attends to from earlier positions.
    """
    lengths = [len(it.prompt) + len(it.answer) for it in items]
    width = max(lengths)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.prompt)
        ids[row, : lengths[row]] = torch.cat([it.prompt, it.answer])
        labels[row, n : lengths[row]] = it.answer
    skip = 0 if memory is None else memory.shape[1]
    if skip:  # memory positions carry no label
        labels = torch.cat([torch.full((len(items), skip), -100, dtype=torch.long), labels], dim=1)
    # Only positions from the one before the earliest answer onwards predict a label: the LM head (a
    # vocabulary-wide matmul) runs on those alone.
    keep = labels.shape[1] - (skip + min(len(it.prompt) for it in items) - 1)
    out = reader.decoder(inputs_embeds=reader.inputs_embeds(memory, ids), use_cache=False, logits_to_keep=keep)
    logits = out.logits
    predicted, targets = logits[:, :-1], labels[:, -keep + 1 :]  # position p predicts the token at p + 1
    loss = F.cross_entropy(predicted.float().reshape(-1, predicted.shape[-1]), targets.reshape(-1), ignore_index=-100)
    return loss, logits, targets != -100


def window_features(
    reader: DolphinReader, stream: TokenStream, starts: list[int], context_tokens: int, *, batch: int = 4
) -> torch.Tensor:
    """Frozen encoder features of each training context, (windows, L, d)."""
    out = []
    for begin in range(0, len(starts), batch):
        ids = torch.stack([stream.ids[s : s + context_tokens] for s in starts[begin : begin + batch]])
        out.append(reader.features(ids))
    return torch.cat(out)


def train_compressor(
    reader: DolphinReader,
    stream: TokenStream,
    templates: ItemTemplates,
    config: TrainConfig | None = None,
    *,
    progress: bool = False,
) -> TrainResult:
    """Train ``reader.compressor`` in place on items drawn from ``stream``'s training contexts."""
    config = config or TrainConfig()
    L, P, T = config.context_tokens, config.prefix_tokens, config.answer_tokens
    starts = training_windows(stream, config.windows, context_tokens=L, after=T, seed=config.seed)
    before = decoder_fingerprint(reader.decoder)
    began = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        features = window_features(reader, stream, starts, L).float()
    feature_seconds = time.perf_counter() - began
    compressor = reader.compressor
    optimizer = torch.optim.AdamW(
        compressor.parameters(), lr=config.lr, betas=(0.9, 0.98), weight_decay=config.weight_decay
    )
    pad_id = int(templates.tokenizer.pad_token_id or 0)
    g = torch.Generator().manual_seed(config.seed + 7)
    losses: list[float] = []
    compressor.train()
    began = time.perf_counter()
    for step in progress_bar(range(config.steps), desc="training the compressor", enabled=progress):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        picks = torch.randint(0, len(starts), (config.batch_size,), generator=g).tolist()
        items = []
        recall = float(torch.rand((), generator=g)) < config.recall_fraction
        for w in picks:  # one kind per step: equal lengths, no padding
            context = stream.ids[starts[w] : starts[w] + L]
            if recall:
                at = int(torch.randint(0, L - P - T + 1, (1,), generator=g))
                items.append(templates.recall(context, at, P, T))
            else:
                after = stream.ids[starts[w] + L : starts[w] + L + T]
                items.append(QAItem("continue", context, after[:0], after, -1))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            memory = compressor(features[picks])
            loss, _, _ = answer_loss(reader, memory, items, pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(compressor.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    compressor.eval()
    seconds = time.perf_counter() - began
    unchanged = decoder_fingerprint(reader.decoder) == before
    return TrainResult(losses, seconds, feature_seconds, config.steps * config.batch_size, config.to_dict(), unchanged)
