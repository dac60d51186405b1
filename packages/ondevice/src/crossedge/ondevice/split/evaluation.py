"""Measured costs of every setting: accuracy, bytes on the wire, device and server latency.

Latency is timed for real with core's :func:`~crossedge.core.bench.measure` at batch 1 (one
inference): the device's side is encoder + quantizer + bit packing into bytes, the server's
is parsing those bytes + decoder. Two references run the whole network in one place: ``local``
(no network) and ``raw`` (the device sends the uint8 image, the server runs everything).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crossedge.core import CrossedgeError
from crossedge.core.bench import measure, progress_bar
from crossedge.core.bench import threads as pinned_threads

from .data import ImageTask
from .model import Setting, SplitNetwork
from .training import largest_setting, predictions

KINDS = ("split", "local", "raw")


@dataclass
class SettingCost:
    """One way of running an inference, with everything measured about it."""

    name: str
    kind: str  # split, local or raw
    width: float
    bits: int | None
    payload_bytes: int
    device_samples_ms: list[float]
    server_samples_ms: list[float]
    val_accuracy: float
    test_accuracy: float
    correct: np.ndarray = field(repr=False)  # per test image, for the simulator
    width_index: int | None = None

    @property
    def device_ms(self) -> float:
        """Median device-side latency."""
        return float(np.median(self.device_samples_ms))

    @property
    def server_ms(self) -> float:
        """Median server-side latency (0 when nothing runs there)."""
        return float(np.median(self.server_samples_ms)) if self.server_samples_ms else 0.0

    @property
    def uses_link(self) -> bool:
        """Whether the inference crosses the network."""
        return self.kind != "local"

    def to_row(self) -> dict[str, Any]:
        """A report row (no per-image data)."""
        return {
            "setting": self.name,
            "kind": self.kind,
            "width": self.width,
            "bits": self.bits,
            "payload_bytes": self.payload_bytes,
            "device_ms": self.device_ms,
            "device_p90_ms": float(np.percentile(self.device_samples_ms, 90)),
            "server_ms": self.server_ms,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
        }


def _ms(samples: list[float]) -> list[float]:
    return [1000.0 * s for s in samples]


def _accuracies(network: SplitNetwork, task: ImageTask, setting: Setting) -> tuple[float, float, np.ndarray]:
    correct = (predictions(network, task.test, setting) == task.test.y).numpy()
    val = 100.0 * float((predictions(network, task.val, setting) == task.val.y).float().mean())
    return val, 100.0 * float(correct.mean()), correct


def measure_costs(
    network: SplitNetwork,
    task: ImageTask,
    *,
    repeats: int = 30,
    warmup: int = 3,
    threads: int | None = 1,
    references: bool = True,
    progress: bool = True,
) -> list[SettingCost]:
    """Costs of every setting of ``network`` on ``task`` (plus ``local`` and ``raw`` when ``references``)."""
    if tuple(task.image_shape) != (network.config.in_channels, network.config.image_size, network.config.image_size):
        raise CrossedgeError(
            f"the {task.name} images are {task.image_shape}; this network takes "
            f"{network.config.image_size}x{network.config.image_size}: use the data it was trained on"
        )
    network.eval()
    image = task.test.x[:1]
    costs = []
    with pinned_threads(threads), torch.inference_mode():
        for setting in progress_bar(network.settings, desc="split costs", enabled=progress, unit="setting"):
            payload = network.device_encode(image, setting)
            if len(payload) != setting.payload_bytes:  # the formula and the wire must agree
                raise CrossedgeError(f"{setting.label} sent {len(payload)} bytes, expected {setting.payload_bytes}")
            device = measure(lambda s=setting: network.device_encode(image, s), warmup=warmup, repeats=repeats)
            server = measure(lambda p=payload: network.server_decode(p), warmup=warmup, repeats=repeats)
            val, test, correct = _accuracies(network, task, setting)
            costs.append(
                SettingCost(
                    setting.label,
                    "split",
                    setting.width,
                    setting.bits,
                    setting.payload_bytes,
                    _ms(device.samples),
                    _ms(server.samples),
                    val,
                    test,
                    correct,
                    setting.width_index,
                )
            )
        if references:
            costs.extend(_reference_costs(network, task, image, repeats=repeats, warmup=warmup))
    return costs


def _reference_costs(
    network: SplitNetwork, task: ImageTask, image: torch.Tensor, *, repeats: int, warmup: int
) -> list[SettingCost]:
    full = largest_setting(network)
    val, test, correct = _accuracies(network, task, full)
    local = measure(lambda: network(image, full), warmup=warmup, repeats=repeats)
    shape = image.shape[1:]

    def send_raw() -> bytes:
        return task.to_pixels(image).numpy().tobytes()

    def serve_raw(data: bytes) -> torch.Tensor:
        pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(1, *shape)
        return network(task.from_pixels(pixels), full)

    raw_bytes = send_raw()
    device = measure(send_raw, warmup=warmup, repeats=repeats)
    server = measure(lambda: serve_raw(raw_bytes), warmup=warmup, repeats=repeats)
    # The server sees the pixels, not the float image: score it on what it sees.
    restored = task.from_pixels(task.to_pixels(task.test.x))
    raw_pred = torch.cat([network(x, full).argmax(1) for x in restored.split(500)])
    raw_correct = (raw_pred == task.test.y).numpy()
    return [
        SettingCost("local", "local", full.width, None, 0, _ms(local.samples), [], val, test, correct),
        SettingCost(
            "raw",
            "raw",
            full.width,
            None,
            len(raw_bytes),
            _ms(device.samples),
            _ms(server.samples),
            val,
            100.0 * float(raw_correct.mean()),
            raw_correct,
        ),
    ]


def check_costs(costs: list[SettingCost]) -> None:
    """Refuse a cost table the controller cannot use (no split settings, or non-finite latencies)."""
    split = [c for c in costs if c.kind == "split"]
    if not split:
        raise CrossedgeError("no split settings were measured")
    for c in costs:
        if not all(math.isfinite(v) for v in (*c.device_samples_ms, *c.server_samples_ms)):
            raise CrossedgeError(f"{c.name} has non-finite latency samples")
