"""One training loop for the package, run through Hugging Face ``accelerate``.

Every trainer here (subject adapters, alignment, fusion, the speech towers, Zipper) hands
:func:`train_steps` a model, the parameters to optimize and a batch function. On this
machine the :class:`accelerate.Accelerator` runs on the CPU; the same code runs on GPUs or
several machines when the command is started with ``accelerate launch`` (accelerate then
places the model, wraps it for distributed data parallel and reduces gradients).

Batches are drawn by the caller's seeded generator, so a CPU run is reproducible, and the
loop is the same for every caller: zero grad, loss, ``accelerator.backward``, optional
gradient clipping, step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

_ACCELERATOR: Any = None


def accelerator() -> Any:
    """The process's :class:`accelerate.Accelerator` (made once; ``accelerate launch`` configures it)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        import functools

        import accelerate.optimizer
        from accelerate import Accelerator

        # accelerate looks for the optional lomo_optim package (importlib find_spec) on every
        # optimizer step, about 2 ms a step here, more than a small model's whole step; the
        # answer cannot change within a process, so it is looked up once
        accelerate.optimizer.is_lomo_available = functools.cache(accelerate.optimizer.is_lomo_available)
        _ACCELERATOR = Accelerator()
    return _ACCELERATOR


def device() -> torch.device:
    """Where :func:`train_steps` puts models and batches (the CPU here)."""
    return accelerator().device


class Objective(nn.Module):
    """``module`` with ``forward(*args) = loss(module, *args)``.

    A loss that is not the module's own ``forward`` (``model.loss(name, x, y)``, an InfoNCE of
    two embeddings) must still run through ``forward`` for distributed data parallel to
    synchronize its gradients; wrapping it here gives :func:`train_steps` such a module.
    """

    def __init__(self, module: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.module = module
        self._loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._loss(self.module, *args, **kwargs)


def train_steps(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    loss_fn: Callable[[nn.Module, int], torch.Tensor],
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    clip: float | None = None,
    progress: Callable[[int], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """Optimize ``params`` of ``model`` with AdamW for ``steps`` steps; returns the loss per step.

    ``loss_fn(prepared_model, step)`` draws its own batch and returns the scalar loss; it must
    call the model it is given (the accelerate-prepared one, which may be a distributed
    wrapper). ``after_step`` runs after each optimizer step (for example to clamp a learned
    temperature). Parameters not in ``params`` are never changed by the optimizer.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter given is frozen")
    acc = accelerator()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    prepared, optimizer = acc.prepare(model, optimizer)
    losses: list[float] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(prepared, step)
        acc.backward(loss)
        if clip is not None:
            acc.clip_grad_norm_(params, clip)
        optimizer.step()
        if after_step is not None:
            after_step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(1)
    acc.free_memory()
    return losses


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside an accelerate/distributed wrapper (itself when not wrapped)."""
    return accelerator().unwrap_model(model)
