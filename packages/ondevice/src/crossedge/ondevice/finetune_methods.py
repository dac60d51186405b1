"""How each fine-tuning method rewires a pre-trained :class:`MobileNetV2` before training.

- ``full``: every parameter (or those of the top blocks) is trained; batch norms keep running statistics.
- ``bias``: every normalization layer becomes an :class:`AffineNorm` whose shift is trained, plus the head.
- ``mobiletl``: the top blocks train their convolutions and the shifts of their normalization layers;
  their activations keep a 1-bit mask for backward (see :mod:`crossedge.ondevice.mobiletl`).
- ``sparse``: the sparse update of Lin et al. (2022), "On-Device Training Under 256KB Memory": a scheme of
  biases to update and of convolutions to update on a ratio of their output channels, chosen greedily
  by importance per measured byte until a memory budget is met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError

from .data import Split
from .memory import SavedTensorMeter, tensor_bytes
from .mobiletl import AffineNorm, sign_mask_version
from .networks import ConvBNAct, MobileNetV2

RATIOS = (0.25, 0.5, 1.0)


def freeze(model: nn.Module) -> None:
    """Stop gradients to every parameter."""
    for p in model.parameters():
        p.requires_grad_(False)


def top_modules(model: MobileNetV2, blocks: int) -> list[nn.Module]:
    """The last ``blocks`` inverted residual blocks, the final 1x1 convolution and the classifier."""
    n_blocks = len(model.inverted_residuals())
    if not 0 <= blocks <= n_blocks:
        raise CrossedgeError(f"--blocks must be between 0 and {n_blocks} for this network, got {blocks}")
    features = list(model.features)
    return [*features[len(features) - 1 - blocks :], model.classifier]


def replace_norms(module: nn.Module, trainable_shift: bool = True) -> None:
    """Swap every BatchNorm2d inside ``module`` for an :class:`AffineNorm` with the same inference output."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, AffineNorm.from_batch_norm(child, trainable_shift))
        else:
            replace_norms(child, trainable_shift)


def replace_activations(module: nn.Module) -> None:
    """Swap every ReLU6 / Hard-Swish inside ``module`` for its 1-bit-mask version."""
    for name, child in module.named_children():
        if isinstance(child, (nn.ReLU6, nn.Hardswish)):
            setattr(module, name, sign_mask_version(child))
        else:
            replace_activations(child)


def setup_full(model: MobileNetV2, blocks: int | None = None) -> None:
    """Train everything, or only the top ``blocks`` (convolutions, norm scales and shifts) and the head."""
    if blocks is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    freeze(model)
    for module in top_modules(model, blocks):
        for p in module.parameters():
            p.requires_grad_(True)


def setup_bias(model: MobileNetV2) -> None:
    """Train only the normalization shifts of every layer and the head (TinyTL-style bias update)."""
    freeze(model)
    replace_norms(model, trainable_shift=True)
    for p in model.classifier.parameters():
        p.requires_grad_(True)


def setup_mobiletl(model: MobileNetV2, blocks: int = 3) -> None:
    """MobileTL on the top ``blocks``: convolutions and norm shifts trained, 1-bit activation masks."""
    freeze(model)
    replace_norms(model, trainable_shift=False)
    for module in top_modules(model, blocks):
        replace_activations(module)
        for sub in module.modules():
            if isinstance(sub, nn.Conv2d):
                sub.weight.requires_grad_(True)
            elif isinstance(sub, AffineNorm):
                sub.shift = nn.Parameter(sub.shift.detach().clone())
            elif isinstance(sub, nn.Linear):
                sub.requires_grad_(True)


# ----------------------------------------------------------------- sparse update


class PartialConv2d(nn.Module):
    """A convolution whose first ``ratio`` of output channels can be trained and the rest are frozen.

    The frozen part lives in a buffer, so gradients and optimizer state exist only for the
    trained channels; the input is saved once for both parts.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1:
            raise CrossedgeError("PartialConv2d splits dense convolutions only (depthwise ones update biases)")
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.out_channels = conv.out_channels
        self.register_buffer("frozen", conv.weight.detach().clone())
        self.trained = nn.Parameter(conv.weight.detach()[:0].clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    @property
    def ratio(self) -> float:
        """Fraction of output channels that are trained."""
        return self.trained.shape[0] / self.out_channels

    def full_weight(self) -> torch.Tensor:
        """The current weight, trained channels first."""
        return torch.cat([self.trained.detach(), self.frozen[self.trained.shape[0] :]])

    def set_ratio(self, ratio: float) -> None:
        """Train the first ``ratio`` of output channels from now on (keeps what was learned)."""
        weight = self.full_weight()
        k = int(round(ratio * self.out_channels))
        self.frozen = weight.clone()
        self.trained = nn.Parameter(weight[:k].clone(), requires_grad=k > 0)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(x, w, None, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.trained.shape[0]
        if k == 0:
            out = self._conv(x, self.frozen)
        elif k == self.out_channels:
            out = self._conv(x, self.trained)
        else:
            out = torch.cat([self._conv(x, self.trained), self._conv(x, self.frozen[k:])], dim=1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


@dataclass(frozen=True)
class UpdateUnit:
    """One choice of the sparse scheme: a layer's bias, or a ratio of a layer's weight."""

    layer: int
    kind: str  # "bias" or "weight"
    ratio: float = 1.0

    def label(self) -> str:
        """Short text such as ``w12@0.5`` or ``b7``."""
        return f"w{self.layer}@{self.ratio:g}" if self.kind == "weight" else f"b{self.layer}"


def sparse_layers(model: MobileNetV2) -> list[tuple[nn.Module, nn.Module]]:
    """(convolution holder, its norm) for every conv+norm pair, input side first, after :func:`prepare_sparse`."""
    pairs = []
    for module in model.features.modules():
        if isinstance(module, ConvBNAct):
            pairs.append((module, module[1]))
    return pairs


def prepare_sparse(model: MobileNetV2) -> None:
    """Fold norms into affine layers and wrap dense convolutions so their channels can be split."""
    freeze(model)
    replace_norms(model, trainable_shift=False)
    for module in model.features.modules():
        if isinstance(module, ConvBNAct) and isinstance(module[0], nn.Conv2d) and module[0].groups == 1:
            module[0] = PartialConv2d(module[0])
    for p in model.classifier.parameters():
        p.requires_grad_(True)


def apply_scheme(model: MobileNetV2, scheme: dict[int, dict[str, Any]]) -> None:
    """Set which biases and weight ratios train: ``{layer: {"bias": bool, "ratio": float}}``."""
    for i, (holder, norm) in enumerate(sparse_layers(model)):
        choice = scheme.get(i, {})
        if isinstance(norm.shift, nn.Parameter):
            norm.shift.requires_grad_(bool(choice.get("bias")))
        elif choice.get("bias"):
            shift = norm.shift
            del norm.shift
            norm.shift = nn.Parameter(shift.clone())
        conv = holder[0]
        if isinstance(conv, PartialConv2d):
            conv.set_ratio(float(choice.get("ratio", 0.0)))


def scheme_memory(model: MobileNetV2, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Measured saved activations and gradients of one step, plus Adam's two moments per trained element."""
    model.zero_grad(set_to_none=True)
    with SavedTensorMeter.for_model(model) as meter:
        loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = tensor_bytes(p.grad for p in trained if p.grad is not None)
    model.zero_grad(set_to_none=True)
    state = 2 * sum(p.numel() * p.element_size() for p in trained)
    return {"saved": meter.bytes, "grads": grads, "state": state, "total": meter.bytes + grads + state}


def importance(model: MobileNetV2, split: Split, batch_size: int, n_batches: int = 4) -> dict[UpdateUnit, float]:
    """Sum of squared gradients (empirical Fisher) each unit would receive, from a few target batches."""
    layers = sparse_layers(model)
    scores: dict[UpdateUnit, float] = {}
    saved = {i: (h[0].ratio if isinstance(h[0], PartialConv2d) else None) for i, h in enumerate(layers)}
    apply_scheme(model, {i: {"bias": True, "ratio": 1.0} for i in range(len(layers))})
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(split), generator=generator)
    sums: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        if len(idx) == 0:
            break
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(split.x[idx]), split.y[idx]).backward()
        for i, (holder, norm) in enumerate(layers):
            conv = holder[0]
            per_channel = conv.trained.grad.pow(2).flatten(1).sum(1) if isinstance(conv, PartialConv2d) else None
            bias = norm.shift.grad.pow(2).sum()
            prev = sums.get(i)
            sums[i] = (
                per_channel if prev is None or prev[0] is None else prev[0] + per_channel,
                bias if prev is None else prev[1] + bias,
            )
    model.zero_grad(set_to_none=True)
    for i, (per_channel, bias) in sums.items():
        scores[UpdateUnit(i, "bias")] = float(bias)
        if per_channel is not None:
            for r in RATIOS:
                k = int(round(r * per_channel.numel()))
                scores[UpdateUnit(i, "weight", r)] = float(per_channel[:k].sum())
    apply_scheme(model, {i: {"bias": False, "ratio": saved[i] or 0.0} for i in saved})
    return scores


def choose_sparse_scheme(
    model: MobileNetV2, split: Split, budget_bytes: float, *, batch_size: int = 32
) -> tuple[dict[int, dict[str, Any]], dict[str, int]]:
    """Greedily add the unit with the best importance per measured byte while the step fits the budget."""
    scores = importance(model, split, batch_size)
    x, y = split.x[:batch_size], split.y[:batch_size]
    scheme: dict[int, dict[str, Any]] = {}
    apply_scheme(model, scheme)
    current = scheme_memory(model, x, y)
    if current["total"] > budget_bytes:
        raise CrossedgeError(
            f"training only the classifier already needs {current['total'] / 1024:.1f} KiB at batch size "
            f"{batch_size}; raise --budget-kb or lower --batch-size"
        )
    gained: dict[int, float] = {}
    while True:
        best = None
        for unit, score in scores.items():
            choice = scheme.get(unit.layer, {})
            if unit.kind == "bias" and choice.get("bias"):
                continue
            if unit.kind == "weight" and unit.ratio <= choice.get("ratio", 0.0):
                continue
            benefit = score - (gained.get(unit.layer, 0.0) if unit.kind == "weight" else 0.0)
            if benefit <= 0:
                continue
            trial = {k: dict(v) for k, v in scheme.items()}
            trial.setdefault(unit.layer, {})["bias" if unit.kind == "bias" else "ratio"] = (
                True if unit.kind == "bias" else unit.ratio
            )
            apply_scheme(model, trial)
            cost = scheme_memory(model, x, y)
            if cost["total"] > budget_bytes:
                continue
            value = benefit / max(1, cost["total"] - current["total"])
            if best is None or value > best[0]:
                best = (value, unit, trial, cost)
        apply_scheme(model, scheme)
        if best is None:
            break
        _, unit, scheme, current = best
        if unit.kind == "weight":
            gained[unit.layer] = scores[unit]
    apply_scheme(model, scheme)
    return scheme, current


def setup_sparse(model: MobileNetV2, split: Split, budget_bytes: float, *, batch_size: int = 32) -> dict[str, Any]:
    """Prepare ``model`` for the sparse update chosen under ``budget_bytes``; returns the scheme in words."""
    prepare_sparse(model)
    scheme, memory = choose_sparse_scheme(model, split, budget_bytes, batch_size=batch_size)
    return {
        "biases": sorted(i for i, c in scheme.items() if c.get("bias")),
        "weights": {str(i): c["ratio"] for i, c in sorted(scheme.items()) if c.get("ratio")},
        "layers": len(sparse_layers(model)),
        "search_memory_bytes": memory["total"],
    }
