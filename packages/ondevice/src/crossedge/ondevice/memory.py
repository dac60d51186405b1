"""Training memory measured, not estimated.

:class:`SavedTensorMeter` installs ``torch.autograd.graph.saved_tensors_hooks`` and
counts the bytes autograd keeps for the backward pass. It counts each storage once
(two views of one tensor, or one tensor saved by two operations, hold one buffer)
and counts the whole storage a view keeps alive. Storages owned by the model's
parameters and buffers are left out: they are in memory for inference anyway and
are reported separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    storage = t.untyped_storage()
    return (str(t.device), storage.data_ptr())


class SavedTensorMeter:
    """Context manager counting distinct storages saved for backward inside its block."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {_storage_key(t) for t in exclude}
        self.storages: dict[tuple[str, int], int] = {}
        self.saved_calls = 0
        self._hooks: Any = None

    @classmethod
    def for_model(cls, model: nn.Module) -> SavedTensorMeter:
        """A meter that leaves out the model's own parameters and buffers."""
        return cls(exclude=[*model.parameters(), *model.buffers()])

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.saved_calls += 1
        if tensor.layout == torch.strided and tensor.device.type != "meta":
            key = _storage_key(tensor)
            if key not in self._exclude:
                self.storages[key] = max(self.storages.get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def bytes(self) -> int:
        """Bytes of distinct storages saved for backward."""
        return sum(self.storages.values())

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[_storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


@dataclass
class TrainingMemory:
    """Memory of one training step, in bytes, each part measured on real tensors."""

    saved_activation_bytes: int
    trainable_parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    parameter_bytes: int
    trainable_parameters: int

    @property
    def training_bytes(self) -> int:
        """What training adds over inference: saved activations, gradients and optimizer state."""
        return self.saved_activation_bytes + self.gradient_bytes + self.optimizer_state_bytes

    @property
    def total_bytes(self) -> int:
        """Training memory plus all parameters."""
        return self.training_bytes + self.parameter_bytes

    def to_dict(self) -> dict[str, int]:
        """Every field plus the two totals."""
        return {**asdict(self), "training_bytes": self.training_bytes, "total_bytes": self.total_bytes}


def measure_training_step(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
) -> TrainingMemory:
    """Run one real step (forward, backward, optimizer step) and measure what it kept."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer.zero_grad(set_to_none=True)
    with SavedTensorMeter.for_model(model) as meter:
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    grads = [p.grad for p in trainable if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return TrainingMemory(
        saved_activation_bytes=meter.bytes,
        trainable_parameter_bytes=tensor_bytes(trainable),
        gradient_bytes=tensor_bytes(grads),
        optimizer_state_bytes=tensor_bytes(state),
        parameter_bytes=tensor_bytes([*params, *model.buffers()]),
        trainable_parameters=sum(p.numel() for p in trainable),
    )


class Stopwatch:
    """``with Stopwatch() as w: ...`` then ``w.seconds``."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
