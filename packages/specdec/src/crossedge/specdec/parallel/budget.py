"""The optimization loop every parallel-decoding trainer shares: AdamW under a step and time budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from crossedge.core.errors import CrossedgeError


@dataclass
class BudgetRun:
    """What a run did: optimizer steps, seconds, and the last step's loss."""

    steps: int
    seconds: float
    last_loss: float


def run_budget(
    params: Iterable[torch.nn.Parameter],
    loss_at: Callable[[int, float], torch.Tensor],
    *,
    lr: float,
    steps: int | None = None,
    seconds: float | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    schedule: Callable[[int, float], float] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    what: str = "training",
    error: type[CrossedgeError] = CrossedgeError,
) -> BudgetRun:
    """Step AdamW on ``loss_at(step, done)`` until ``steps`` or ``seconds`` run out (gradients clipped to 1).

    ``done`` is the share of the budget spent, the larger of the step and time shares;
    ``schedule(step, done)`` scales ``lr`` before each step; ``progress(step, loss, seconds)``
    hears about each step.
    """
    if steps is None and seconds is None:
        raise error(f"give a {what} budget: steps, seconds, or both")
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    start = time.perf_counter()
    step, last = 0, float("nan")
    while (steps is None or step < steps) and (seconds is None or time.perf_counter() - start < seconds):
        elapsed = time.perf_counter() - start
        done = max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr * schedule(step, done)
        loss = loss_at(step, done)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        last = float(loss.detach())
        if progress is not None:
            progress(step, last, time.perf_counter() - start)
    return BudgetRun(step, time.perf_counter() - start, last)
