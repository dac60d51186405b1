"""Cross-subject decoding: per-subject adapters into a shared trunk, reset-tuning and cyclic reconstruction.

MindBridge's recipe at small scale: each subject has its own :class:`SubjectAdapter` (its
channel count and length), all feed one :class:`SharedTrunk` that maps to the target space
(class logits, or a stimulus embedding). A new subject is added by
:meth:`CrossSubjectModel.reset_tune`, which trains a fresh adapter with everything else
frozen and in eval mode, so no other parameter or buffer changes (a tested guarantee).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from crossedge.core import CrossedgeError

FORMAT = "crossedge.cross-subject/1"
TASKS = ("classify", "embed")


class CrossSubjectError(CrossedgeError):
    """A subject is unknown or duplicated, an input has the wrong shape, or a saved model is damaged."""


class SubjectAdapter(nn.Module):
    """One subject's (N, T_s, C_s) input to a shared (N, T, D): per-channel norm, channel mixing, resampling.

    The time axis is resampled by adaptive average pooling, so any length is accepted; the
    channel count must be ``input_shape[1]``. With ``out_dim`` set, the adapter also holds the
    subject's decoder head (target -> subject space) used by the cyclic loss.
    """

    def __init__(self, input_shape: tuple[int, int], dim: int, length: int, out_dim: int | None = None):
        super().__init__()
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        t_s, c_s = self.input_shape
        self.length = length
        self.norm = nn.BatchNorm1d(c_s)
        self.mix = nn.Linear(c_s, dim)
        self.decoder = nn.Linear(out_dim, t_s * c_s) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T_s, C_s) -> (N, T, D)."""
        if x.ndim != 3 or x.shape[2] != self.input_shape[1]:
            raise CrossSubjectError(
                f"adapter expects (N, T, {self.input_shape[1]}) inputs, got {tuple(x.shape)}; "
                "give each subject's data to its own adapter"
            )
        h = self.norm(x.transpose(1, 2))  # (N, C, T)
        h = F.adaptive_avg_pool1d(h, self.length).transpose(1, 2)  # (N, T, C)
        return self.mix(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Target-space (N, out_dim) back to this subject's normalized input space (N, T_s, C_s)."""
        if self.decoder is None:
            raise CrossSubjectError("this adapter has no decoder; build the model with cyclic_weight > 0")
        return self.decoder(z).view(z.shape[0], *self.input_shape)


class SharedTrunk(nn.Module):
    """The shared (N, T, D) -> (N, out_dim) map: temporal convolution, batch norm, pooling, a linear head."""

    def __init__(self, dim: int, out_dim: int, hidden: int = 64, kernel: int = 5):
        super().__init__()
        self.conv = nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(N, T, D) -> (N, out_dim)."""
        z = F.gelu(self.norm(self.conv(h.transpose(1, 2))))
        return self.head(z.mean(dim=2))


class CrossSubjectModel(nn.Module):
    """Adapters keyed by subject name plus one shared trunk; ``task`` is ``classify`` or ``embed``."""

    def __init__(
        self,
        subjects: Mapping[str, tuple[int, int]],
        out_dim: int,
        *,
        dim: int = 32,
        length: int = 64,
        hidden: int = 64,
        task: str = "classify",
        cyclic_weight: float = 0.0,
    ):
        super().__init__()
        if task not in TASKS:
            raise CrossSubjectError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        self.config = dict(
            out_dim=out_dim, dim=dim, length=length, hidden=hidden, task=task, cyclic_weight=float(cyclic_weight)
        )
        self.adapters = nn.ModuleDict()
        self.trunk = SharedTrunk(dim, out_dim, hidden)
        for name, shape in subjects.items():
            self.add_subject(name, shape)

    @property
    def subjects(self) -> dict[str, tuple[int, int]]:
        """Subject name -> its (T_s, C_s) input shape."""
        return {name: adapter.input_shape for name, adapter in self.adapters.items()}

    def add_subject(self, name: str, input_shape: tuple[int, int], replace: bool = False) -> SubjectAdapter:
        """A fresh adapter for ``name`` with inputs (T_s, C_s); an existing name is refused unless ``replace``."""
        if name in self.adapters and not replace:
            raise CrossSubjectError(f"subject {name!r} already has an adapter; pass replace=True to reset it")
        c = self.config
        decoder_dim = c["out_dim"] if c["cyclic_weight"] > 0 else None
        adapter = SubjectAdapter(tuple(input_shape), c["dim"], c["length"], decoder_dim)
        self.adapters[name] = adapter
        return adapter

    def forward(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Subject ``name``'s inputs (N, T_s, C_s) to the target space (N, out_dim)."""
        return self.trunk(self._adapter(name)(x))

    def _adapter(self, name: str) -> SubjectAdapter:
        if name not in self.adapters:
            known = ", ".join(self.adapters) or "none"
            raise CrossSubjectError(f"no adapter for subject {name!r}; the subjects are: {known}")
        return self.adapters[name]

    def loss(self, name: str, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss on one subject's batch, plus the cyclic reconstruction loss when enabled."""
        z = self(name, x)
        if self.config["task"] == "classify":
            loss = F.cross_entropy(z, target)
        else:
            loss = (1 - F.cosine_similarity(z, target.to(z.dtype), dim=1)).mean()
        weight = self.config["cyclic_weight"]
        if weight > 0:
            loss = loss + weight * self.cyclic_loss(name, x, z)
        return loss

    def cyclic_loss(self, name: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """MindBridge's cycle: target -> subject (matches the normalized input) -> target (matches ``z``)."""
        adapter = self._adapter(name)
        x_hat = adapter.decode(z)
        # the reconstruction target is the input standardized per channel over the batch (scale-free)
        x_norm = ((x - x.mean(dim=(0, 1), keepdim=True)) / (x.std(dim=(0, 1), keepdim=True) + 1e-5)).detach()
        back = self.trunk(adapter.mix(F.adaptive_avg_pool1d(x_hat.transpose(1, 2), adapter.length).transpose(1, 2)))
        return F.mse_loss(x_hat, x_norm) + F.mse_loss(back, z.detach())

    @torch.no_grad()
    def predict(self, name: str, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Target-space outputs in eval mode (the mode is restored afterwards)."""
        was = self.training
        self.eval()
        try:
            return torch.cat([self(name, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        finally:
            self.train(was)

    def reset_tune(
        self,
        name: str,
        x: torch.Tensor,
        target: torch.Tensor,
        steps: int = 200,
        lr: float = 3e-3,
        seed: int = 0,
        batch_size: int = 32,
    ) -> list[float]:
        """MindBridge's reset-tuning: a fresh adapter for ``name`` trained alone, everything else frozen.

        The trunk and every other adapter are put in eval mode (batch-norm buffers do not move)
        and have no gradient; only the new adapter's parameters are in the optimizer. Returns the
        loss per step.
        """
        adapter = self.add_subject(name, (x.shape[1], x.shape[2]), replace=True)
        frozen = [p for n, p in self.named_parameters() if not n.startswith(f"adapters.{name}.")]
        flags = [p.requires_grad for p in frozen]
        was = self.training
        try:
            for p in frozen:
                p.requires_grad_(False)
            self.eval()
            adapter.train()
            return _train(
                {name: (x, target)}, self, list(adapter.parameters()), steps, lr, seed, batch_size, train_mode=False
            )
        finally:
            for p, flag in zip(frozen, flags, strict=True):
                p.requires_grad_(flag)
            self.train(was)


def _train(
    batches: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    model: CrossSubjectModel,
    params: list[nn.Parameter],
    steps: int,
    lr: float,
    seed: int,
    batch_size: int,
    train_mode: bool = True,
) -> list[float]:
    from .training import Objective, train_steps

    generator = torch.Generator().manual_seed(seed)
    if train_mode:
        model.train()

    def summed(module: CrossSubjectModel, drawn: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return sum(module.loss(name, x, target) for name, (x, target) in drawn.items())

    def step_loss(objective: nn.Module, _step: int) -> torch.Tensor:
        drawn = {}
        for name, (x, target) in batches.items():
            idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
            drawn[name] = (x[idx], target[idx])
        return objective(drawn)

    return train_steps(Objective(model, summed), params, step_loss, steps, lr=lr, weight_decay=1e-4)


def fit(
    model: CrossSubjectModel,
    batches_by_subject: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = 32,
) -> list[float]:
    """Train every adapter and the trunk jointly: each step sums one batch per subject. Returns the losses."""
    for name in batches_by_subject:
        model._adapter(name)
    torch.manual_seed(seed)
    return _train(batches_by_subject, model, list(model.parameters()), steps, lr, seed, batch_size)


def save_model(model: CrossSubjectModel, path: str | Path) -> Path:
    """Write the weights as safetensors with the config and subjects' input shapes in the metadata."""
    from . import tagged

    return tagged.write(
        path, model.state_dict(), FORMAT, error=CrossSubjectError, config=model.config, subjects=model.subjects
    )


def load_model(path: str | Path) -> CrossSubjectModel:
    """Read a :func:`save_model` file; a damaged, foreign or incomplete file is refused in one line."""
    from . import tagged

    def build(fields: dict[str, Any]) -> CrossSubjectModel:
        return CrossSubjectModel({k: tuple(v) for k, v in fields["subjects"].items()}, **fields["config"])

    return tagged.load_module(path, FORMAT, "cross-subject model", CrossSubjectError, build)
