"""Is cross-attention an explanation? Cross-attention against gradient saliency, per step.

For one utterance and a token sequence (decoded, or a reference), decoder step ``t``
predicts token ``y_t``. For every step we compare, over the memory positions ``s``:

- attention: the cross-attention weights of each head of each decoder layer, the mean over
  a layer's heads, and the mean over every layer and head (the aggregate);
- saliency on the memory: Captum's attribution (``saliency`` = |gradient|,
  ``input_x_gradient`` or ``integrated_gradients``) of ``log p(y_t)`` with respect to the
  encoder output, summed in absolute value over the width;
- saliency on the input: the same with respect to the input spectrogram, summed in absolute
  value over the feature axis and then over the ``frames_per_position`` frames of each memory
  position.

Every map is normalised per step before any comparison (absolute values divided by their
sum, so each is non-negative and sums to 1; an all-zero map becomes uniform). Per step we
compute Pearson's and Spearman's correlation (scipy.stats; a constant map carries no order,
so its correlation is defined as 0) and average over steps, and two overlap measures:

- ``relevance_captured`` (the share of relevance captured): ``sum_s min(a_s, r_s)`` of the
  normalised attention ``a`` and saliency ``r``, the saliency mass that attention puts in
  the same place: 1 when the maps agree, 0 when they are disjoint. The paper's claim that
  cross-attention is half an explanation reads as a value near 0.5.
- ``top_k_overlap``: ``|top_k(a) & top_k(r)| / k`` with ``k = ceil(top_fraction * S)``.

Deletion curves: per step, memory positions are deleted (set to zero, or to the mean memory
vector) in the order of the aggregate attention, of the memory saliency and of a seeded
random permutation; ``log p(y_t)`` is tracked as the deleted fraction goes from 0 to 1.
Curves are averaged over steps; ``auc`` is their mean (trapezoid area over the fraction).
An ordering that finds what the model uses makes the curve fall early, so a lower area is
a more faithful ordering.

Models are anything with the :class:`CrossAttentionModel` shape; saved ones are opened with
:func:`load_explainable`, which dispatches on the format tag stored in the safetensors metadata.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from crossedge.core.errors import CrossedgeError

from . import asr

#: format tag of a saved model folder -> "module:function" that loads it
LOADERS: dict[str, str] = {
    "crossedge-encdec-asr-v1": "crossedge.crossmodal.encdec:load",
    "crossedge-zipper-v1": "crossedge.crossmodal.zipper:load",
}
WEIGHTS = "model.safetensors"
METHODS = ("saliency", "input_x_gradient", "integrated_gradients")
FILLS = ("zero", "mean")


class AuditError(CrossedgeError, ValueError):
    """An audit that cannot run as asked: unknown model format, bad tokens, unknown method."""


@runtime_checkable
class CrossAttentionModel(Protocol):
    """A speech-to-text model whose decoder cross-attends to an encoder memory.

    ``tokens`` given to :meth:`decode` begin with BOS and ``logits[:, t]`` scores the token
    after ``tokens[:, t]``; the attention tensors are the softmax weights the forward pass
    used, one ``(N, heads, L, S)`` tensor per cross-attention layer.
    """

    frames_per_position: int
    tokenizer: Any

    def encode(self, features: torch.Tensor) -> torch.Tensor: ...

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def transcribe(self, features: torch.Tensor, max_len: int) -> str: ...


def load_explainable(folder: str | Path) -> CrossAttentionModel:
    """Open a saved model folder by the format tag of its ``model.safetensors`` (see :data:`LOADERS`)."""
    from . import tagged

    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise AuditError(f"{path} does not exist; give a model folder saved by crossedge (encdec or zipper)")
    tag = tagged.format_of(path, AuditError)
    if tag not in LOADERS:
        raise AuditError(f"{path} has format {tag!r}, which the audit cannot open; known: {', '.join(sorted(LOADERS))}")
    module_name, _, function = LOADERS[tag].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise AuditError(
            f"format {tag!r} needs {module_name}, which is not installed ({exc.name} missing); "
            "install the crossedge release that wrote the model"
        ) from exc
    loader = getattr(module, function, None)
    if loader is None:
        raise AuditError(f"format {tag!r}: {module_name} has no {function}(); install a matching crossedge release")
    return loader(folder)


# ---- maps and their comparison ------------------------------------------------------------


def normalize(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows of ``|maps|`` divided by their sum (non-negative, sum 1); an all-zero row becomes uniform."""
    x = np.abs(np.asarray(maps, dtype=np.float64))
    total = x.sum(axis=-1, keepdims=True)
    uniform = np.full_like(x, 1.0 / x.shape[-1])
    return np.where(total > 0, x / np.where(total > 0, total, 1.0), uniform)


def _constant(x: np.ndarray) -> bool:
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two vectors (0 when either is constant: no linear association to measure)."""
    from scipy.stats import pearsonr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or _constant(a) or _constant(b):
        return 0.0
    return float(pearsonr(a, b).statistic)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two vectors (0 when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or _constant(a) or _constant(b):
        return 0.0
    return float(spearmanr(a, b).statistic)


def relevance_captured(attention: np.ndarray, relevance: np.ndarray) -> float:
    """``sum_s min(a_s, r_s)`` of two normalised maps: the relevance mass attention puts in the same place."""
    return float(np.minimum(normalize(attention), normalize(relevance)).sum())


def top_k_overlap(attention: np.ndarray, relevance: np.ndarray, k: int) -> float:
    """Share of the ``k`` most-attended positions that are also among the ``k`` most relevant."""
    k = max(1, min(k, len(attention)))
    top_a = set(np.argsort(-np.asarray(attention), kind="stable")[:k].tolist())
    top_r = set(np.argsort(-np.asarray(relevance), kind="stable")[:k].tolist())
    return len(top_a & top_r) / k


def compare(attention: np.ndarray, relevance: np.ndarray, top_fraction: float = 0.2) -> dict[str, float]:
    """Per-step metrics of two (steps, S) maps, averaged over steps (both normalised first)."""
    a, r = normalize(attention), normalize(relevance)
    k = max(1, math.ceil(top_fraction * a.shape[-1]))
    rows = [
        (pearson(x, y), spearman(x, y), relevance_captured(x, y), top_k_overlap(x, y, k))
        for x, y in zip(a, r, strict=True)
    ]
    p, s, c, o = (float(np.mean(v)) for v in zip(*rows, strict=True))
    return {"pearson": p, "spearman": s, "relevance_captured": c, "top_k_overlap": o}


def pool_frames(per_frame: torch.Tensor, frames_per_position: int, positions: int) -> torch.Tensor:
    """Sum (steps, T) frame relevance over each memory position's frames -> (steps, positions)."""
    steps, frames = per_frame.shape
    width = positions * frames_per_position
    if frames < width:
        per_frame = torch.cat([per_frame, per_frame.new_zeros(steps, width - frames)], dim=1)
    pooled = per_frame[:, :width].reshape(steps, positions, frames_per_position).sum(-1)
    if frames > width:  # frames beyond the last full position belong to it
        pooled[:, -1] += per_frame[:, width:].sum(-1)
    return pooled


# ---- the audit ----------------------------------------------------------------------------


@dataclass
class Audit:
    """One utterance's audit: the maps (numpy, normalised per step) and the metrics (JSON-ready)."""

    text: str
    tokens: list[int]
    attention: list[np.ndarray]  # per layer (heads, steps, S), raw softmax weights
    attention_mean: np.ndarray  # (steps, S) mean over layers and heads, normalised
    memory_saliency: np.ndarray  # (steps, S) normalised
    input_saliency_frames: np.ndarray  # (steps, T) normalised per step
    input_saliency: np.ndarray  # (steps, S) pooled to memory positions, normalised
    metrics: dict = field(default_factory=dict)
    pieces: list[str] = field(default_factory=list)  # each token as text, for labels


def _targets(model: CrossAttentionModel, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs ``[[BOS, *tokens]]`` and the targets of each step ``[*tokens, EOS]``.

    BOS and EOS are the model's ``bos_id`` / ``eos_id`` when it has them (a Zipper speaks its
    text tower's tokens), else :data:`asr.BOS` / :data:`asr.EOS`.
    """
    bos, eos = getattr(model, "bos_id", asr.BOS), getattr(model, "eos_id", asr.EOS)
    inputs = torch.tensor([[bos, *tokens]])
    targets = torch.tensor([*tokens, eos])
    return inputs, targets


def _step_log_probs(model: CrossAttentionModel, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """(B, V) log-probs where row b is decoder step ``b % steps`` of memory copy ``b``."""
    steps = inputs.shape[1]
    logits, _ = model.decode(memory, inputs.expand(memory.shape[0], -1))
    rows = torch.arange(memory.shape[0], device=memory.device) % steps
    return logits.log_softmax(-1)[torch.arange(memory.shape[0]), rows]


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AuditError(
            f"the audit needs {module.split('.')[0]}, which is not installed; pip install 'crossedge-crossmodal[audit]'"
        ) from exc


def _attribute(forward, inputs: torch.Tensor, targets: torch.Tensor, method: str, ig_steps: int) -> torch.Tensor:
    captum = _require("captum.attr")

    if method == "saliency":
        return captum.Saliency(forward).attribute(inputs, target=targets.tolist(), abs=True)
    if method == "input_x_gradient":
        return captum.InputXGradient(forward).attribute(inputs, target=targets.tolist())
    if method == "integrated_gradients":
        return captum.IntegratedGradients(forward).attribute(
            inputs, target=targets.tolist(), n_steps=ig_steps, internal_batch_size=max(1, inputs.shape[0])
        )
    raise AuditError(f"unknown saliency method {method!r}; pick one of {', '.join(METHODS)}")


def saliency_maps(
    model: CrossAttentionModel, features: torch.Tensor, tokens: list[int], method: str = "saliency", ig_steps: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``(memory relevance (steps, S), input relevance per frame (steps, T))`` of ``log p(y_t)``."""
    inputs, targets = _targets(model, tokens)
    steps = inputs.shape[1]
    with torch.no_grad():
        memory = model.encode(features)

    def on_memory(m: torch.Tensor) -> torch.Tensor:
        return _step_log_probs(model, m, inputs)

    def on_input(f: torch.Tensor) -> torch.Tensor:
        return _step_log_probs(model, model.encode(f), inputs)

    mem = _attribute(on_memory, memory.expand(steps, -1, -1).clone().requires_grad_(), targets, method, ig_steps)
    feat = _attribute(on_input, features.expand(steps, -1, -1).clone().requires_grad_(), targets, method, ig_steps)
    return mem.abs().sum(-1).detach(), feat.abs().sum(-1).detach()


def deletion_curves(
    model: CrossAttentionModel,
    memory: torch.Tensor,
    tokens: list[int],
    orders: dict[str, np.ndarray],
    fill: str = "zero",
    points: int = 11,
) -> dict[str, dict]:
    """``{name: {"fractions", "curve", "auc"}}``: mean ``log p(y_t)`` as positions go in each (steps, S) order."""
    if fill not in FILLS:
        raise AuditError(f"unknown deletion fill {fill!r}; pick one of {', '.join(FILLS)}")
    inputs, targets = _targets(model, tokens)
    steps, positions = inputs.shape[1], memory.shape[1]
    counts = sorted({round(f * positions) for f in np.linspace(0.0, 1.0, max(2, points))})
    replacement = (
        torch.zeros_like(memory[0]) if fill == "zero" else memory[0].mean(0, keepdim=True).expand_as(memory[0])
    )
    out = {}
    for name, order in orders.items():
        batch = memory.expand(len(counts) * steps, -1, -1).clone()
        for i, count in enumerate(counts):
            for t in range(steps):
                gone = torch.as_tensor(order[t][:count], dtype=torch.long)
                batch[i * steps + t, gone] = replacement[gone]
        with torch.no_grad():
            logp = _step_log_probs(model, batch, inputs)
        picked = logp[torch.arange(batch.shape[0]), targets.repeat(len(counts))].view(len(counts), steps)
        curve = picked.mean(1).tolist()
        fractions = [c / positions for c in counts]
        auc = float(np.trapezoid(curve, fractions)) if len(counts) > 1 else curve[0]
        out[name] = {"fractions": fractions, "curve": curve, "auc": auc}
    return out


def audit(
    model: CrossAttentionModel,
    features: torch.Tensor,
    tokens: list[int] | None = None,
    method: str = "saliency",
    top_fraction: float = 0.2,
    points: int = 11,
    seed: int = 0,
    max_len: int = 64,
    ig_steps: int = 16,
) -> Audit:
    """Audit one utterance (1, T, F) on ``tokens`` (without BOS/EOS; the greedy transcription when None)."""
    if method not in METHODS:
        raise AuditError(f"unknown saliency method {method!r}; pick one of {', '.join(METHODS)}")
    if features.dim() != 3 or features.shape[0] != 1:
        raise AuditError(f"features must be one utterance (1, T, F), got {tuple(features.shape)}")
    if hasattr(model, "eval"):
        model.eval()
    text = model.transcribe(features, max_len) if tokens is None else model.tokenizer.decode(tokens)
    tokens = list(model.tokenizer.encode(text)) if tokens is None else [int(t) for t in tokens]
    inputs, _ = _targets(model, tokens)
    with torch.no_grad():
        memory = model.encode(features)
        _, attentions = model.decode(memory, inputs)
    layers = [a[0].detach().double().numpy() for a in attentions]  # (heads, steps, S)
    attention_mean = normalize(np.mean([layer.mean(0) for layer in layers], axis=0))
    mem_raw, frames_raw = saliency_maps(model, features, tokens, method, ig_steps)
    positions = memory.shape[1]
    memory_saliency = normalize(mem_raw.double().numpy())
    input_saliency = normalize(pool_frames(frames_raw, model.frames_per_position, positions).double().numpy())

    metrics: dict[str, Any] = {
        "text": text, "steps": len(tokens) + 1, "memory_positions": positions, "frames": features.shape[1],
        "frames_per_position": model.frames_per_position, "method": method, "top_fraction": top_fraction,
    }  # fmt: skip
    for name, relevance in (("memory", memory_saliency), ("input", input_saliency)):
        metrics[name] = {
            "aggregate": compare(attention_mean, relevance, top_fraction),
            "layers": [
                {
                    **compare(layer.mean(0), relevance, top_fraction),
                    "heads": [compare(head, relevance, top_fraction) for head in layer],
                }
                for layer in layers
            ],
        }
    rng = np.random.default_rng(seed)
    orders = {
        "attention": np.argsort(-attention_mean, axis=1, kind="stable"),
        "saliency": np.argsort(-memory_saliency, axis=1, kind="stable"),
        "random": np.stack([rng.permutation(positions) for _ in range(len(tokens) + 1)]),
    }
    metrics["deletion"] = {fill: deletion_curves(model, memory, tokens, orders, fill, points) for fill in FILLS}
    return Audit(
        text, tokens, layers, attention_mean, memory_saliency, normalize(frames_raw.double().numpy()),
        input_saliency, metrics, [model.tokenizer.decode([t]) or str(t) for t in tokens],
    )  # fmt: skip


def summarize(audits: list[Audit]) -> dict:
    """Metrics averaged over several utterances' audits (per layer, aggregate, deletion AUCs)."""
    if not audits:
        raise AuditError("nothing to summarize: no audits")
    out: dict[str, Any] = {"utterances": len(audits)}
    keys = ("pearson", "spearman", "relevance_captured", "top_k_overlap")
    for name in ("memory", "input"):
        parts = [a.metrics[name] for a in audits]
        out[name] = {
            "aggregate": {k: float(np.mean([p["aggregate"][k] for p in parts])) for k in keys},
            "layers": [
                {k: float(np.mean([p["layers"][i][k] for p in parts])) for k in keys}
                for i in range(len(parts[0]["layers"]))
            ],
        }
    out["deletion_auc"] = {
        fill: {
            order: float(np.mean([a.metrics["deletion"][fill][order]["auc"] for a in audits]))
            for order in audits[0].metrics["deletion"][fill]
        }
        for fill in FILLS
    }
    return out


def format_summary(summary: dict) -> str:
    """A terminal table of :func:`summarize`'s output."""
    lines = [f"{'saliency on':<12}{'map':<12}{'pearson':>9}{'spearman':>10}{'captured':>10}{'top-k':>8}"]
    for name in ("memory", "input"):
        rows = [(f"layer {i}", m) for i, m in enumerate(summary[name]["layers"])]
        for label, m in [*rows, ("aggregate", summary[name]["aggregate"])]:
            lines.append(
                f"{name:<12}{label:<12}{m['pearson']:>9.3f}{m['spearman']:>10.3f}"
                f"{m['relevance_captured']:>10.3f}{m['top_k_overlap']:>8.3f}"
            )
    for fill, aucs in summary["deletion_auc"].items():
        lines.append(f"deletion ({fill}) AUC of log p: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    return "\n".join(lines)


def plot(result: Audit, features: torch.Tensor, path: str | Path, frames_per_position: int) -> Path:
    """A PNG: the spectrogram with both maps (summed over steps) over it, and the two step-by-frame maps."""
    from .charts import chart

    spec = features[0].detach().numpy().T
    frames = spec.shape[1]
    attention_frames = np.repeat(result.attention_mean, frames_per_position, axis=1)[:, :frames] / frames_per_position
    saliency_frames = result.input_saliency_frames
    labels = [*(p if p.strip() else "\u2423" for p in result.pieces), "</s>"]
    with chart(path, (10, 8), rows=3, dpi=100, sharex=True) as axes:
        _draw(axes, result, spec, attention_frames, saliency_frames, labels)
    return Path(path)


def _draw(axes: Any, result: Audit, spec: np.ndarray, attention_frames, saliency_frames, labels: list[str]) -> None:
    axes[0].imshow(spec, aspect="auto", origin="lower", cmap="gray_r")
    over = axes[0].twinx()
    over.plot(attention_frames.mean(0), color="tab:orange", label="cross-attention (mean over layers, heads)")
    over.plot(saliency_frames.mean(0), color="tab:blue", label="input saliency")
    over.set_yticks([])
    over.legend(loc="upper right", fontsize=8)
    axes[0].set_title(f"{result.text!r}: spectrogram with both maps (averaged over decoder steps)")
    axes[0].set_ylabel("feature")
    for ax, data, title in (
        (axes[1], attention_frames, "cross-attention per decoder step"),
        (axes[2], saliency_frames, "input saliency per decoder step"),
    ):
        ax.imshow(data, aspect="auto", origin="upper", cmap="magma", interpolation="nearest")
        ax.set_title(title)
        ax.set_ylabel("predicted token")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    axes[2].set_xlabel("input frame")
