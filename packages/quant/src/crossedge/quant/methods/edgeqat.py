"""``edgeqat``: quantization-aware training of the whole decoder, distilled from its float self.

Written from the EdgeQAT paper (Shen et al., 2024). Post-training methods fit each layer or block
to its float counterpart and stop; quantization-aware training runs the quantized network end to
end, so later layers learn to correct what earlier layers' rounding did. The paper's two losses
target what 8-bit activations break first in small LLMs, the attention:

- entropy-guided: rounding the query and key narrows their distributions and the attention loses
  information; raising the (Gaussian) entropy of the quantized queries and keys, per head, pushes
  back (``entropy`` weight; here up to the teacher's entropy, not without bound as in the paper);
- distribution-guided: the student's attention map for each head and query should point where the
  float teacher's does (one minus their cosine similarity, ``attention`` weight);

on top of distilling the teacher's next-token distribution (KL divergence of the logits). The
network is MobileQuant's (:mod:`.mobilequant`): static per-tensor activation ranges, learned
smoothing and clipping, started by its per-block fit (``block_steps``); the training then updates
the float weights under the rounding (a straight-through estimator) together with the ranges, so
the saved layers run the same integer kernels (W8A8 static, W4A8 on the int4 kernel).

Training data is the calibration text, cut into random windows of ``seq_len`` tokens; it never
overlaps the evaluation text of ``quant eval``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from crossedge.core.bench import progress_bar

from ..api import Quantizer, Replacements
from ..calibration import CalibrationError
from ..config import QuantConfig, check
from .mobilequant import (
    Int4StaticActLinear,
    Int8StaticLinear,
    LearnedQuantLinear,
    MobileQuantConfig,
    integer_replacements,
    learn_blocks,
)


@dataclass(kw_only=True)
class EdgeQATConfig(MobileQuantConfig):
    """End-to-end quantization-aware training with distillation, entropy and attention-map losses."""

    method: ClassVar[str] = "edgeqat"

    #: Training steps over the whole network (one window of calibration text each).
    steps: int = 100
    #: MobileQuant's per-block fit before the training (0 starts from SmoothQuant's transform).
    block_steps: int = 40
    #: Learning rate of the float weights under the rounding.
    weight_lr: float = 2e-5
    #: Learning rate of the ranges, smoothing and clipping during the training (``lr`` is the block fit's).
    range_lr: float = 1e-3
    #: Tokens per training window (cut at random from the calibration batches).
    seq_len: int = 256
    #: Weight of the attention-map (distribution-guided) loss.
    attention: float = 1.0
    #: Weight of the query/key entropy loss.
    entropy: float = 1.0
    #: Seed of the windows' order and offsets.
    seed: int = 0

    def validate(self) -> None:
        check(0 <= self.block_steps <= 10_000, f"edgeqat block_steps must be 0..10000, got {self.block_steps}")
        check(0.0 <= self.weight_lr < 1.0, f"edgeqat weight_lr must be in [0, 1), got {self.weight_lr}")
        check(0.0 <= self.range_lr < 1.0, f"edgeqat range_lr must be in [0, 1), got {self.range_lr}")
        check(self.seq_len >= 8, f"edgeqat seq_len must be at least 8 tokens, got {self.seq_len}")
        check(self.attention >= 0.0, f"edgeqat attention must be >= 0, got {self.attention}")
        check(self.entropy >= 0.0, f"edgeqat entropy must be >= 0, got {self.entropy}")
        super().validate()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, averaged over positions."""
    vocab = student.shape[-1]
    log_s = torch.log_softmax(student.float().reshape(-1, vocab), -1)
    log_t = torch.log_softmax(teacher.float().reshape(-1, vocab), -1)
    return nn.functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def attention_map_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """One minus the cosine similarity of each head's attention row, student against teacher, averaged."""
    losses = [
        1 - nn.functional.cosine_similarity(s.float(), t.float(), dim=-1).mean()
        for s, t in zip(student, teacher, strict=True)
    ]
    return torch.stack(losses).mean()


def head_entropy(out: torch.Tensor, heads: int) -> torch.Tensor:
    """The Gaussian entropy of each head of a projection's output, up to a constant: ``log sigma`` per head."""
    per_head = out.float().reshape(-1, heads, out.shape[-1] // heads).transpose(0, 1).reshape(heads, -1)
    return torch.log(per_head.std(dim=1).clamp(min=1e-8))


def entropy_loss(student: list[tuple[torch.Tensor, int]], teacher: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """How far each query/key head's entropy fell below the float teacher's, averaged (0 where it did not).

    The paper maximizes the entropy outright; bounded by the teacher's, the loss restores what the
    rounding took without rewarding queries and keys that grow past the float model's.
    """
    gaps = [
        torch.relu(head_entropy(t, heads).detach() - head_entropy(s, heads)).mean()
        for (s, heads), (t, _) in zip(student, teacher, strict=True)
    ]
    return torch.stack(gaps).mean()


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules (those with ``q_proj`` and ``k_proj``), by name."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")}


@contextmanager
def eager_attention(*models: nn.Module) -> Iterator[None]:
    """Run the models on eager attention (the one that returns attention maps), then restore theirs."""
    before = [getattr(m.config, "_attn_implementation", None) for m in models]
    try:
        for m in models:
            m.set_attn_implementation("eager")
        yield
    finally:
        for m, impl in zip(models, before, strict=True):
            if impl is not None:
                m.set_attn_implementation(impl)


def training_windows(batches: list[Any], seq_len: int, steps: int, seed: int) -> list[torch.Tensor]:
    """``steps`` windows of ``seq_len`` tokens cut at random from the calibration batches (whole rows if shorter)."""
    rows = []
    for batch in batches:
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise CalibrationError("edgeqat trains on token ids: give calibration batches of input ids")
        rows.extend(ids.reshape(-1, ids.shape[-1]))
    generator = torch.Generator().manual_seed(seed)
    windows = []
    for _ in range(steps):
        row = rows[int(torch.randint(len(rows), (1,), generator=generator))]
        if row.numel() <= seq_len:
            windows.append(row[None])
            continue
        start = int(torch.randint(row.numel() - seq_len + 1, (1,), generator=generator))
        windows.append(row[None, start : start + seq_len])
    return windows


@dataclass
class TrainingLog:
    """Loss terms of the first and last tenth of the training."""

    first: dict[str, float]
    last: dict[str, float]


def train(
    model: nn.Module, teacher: nn.Module, learned: dict[str, LearnedQuantLinear], config: EdgeQATConfig, batches: list
) -> TrainingLog:
    """Train the learned layers inside ``model`` (swapped in for the run) to match ``teacher``; restores ``model``."""
    originals = {name: model.get_submodule(name) for name in learned}
    weights = [layer.unfreeze_weight() for layer in learned.values()]
    ranges = {id(p): p for layer in learned.values() for p in layer.parameters() if p is not layer.weight}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for name, layer in learned.items():
        model.set_submodule(name, layer)
    heads = model.config.num_attention_heads
    kv_heads = getattr(model.config, "num_key_value_heads", None) or heads
    projections: dict[int, list[tuple[torch.Tensor, int]]] = {id(model): [], id(teacher): []}
    handles = []
    if config.entropy:
        for net in (model, teacher):
            seen = projections[id(net)]
            for attn in attention_modules(net).values():
                for proj, count in ((attn.q_proj, heads), (attn.k_proj, kv_heads)):
                    handles.append(
                        proj.register_forward_hook(lambda m, a, out, seen=seen, count=count: seen.append((out, count)))
                    )
    groups = [{"params": weights, "lr": config.weight_lr}, {"params": list(ranges.values()), "lr": config.range_lr}]
    optimizer = torch.optim.Adam([g for g in groups if g["params"] and g["lr"] > 0])
    windows = training_windows(batches, config.seq_len, config.steps, config.seed)
    history: list[dict[str, float]] = []
    want_maps = config.attention > 0
    try:
        with eager_attention(model, teacher) if want_maps else _nothing(), torch.enable_grad():
            for ids in progress_bar(windows, desc="edgeqat steps"):
                for seen in projections.values():
                    seen.clear()
                with torch.no_grad():
                    target = teacher(ids, output_attentions=want_maps)
                out = model(ids, output_attentions=want_maps)
                terms = {"kd": distillation_loss(out.logits, target.logits)}
                if want_maps:
                    terms["attention"] = attention_map_loss(list(out.attentions), list(target.attentions))
                if config.entropy:
                    terms["entropy"] = entropy_loss(projections[id(model)], projections[id(teacher)])
                loss = (
                    terms["kd"]
                    + config.attention * terms.get("attention", 0)
                    + config.entropy * terms.get("entropy", 0)
                )
                if not math.isfinite(loss.item()):
                    raise CalibrationError(
                        "edgeqat's training loss became NaN or infinite: lower weight_lr or range_lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.append({k: float(v.detach()) for k, v in terms.items()})
    finally:
        for handle in handles:
            handle.remove()
        for name, module in originals.items():
            model.set_submodule(name, module)
        for p in frozen:
            p.requires_grad_(True)
    tenth = max(1, len(history) // 10)
    return TrainingLog(_mean(history[:tenth]), _mean(history[-tenth:]))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {k: round(sum(r[k] for r in rows) / len(rows), 6) for k in rows[0]}


class EdgeQATQuantizer(Quantizer):
    """EdgeQAT: the quantized decoder trained end to end against its float self (W8A8, W4A8, static activations)."""

    name = "edgeqat"
    description = (
        "quantization-aware training distilled from the float model, with entropy and attention-map losses; "
        "W8A8 / W4A8 static activations"
    )
    config_class = EdgeQATConfig
    produces = (Int8StaticLinear, Int4StaticActLinear)
    needs_calibration = True

    def replace(
        self, model: nn.Module, config: QuantConfig, targets: dict[str, nn.Linear], calibration: list[Any] | None
    ) -> Replacements:
        assert isinstance(config, EdgeQATConfig) and calibration is not None
        if config.attention > 0:
            check(
                bool(attention_modules(model)) and hasattr(model, "set_attn_implementation"),
                "edgeqat's attention loss needs a transformers decoder with q_proj/k_proj attention: "
                "set attention=0 for other models",
            )
        teacher = copy.deepcopy(model).eval()
        learned, details = learn_blocks(model, config, targets, calibration, config.block_steps)
        if config.steps:
            log = train(model, teacher, learned, config, calibration)
            details = {**details, "training_first": log.first, "training_last": log.last}
        return integer_replacements(learned, config, details)
