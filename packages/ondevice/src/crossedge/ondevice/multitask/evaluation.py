"""Task quality and measured latency, per configuration (the grid's way) or per component (the controller's way).

Quality: classification accuracy in percent, reconstruction PSNR in dB against the clean image
(from the mean squared error over the split), segmentation IoU of the foreground pixels (over
the split). Each task's quality depends only on the encoder's width and its own decoder's width,
since the decoders do not talk to each other: scoring every (encoder width, task, width) once
gives the quality of every configuration exactly.

Latency: one image (batch 1) through core's :func:`~crossedge.core.bench.measure`, median of the
samples. Timings are taken in interleaved rounds (by default one call of every item per round,
as many rounds as repeats), so that a load burst on a shared machine shifts all items alike
instead of the few that happened to be timed during it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from crossedge.core.bench import measure, progress_bar

from .data import TASKS, TaskSplit
from .model import Configuration, MultiTaskNetwork


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def psnr(images: torch.Tensor, clean: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] against ``clean``, from the mean squared error."""
    mse = float(((images - clean) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Intersection over union of the pixels predicted foreground (logit > 0) and the true ones."""
    predicted, truth = logits > 0, masks > 0.5
    union = int((predicted | truth).sum())
    return float((predicted & truth).sum()) / union if union else 1.0


def quality(task: str, output: torch.Tensor, split: TaskSplit) -> float:
    """The quality of ``task``'s output over all of ``split`` (higher is better for every task)."""
    if task == "classify":
        return accuracy(output, split.labels)
    if task == "reconstruct":
        return psnr(output, split.clean)
    return iou(output, split.masks)


@torch.no_grad()
def configuration_quality(
    network: MultiTaskNetwork, split: TaskSplit, configuration: Configuration, batch_size: int = 500
) -> dict[str, float]:
    """Each task's quality with the whole network run at ``configuration`` (the grid search's way)."""
    network.eval()
    parts = [network(split.inputs[i : i + batch_size], configuration) for i in range(0, len(split), batch_size)]
    return {t: quality(t, torch.cat([p[t] for p in parts]), split) for t in TASKS}


@torch.no_grad()
def component_quality(
    network: MultiTaskNetwork, split: TaskSplit, batch_size: int = 500
) -> dict[tuple[float, str, float], float]:
    """Quality per (encoder width, task, decoder width): the shared features are computed once per encoder width."""
    network.eval()
    config = network.config
    table = {}
    for encoder_width in config.encoder_widths:
        features = [
            network.encode(split.inputs[i : i + batch_size], encoder_width) for i in range(0, len(split), batch_size)
        ]
        for task in TASKS:
            for width in config.widths:
                output = torch.cat([network.decode(task, f, width) for f in features])
                table[(encoder_width, task, width)] = quality(task, output, split)
    return table


def measure_interleaved(
    items: Sequence[tuple[Any, Callable[[], Any]]],
    *,
    repeats: int,
    warmup: int = 2,
    rounds: int = 20,
    progress: bool = False,
    desc: str = "timing",
) -> dict[Any, list[float]]:
    """Time every ``(key, fn)``: ``rounds`` passes over all items, ``repeats / rounds`` timed calls each; ms samples."""
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    samples: dict[Any, list[float]] = {key: [] for key, _ in items}
    for _, fn in items:
        for _ in range(warmup):
            fn()
    schedule = [(count, key, fn) for count in per_round for key, fn in items]
    for count, key, fn in progress_bar(schedule, desc=desc, enabled=progress, unit="item"):
        samples[key].extend(1000.0 * s for s in measure(fn, warmup=0, repeats=count).samples)
    return samples


def median_ms(samples: Sequence[float]) -> float:
    """Median of millisecond samples."""
    return float(np.median(samples))


@torch.inference_mode()
def configuration_latency(
    network: MultiTaskNetwork,
    image: torch.Tensor,
    configurations: Sequence[Configuration],
    *,
    repeats: int = 20,
    warmup: int = 2,
    rounds: int = 20,
    progress: bool = False,
) -> dict[Configuration, list[float]]:
    """Measured ms samples of the whole network (encoder and all three decoders) at each configuration, batch 1."""
    network.eval()
    items = [(c, lambda c=c: network(image, c)) for c in configurations]
    return measure_interleaved(
        items, repeats=repeats, warmup=warmup, rounds=rounds, progress=progress, desc="multitask configurations"
    )


@torch.inference_mode()
def component_latency(
    network: MultiTaskNetwork,
    image: torch.Tensor,
    *,
    whole: Sequence[Configuration] = (),
    repeats: int = 20,
    warmup: int = 2,
    rounds: int = 20,
    progress: bool = False,
) -> tuple[dict[float, float], dict[tuple[float, str, float], float], dict[Configuration, float]]:
    """Median ms of the encoder at each width, of each decoder at each width on that encoder's features, and of
    the whole network at each of ``whole``, all timed in the same interleaved rounds (so under the same load)."""
    network.eval()
    config = network.config
    items: list[tuple[Any, Callable[[], Any]]] = []
    for e in config.encoder_widths:
        items.append((("encoder", e), lambda e=e: network.encode(image, e)))
        features = network.encode(image, e)
        for task in TASKS:
            for w in config.widths:
                items.append(((e, task, w), lambda f=features, t=task, w=w: network.decode(t, f, w)))
    items.extend((("whole", c), lambda c=c: network(image, c)) for c in whole)
    samples = measure_interleaved(
        items, repeats=repeats, warmup=warmup, rounds=rounds, progress=progress, desc="multitask components"
    )
    encoder = {key[1]: median_ms(v) for key, v in samples.items() if key[0] == "encoder"}
    complete = {key[1]: median_ms(v) for key, v in samples.items() if key[0] == "whole"}
    decoders = {key: median_ms(v) for key, v in samples.items() if key[0] not in ("encoder", "whole")}
    return encoder, decoders, complete
