"""The runs the CLI and the benchmark share: train, reload with its data, and compare the controller with the grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossedge.core import CrossedgeError

from .controller import Controller
from .data import TASKS, MultiTaskData, load_data
from .model import MultiTaskConfig, MultiTaskNetwork, load_network, saved_extra
from .training import TrainConfig, TrainResult, train


def config_for(data: MultiTaskData, **overrides: Any) -> MultiTaskConfig:
    """A network config sized for ``data``'s images, with ``overrides`` applied."""
    channels, size, _ = data.image_shape
    return MultiTaskConfig(image_size=size, in_channels=channels, num_classes=data.num_classes, **overrides)


def train_on(
    name: str,
    *,
    config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    noise_std: float = 0.3,
    progress: bool = True,
) -> tuple[MultiTaskNetwork, MultiTaskData, TrainResult]:
    """Load ``name``'s images, build a network for them and train it with the sandwich rule."""
    train_config = train_config or TrainConfig()
    data = load_data(name, noise_std=noise_std, seed=train_config.seed)
    torch.manual_seed(train_config.seed)  # the initial weights, too, follow the seed
    network = MultiTaskNetwork(config_for(data, **(config or {})))
    result = train(network, data, train_config, progress=progress)
    return network, data, result


def training_record(name: str, result: TrainResult, seed: int, noise_std: float) -> dict[str, Any]:
    """What a saved model keeps about how it was made (read back by :func:`load_trained`)."""
    return {"data": name, "data_seed": seed, "noise_std": noise_std, "train": result.to_dict()}


def load_trained(path: Path | str) -> tuple[MultiTaskNetwork, MultiTaskData]:
    """A saved network and the same split and noise it was trained with (its test images were never trained on)."""
    network = load_network(path)
    extra = saved_extra(path)
    if "data" not in extra:
        raise CrossedgeError(f"{path} does not say which images it was trained on; retrain it with multitask train")
    data = load_data(extra["data"], noise_std=float(extra.get("noise_std", 0.3)), seed=int(extra.get("data_seed", 0)))
    if data.image_shape != (network.config.in_channels, network.config.image_size, network.config.image_size):
        raise CrossedgeError(f"{path} was trained on other images than {data.name}'s; retrain it")
    return network, data


def budgets_from(low: float, high: float, fractions: Sequence[float]) -> list[float]:
    """Budgets at ``fractions`` of the way from ``low`` to ``high`` ms (rounded to 0.001 ms)."""
    return [round(low + f * (high - low), 3) for f in fractions]


def uniform_controller(grid: Controller) -> Controller:
    """The baseline: the grid's measured table restricted to one width for every task decoder."""
    uniform = [c for c in grid.candidates if len(set(c.configuration.widths)) == 1]
    return Controller(uniform, ranges=grid.ranges)


def compare(
    controller: Controller,
    grid: Controller,
    weights: Sequence[Sequence[float]],
    budgets: Sequence[float],
    *,
    truth: Controller | None = None,
    test_quality: dict[tuple[float, str, float], float] | None = None,
    margin: float = 0.0,
) -> list[dict[str, Any]]:
    """For each weight vector and budget: the controller's pick, the grid optimum and the uniform-width baseline.

    Each searches its own table; every pick is then judged on ``truth`` (an independent timing of
    every configuration; the grid's own table when None) for latency and scored with the grid's
    normalization, so all picks are compared on the same numbers. All three plan at
    ``budget * (1 - margin)`` and are judged against the whole budget.
    """
    truth = truth or grid
    uniform = uniform_controller(grid)
    rows = []

    def judged(prefix: str, choice, w, budget) -> dict[str, Any]:
        c = choice.configuration
        latency = truth.lookup(c).latency_ms
        out = {
            prefix: c.label,
            f"{prefix}_table_ms": choice.candidate.latency_ms,
            f"{prefix}_latency_ms": latency,
            f"{prefix}_within_budget": latency <= budget,
            f"{prefix}_score": grid.score(grid.lookup(c), w),
        }
        if test_quality is not None:
            for t, width in zip(TASKS, c.widths, strict=True):
                out[f"{prefix}_test_{t}"] = test_quality[(c.encoder_width, t, width)]
        return out

    for w in weights:
        for budget in budgets:
            best = grid.choose(w, budget, margin)
            row: dict[str, Any] = {"weights": "/".join(f"{v:g}" for v in w), "budget_ms": budget}
            row.update(judged("grid", best, w, budget))
            for prefix, chooser in (("controller", controller), ("uniform", uniform)):
                try:
                    row.update(judged(prefix, chooser.choose(w, budget, margin), w, budget))
                except CrossedgeError:  # its table says nothing fits although the grid's does
                    row.update({prefix: None, f"{prefix}_score": None})
            # A controller whose table fits nothing has no choice to compare: both stay None.
            answered = row["controller"] is not None
            row["same_as_grid"] = row["controller"] == row["grid"] if answered else None
            row["score_gap"] = row["grid_score"] - row["controller_score"] if answered else None
            rows.append(row)
    return rows


def prediction_error(controller: Controller, grid: Controller) -> dict[str, float]:
    """How the controller's latencies match the measured ones: mean and max absolute % error, rank correlation."""
    predicted = np.array([controller.lookup(c.configuration).latency_ms for c in grid.candidates])
    measured = np.array([c.latency_ms for c in grid.candidates])
    error = 100.0 * np.abs(predicted - measured) / measured
    ranks = np.corrcoef(np.argsort(np.argsort(predicted)), np.argsort(np.argsort(measured)))[0, 1]
    return {"mean_abs_pct": float(error.mean()), "max_abs_pct": float(error.max()), "spearman": float(ranks)}


def quality_mismatch(controller: Controller, grid: Controller) -> float:
    """Largest difference between the additive and the whole-network validation quality over all configurations."""
    return max(
        abs(controller.lookup(c.configuration).quality[t] - c.quality[t]) for c in grid.candidates for t in TASKS
    )


def parse_floats(text: str, what: str) -> list[float]:
    """Comma-separated numbers (``0.5,0.3,0.2``), with an error naming ``what`` on a bad item."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise CrossedgeError(f"{what} must be comma-separated numbers, got {text!r}") from exc
    if not values:
        raise CrossedgeError(f"{what} needs at least one value")
    return values
