"""A HELP-style latency predictor, meta-learned across device configurations and adapted from ~10 measurements.

What is built here (a simplified HELP, Lee et al. 2021):

- A *device configuration* is what this machine can vary: backend x thread count x dtype.
- Each configuration is embedded, as in HELP, by the latencies it measures on a fixed set of
  ``reference`` sub-networks (standardized log-latencies): the hardware embedding costs exactly
  the ~10 measurements made on a new configuration.
- A shared MLP maps (architecture encoding, hardware embedding) to the standardized log-latency.
  It is meta-trained with first-order MAML (FOMAML, not HELP's full second-order MAML with
  task-adaptive learning rates): each episode adapts a copy for a few SGD steps on the reference
  sub-networks of one source configuration, and the query loss on other sub-networks updates the
  shared initialization.
- On an unseen configuration: measure the reference sub-networks, embed, take the same few SGD
  steps on those measurements, then predict every other sub-network.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crossedge.core import CrossedgeError

from .elastic import ElasticSpace, SubnetConfig


@dataclass(frozen=True)
class DeviceConfig:
    """Where a latency is measured: backend, thread count and dtype."""

    backend: str
    threads: int
    dtype: str = "float32"

    def label(self) -> str:
        """Short text such as ``onnxruntime/t2/float32``."""
        return f"{self.backend}/t{self.threads}/{self.dtype}"

    @classmethod
    def parse(cls, text: str) -> DeviceConfig:
        """Inverse of :meth:`label`."""
        try:
            backend, threads, dtype = text.split("/")
            return cls(backend, int(threads.lstrip("t")), dtype)
        except ValueError as exc:
            raise CrossedgeError(f"device configuration {text!r} should look like 'torch-eager/t1/float32'") from exc


def measurable_configs(include_onnx: bool = True) -> list[DeviceConfig]:
    """The configurations this machine can measure: eager (fp32, bf16) and ONNX Runtime (fp32), 1 and 2 threads.

    torch.compile and ExecuTorch are left out of the latency study: preparing each of hundreds of
    sub-networks takes them seconds to a minute, which is the cost a predictor is meant to avoid.
    """
    configs = [DeviceConfig("torch-eager", t, d) for d in ("float32", "bfloat16") for t in (1, 2)]
    if include_onnx:
        configs += [DeviceConfig("onnxruntime", t, "float32") for t in (1, 2)]
    return configs


def analytic_macs(config: SubnetConfig, space: ElasticSpace, size: int = 8) -> list[int]:
    """Multiply-accumulates of each stage's inverted residual blocks for one ``size`` x ``size`` image."""
    h, c, stages = size, space.first_channels, []
    for s, (cout, stride) in enumerate(zip(space.stage_channels, space.stage_strides, strict=True)):
        total = 0
        for i in range(config.depths[s]):
            slot = s * space.max_depth + i
            hidden, k = c * config.expansions[slot], config.kernels[slot]
            out = h // (stride if i == 0 else 1)
            total += c * hidden * h * h + hidden * k * k * out * out + hidden * cout * out * out
            h, c = out, cout
        stages.append(total)
    return stages


def encode(config: SubnetConfig, space: ElasticSpace) -> list[float]:
    """Architecture features: per block slot (active, kernel is largest, expansion one-hot), per stage depth,
    and the log of the analytic MACs with each stage's MACs (scaled), which HELP's encoding does not have."""
    active = set(config.active_blocks(space))
    features: list[float] = []
    for i in range(space.blocks):
        on = i in active
        features.append(1.0 if on else 0.0)
        features.append(1.0 if on and config.kernels[i] == max(space.kernels) else 0.0)
        features.extend(1.0 if on and config.expansions[i] == e else 0.0 for e in space.expansions)
    features.extend(d / space.max_depth for d in config.depths)
    stages = analytic_macs(config, space)
    features.append(math.log(sum(stages)) / 15)
    features.extend(m / 2e6 for m in stages)
    return features


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class LatencyTable:
    """Measured latencies (seconds): ``values[config_label][subnet_index]``, with the sub-networks."""

    space: ElasticSpace
    subnets: list[SubnetConfig]
    reference: list[int]
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "space": self.space.to_dict(),
            "subnets": [s.to_dict() for s in self.subnets],
            "reference": self.reference,
            "values": self.values,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`."""
        space = ElasticSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["space"].items()})
        return cls(space, [SubnetConfig.from_dict(s) for s in data["subnets"]], data["reference"], data["values"])


class LatencyMLP(nn.Module):
    """f(architecture encoding, hardware embedding) -> standardized log-latency."""

    def __init__(self, arch_dim: int, device_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(arch_dim + device_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, arch: torch.Tensor, device: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([arch, device.expand(arch.shape[0], -1)], dim=1)).squeeze(1)


@dataclass
class DeviceTask:
    """One configuration's data for the predictor: standardized log-latencies and the standardization."""

    embedding: torch.Tensor
    targets: torch.Tensor
    mean: float
    std: float


def _standardize(latencies: Sequence[float], reference: Sequence[int]) -> DeviceTask:
    logs = torch.tensor([math.log(v) for v in latencies], dtype=torch.float32)
    ref = logs[list(reference)]
    mean, std = float(ref.mean()), float(ref.std().clamp_min(1e-6))
    return DeviceTask(((ref - mean) / std), (logs - mean) / std, mean, std)


class MetaLatencyPredictor:
    """Meta-trained latency predictor; :meth:`adapt` it to a configuration from its reference latencies."""

    def __init__(
        self,
        space: ElasticSpace,
        reference: Sequence[SubnetConfig],
        *,
        hidden: int = 64,
        inner_steps: int = 10,
        inner_lr: float = 0.002,
        seed: int = 0,
    ):
        self.space = space
        self.reference = list(reference)
        torch.manual_seed(seed)
        self.model = LatencyMLP(len(encode(self.reference[0], space)), len(self.reference), hidden)
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.seed = seed

    def _arch(self, subnets: Sequence[SubnetConfig]) -> torch.Tensor:
        return torch.tensor([encode(s, self.space) for s in subnets], dtype=torch.float32)

    def _inner(self, model: LatencyMLP, arch: torch.Tensor, embedding: torch.Tensor, targets: torch.Tensor) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=self.inner_lr)
        for _ in range(self.inner_steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(arch, embedding), targets).backward()
            optimizer.step()

    def meta_train(
        self,
        subnets: Sequence[SubnetConfig],
        latencies: dict[str, Sequence[float]],
        *,
        episodes: int = 600,
        meta_lr: float = 3e-3,
        query_size: int = 32,
    ) -> list[float]:
        """FOMAML over source configurations; ``latencies[label]`` lists seconds per sub-network.

        The reference sub-networks must be the first ``len(reference)`` entries of ``subnets``.
        Returns the query loss per episode.
        """
        k = len(self.reference)
        if list(subnets[:k]) != self.reference:
            raise CrossedgeError("meta_train expects the reference sub-networks first in the list")
        if not latencies:
            raise CrossedgeError("meta-training needs latencies from at least one source configuration")
        arch = self._arch(subnets)
        tasks = [_standardize(values, range(k)) for values in latencies.values()]
        rng = random.Random(self.seed)
        meta_opt = torch.optim.Adam(self.model.parameters(), lr=meta_lr)
        losses = []
        for _ in range(episodes):
            task = rng.choice(tasks)
            learner = copy.deepcopy(self.model)
            self._inner(learner, arch[:k], task.embedding, task.targets[:k])
            query = rng.sample(range(k, len(subnets)), min(query_size, len(subnets) - k))
            learner.zero_grad()
            loss = nn.functional.mse_loss(learner(arch[query], task.embedding), task.targets[query])
            loss.backward()
            # First-order MAML: the adapted learner's gradient is applied to the shared initialization.
            meta_opt.zero_grad()
            for meta_p, p in zip(self.model.parameters(), learner.parameters(), strict=True):
                meta_p.grad = p.grad.detach().clone()
            meta_opt.step()
            losses.append(float(loss.detach()))
        return losses

    def adapt(self, reference_latencies: Sequence[float]) -> AdaptedPredictor:
        """Embed a new configuration by its reference latencies (seconds) and fine-tune on them."""
        if len(reference_latencies) != len(self.reference):
            raise CrossedgeError(
                f"adaptation needs one latency per reference sub-network ({len(self.reference)}), "
                f"got {len(reference_latencies)}"
            )
        task = _standardize(reference_latencies, range(len(self.reference)))
        learner = copy.deepcopy(self.model)
        self._inner(learner, self._arch(self.reference), task.embedding, task.targets)
        return AdaptedPredictor(self, learner, task)


class AdaptedPredictor:
    """A predictor adapted to one configuration: ``predict(subnets) -> seconds``."""

    def __init__(self, parent: MetaLatencyPredictor, model: LatencyMLP, task: DeviceTask):
        self.parent, self.model, self.task = parent, model, task

    def predict(self, subnets: Sequence[SubnetConfig]) -> list[float]:
        """Predicted latency in seconds per sub-network."""
        with torch.no_grad():
            z = self.model(self.parent._arch(subnets), self.task.embedding)
        return [math.exp(float(v) * self.task.std + self.task.mean) for v in z]


def fit_from_scratch(
    space: ElasticSpace, subnets: Sequence[SubnetConfig], latencies: Sequence[float], *, steps: int = 300, seed: int = 0
) -> Callable[[Sequence[SubnetConfig]], list[float]]:
    """Baseline without meta-learning: a fresh MLP fit on the few measurements of the new configuration."""
    torch.manual_seed(seed)
    arch = torch.tensor([encode(s, space) for s in subnets], dtype=torch.float32)
    task = _standardize(latencies, range(len(subnets)))
    model = LatencyMLP(arch.shape[1], 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    empty = torch.zeros(0)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(arch, empty), task.targets).backward()
        optimizer.step()

    def predict(others: Sequence[SubnetConfig]) -> list[float]:
        with torch.no_grad():
            z = model(torch.tensor([encode(s, space) for s in others], dtype=torch.float32), empty)
        return [math.exp(float(v) * task.std + task.mean) for v in z]

    return predict


def synthetic_latencies(
    space: ElasticSpace, subnets: Sequence[SubnetConfig], n_devices: int, seed: int = 0
) -> list[list[float]]:
    """Deterministic synthetic latencies for tests: each device weighs blocks, kernels and widths differently.

    A device has a fixed overhead per block (interpreter cost), a cost per unit of compute that
    depends on kernel and expansion, and a nonlinear (saturating) thread speed-up; devices share
    structure but rank sub-networks differently.
    """
    rng = np.random.default_rng(seed)
    feats = np.array([encode(s, space) for s in subnets])
    width = 2 + len(space.expansions)
    per_block = feats[:, : space.blocks * width].reshape(len(subnets), space.blocks, width)
    stage_cost = np.repeat(np.array([4.0, 2.0, 1.5]), space.max_depth)[: space.blocks]
    exp_cost = np.array(space.expansions, dtype=float) / max(space.expansions)
    devices = []
    for _ in range(n_devices):
        overhead = rng.uniform(0.3, 2.0)
        compute = rng.uniform(0.2, 2.0)
        kernel_penalty = rng.uniform(0.1, 0.8)
        exp_power = rng.uniform(0.5, 2.0)
        active, big_kernel, exps = per_block[:, :, 0], per_block[:, :, 1], per_block[:, :, 2:]
        flops = (exps @ (exp_cost**exp_power)) * (1 + kernel_penalty * big_kernel) * stage_cost
        latency = 1.0 + overhead * active.sum(1) + compute * np.sqrt(flops.sum(1) + 1) ** 1.5
        devices.append(list(1e-3 * latency * np.exp(rng.normal(0, 0.01, len(subnets)))))
    return devices
