"""The runs the CLI and the benchmark share: train on an image set, measure costs, compare policies on links."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError

from .data import ImageTask, load_task
from .evaluation import SettingCost
from .link import BandwidthTrace, DeadlineController, SimulationResult, policies, simulate
from .model import SplitConfig, SplitNetwork, load_network, saved_extra
from .training import TrainConfig, TrainResult, accuracy, train


def config_for(task: ImageTask, **overrides: Any) -> SplitConfig:
    """A split config sized for ``task``'s images, with ``overrides`` applied."""
    channels, size, _ = task.image_shape
    return SplitConfig(image_size=size, in_channels=channels, num_classes=task.num_classes, **overrides)


def train_on(
    data: str, *, config: dict[str, Any] | None = None, train_config: TrainConfig | None = None, progress: bool = True
) -> tuple[SplitNetwork, ImageTask, TrainResult]:
    """Load ``data``, build a network for it and train it with the sandwich rule."""
    train_config = train_config or TrainConfig()
    task = load_task(data, seed=train_config.seed)
    torch.manual_seed(train_config.seed)  # the initial weights, too, follow the seed
    network = SplitNetwork(config_for(task, **(config or {})))
    result = train(network, task.train, train_config, progress=progress)
    return network, task, result


def training_record(data: str, result: TrainResult, seed: int) -> dict[str, Any]:
    """What a saved model keeps about how it was made (read back by :func:`load_trained`)."""
    return {"data": data, "data_seed": seed, "train": result.to_dict()}


def load_trained(path: Path | str) -> tuple[SplitNetwork, ImageTask]:
    """A saved network and the same image split it was trained on (its test images were never trained on)."""
    network = load_network(path)
    extra = saved_extra(path)
    if "data" not in extra:
        raise CrossedgeError(f"{path} does not say which images it was trained on; retrain it with split train")
    return network, load_task(extra["data"], seed=int(extra.get("data_seed", 0)))


def independent_accuracy(
    task: ImageTask, base: SplitConfig, train_config: TrainConfig, *, progress: bool = True
) -> dict[str, float]:
    """Test accuracy per setting of separately trained single-width networks (the slimmable's reference)."""
    out = {}
    for width in base.widths:
        config = SplitConfig.from_dict({**base.to_dict(), "widths": [width]})
        torch.manual_seed(train_config.seed)
        network = SplitNetwork(config)
        # Same epochs and one forward/backward per step each: the four together cost what the
        # slimmable network's sandwich of four settings costs.
        train(network, task.train, replace(train_config, sandwich=False), progress=progress)
        for setting in network.settings:
            out[setting.label] = accuracy(network, task.test, setting)
    return out


def link_results(
    costs: Sequence[SettingCost],
    bandwidths: Sequence[float],
    *,
    deadline_ms: float,
    rtt_ms: float,
    steps: int,
    period_ms: float,
    seed: int,
    rank: str = "width",
) -> list[tuple[float, SimulationResult]]:
    """Every policy on constant links of each bandwidth (Mbit/s)."""
    controller = DeadlineController(costs, deadline_ms=deadline_ms, rtt_ms=rtt_ms, rank=rank)
    out = []
    for mbps in bandwidths:
        trace = BandwidthTrace.constant(mbps)
        # On a constant link the oracle and the last-transfer estimate agree: one adaptive row.
        for policy in policies(costs, controller, oracle=False):
            out.append((float(mbps), simulate(policy, trace, steps=steps, period_ms=period_ms, seed=seed)))
    return out


def trace_results(
    costs: Sequence[SettingCost],
    trace: BandwidthTrace,
    *,
    deadline_ms: float,
    rtt_ms: float,
    steps: int,
    period_ms: float,
    seed: int,
    rank: str = "width",
    headroom: float = 1.0,
) -> list[SimulationResult]:
    """Every policy over a changing link (``headroom`` < 1 adds an adaptive policy planning at that fraction)."""
    controller = DeadlineController(costs, deadline_ms=deadline_ms, rtt_ms=rtt_ms, rank=rank)
    chosen = policies(costs, controller, headroom=headroom)
    return [simulate(p, trace, steps=steps, period_ms=period_ms, seed=seed) for p in chosen]


def parse_floats(text: str, what: str) -> list[float]:
    """Comma-separated numbers (``0.1,0.5,1``), with an error naming ``what`` on a bad item."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise CrossedgeError(f"{what} must be comma-separated numbers, got {text!r}") from exc
    if not values:
        raise CrossedgeError(f"{what} needs at least one value")
    return values
