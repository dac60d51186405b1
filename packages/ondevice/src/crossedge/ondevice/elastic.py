"""Once-for-all elastic MobileNetV2: elastic depth, kernel size and width (expansion), progressive shrinking.

One set of weights serves every sub-network. A sub-network is a :class:`SubnetConfig`:
active depth per stage, and kernel size and expansion ratio per block. Smaller kernels
are the centre of the largest kernel passed through a learned linear transform (as in
Once-for-All); narrower blocks use the first hidden channels, which are sorted by
importance before width becomes elastic. :func:`extract_subnet` copies a sub-network's
weights into a plain :class:`MobileNetV2` whose output equals the elastic network's.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from crossedge.core import CrossedgeError

from .data import Split, batches
from .networks import MobileNetConfig, MobileNetV2, StageConfig


@dataclass
class ElasticSpace:
    """The largest network and the choices each elastic dimension offers."""

    num_classes: int = 10
    stem_channels: int = 16
    first_channels: int = 16
    stage_channels: tuple[int, ...] = (24, 32, 48)
    stage_strides: tuple[int, ...] = (2, 2, 1)
    max_depth: int = 3
    depths: tuple[int, ...] = (1, 2, 3)
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[int, ...] = (3, 4, 6)
    last_channels: int = 96

    @property
    def blocks(self) -> int:
        """Number of elastic block slots."""
        return len(self.stage_channels) * self.max_depth

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return asdict(self)


@dataclass(frozen=True)
class SubnetConfig:
    """Active depth per stage; kernel and expansion per block slot (slots past the depth are ignored)."""

    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict form."""
        return {"depths": list(self.depths), "kernels": list(self.kernels), "expansions": list(self.expansions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubnetConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(data["depths"]), tuple(data["kernels"]), tuple(data["expansions"]))

    def active_blocks(self, space: ElasticSpace) -> list[int]:
        """Indices of block slots that run."""
        return [s * space.max_depth + i for s, d in enumerate(self.depths) for i in range(d)]

    def canonical(self, space: ElasticSpace) -> SubnetConfig:
        """The same sub-network with inactive slots set to the largest choice (so equal networks compare equal)."""
        active = set(self.active_blocks(space))
        kernels = tuple(k if i in active else max(space.kernels) for i, k in enumerate(self.kernels))
        expansions = tuple(e if i in active else max(space.expansions) for i, e in enumerate(self.expansions))
        return SubnetConfig(self.depths, kernels, expansions)

    def label(self) -> str:
        """Compact text such as ``d232-k35533..-e64..``."""
        return (
            "d"
            + "".join(map(str, self.depths))
            + "-k"
            + "".join(map(str, self.kernels))
            + "-e"
            + "".join(map(str, self.expansions))
        )


def largest(space: ElasticSpace) -> SubnetConfig:
    """The full network."""
    n = space.blocks
    return SubnetConfig(
        (space.max_depth,) * len(space.stage_channels), (max(space.kernels),) * n, (max(space.expansions),) * n
    )


def smallest(space: ElasticSpace) -> SubnetConfig:
    """The smallest sub-network."""
    n = space.blocks
    return SubnetConfig(
        (min(space.depths),) * len(space.stage_channels), (min(space.kernels),) * n, (min(space.expansions),) * n
    )


def sample_subnet(
    space: ElasticSpace,
    rng: random.Random,
    *,
    kernel: bool = True,
    depth: bool = True,
    width: bool = True,
) -> SubnetConfig:
    """A random sub-network; dimensions not yet elastic stay at their largest value."""
    n = space.blocks
    full = largest(space)
    return SubnetConfig(
        tuple(rng.choice(space.depths) for _ in space.stage_channels) if depth else full.depths,
        tuple(rng.choice(space.kernels) for _ in range(n)) if kernel else full.kernels,
        tuple(rng.choice(space.expansions) for _ in range(n)) if width else full.expansions,
    ).canonical(space)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d, channels: int) -> torch.Tensor:
    # Slices of the running-stat buffers are views, so training mode updates the shared statistics.
    return F.batch_norm(
        x,
        bn.running_mean[:channels],
        bn.running_var[:channels],
        bn.weight[:channels],
        bn.bias[:channels],
        bn.training,
        bn.momentum if bn.momentum is not None else 0.0,
        bn.eps,
    )


class ElasticDepthwise(nn.Module):
    """A depthwise convolution whose kernel size is elastic (Once-for-All kernel transformation)."""

    def __init__(self, channels: int, kernels: Sequence[int], stride: int):
        super().__init__()
        self.kernels = sorted(kernels)
        self.max_kernel = self.kernels[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # One (k*k x k*k) transform per smaller kernel, shared across channels, starting at identity.
        self.transforms = nn.ParameterDict(
            {str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernels if k != self.max_kernel}
        )

    def kernel_weight(self, kernel: int, channels: int) -> torch.Tensor:
        """The (channels, 1, k, k) weight of a kernel size, derived from the largest kernel."""
        weight = self.weight[:channels]
        size = self.max_kernel
        # Shrink step by step (7 -> 5 -> 3 in OFA), each step a centre crop and a learned transform.
        for k in reversed(self.kernels):
            if k >= size or k < kernel:
                continue
            start = (size - k) // 2
            crop = weight[:, :, start : start + k, start : start + k]
            weight = (crop.reshape(channels, k * k) @ self.transforms[str(k)]).reshape(channels, 1, k, k)
            size = k
        if size != kernel:
            raise CrossedgeError(f"kernel size {kernel} is not one of {self.kernels}")
        return weight

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        channels = x.shape[1]
        return F.conv2d(x, self.kernel_weight(kernel, channels), None, self.stride, kernel // 2, groups=channels)


class ElasticBlock(nn.Module):
    """An inverted residual block with elastic kernel size and expansion ratio."""

    def __init__(self, cin: int, cout: int, stride: int, space: ElasticSpace):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride
        hidden = cin * max(space.expansions)
        self.expand = nn.Conv2d(cin, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = ElasticDepthwise(hidden, space.kernels, stride)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor, kernel: int, expansion: int) -> torch.Tensor:
        hidden = self.cin * expansion
        h = F.relu6(_bn(F.conv2d(x, self.expand.weight[:hidden]), self.bn1, hidden))
        h = F.relu6(_bn(self.depthwise(h, kernel), self.bn2, hidden))
        out = _bn(F.conv2d(h, self.project.weight[:, :hidden]), self.bn3, self.cout)
        return x + out if self.use_residual else out

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder hidden channels by the L1 norm of their projection weights, most important first."""
        order = self.project.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
        self.expand.weight.copy_(self.expand.weight[order])
        self.depthwise.weight.copy_(self.depthwise.weight[order])
        self.project.weight.copy_(self.project.weight[:, order])
        for bn in (self.bn1, self.bn2):
            for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                tensor.copy_(tensor[order])


class ElasticMobileNet(nn.Module):
    """The once-for-all supernet; ``forward(x, config)`` runs one sub-network (default: the largest)."""

    def __init__(self, space: ElasticSpace | None = None):
        super().__init__()
        self.space = space = space or ElasticSpace()
        self.stem = nn.Sequential(
            nn.Conv2d(1, space.stem_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(space.stem_channels), nn.ReLU6()
        )
        # The first block has expansion 1 and is not elastic, as in MobileNetV2 and OFA.
        c = space.first_channels
        self.first = nn.Sequential(
            nn.Conv2d(space.stem_channels, space.stem_channels, 3, 1, 1, groups=space.stem_channels, bias=False),
            nn.BatchNorm2d(space.stem_channels),
            nn.ReLU6(),
            nn.Conv2d(space.stem_channels, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )
        blocks = []
        for cout, stride in zip(space.stage_channels, space.stage_strides, strict=True):
            for i in range(space.max_depth):
                blocks.append(ElasticBlock(c, cout, stride if i == 0 else 1, space))
                c = cout
        self.blocks = nn.ModuleList(blocks)
        self.last = nn.Sequential(
            nn.Conv2d(c, space.last_channels, 1, bias=False), nn.BatchNorm2d(space.last_channels), nn.ReLU6()
        )
        self.classifier = nn.Linear(space.last_channels, space.num_classes)

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        config = config or largest(self.space)
        self.check(config)
        x = self.stem(x)
        # Like MobileNetV2's blocks, the fixed first block is residual when it keeps the width.
        x = x + self.first(x) if self.space.first_channels == self.space.stem_channels else self.first(x)
        for i in config.active_blocks(self.space):
            x = self.blocks[i](x, config.kernels[i], config.expansions[i])
        x = self.last(x)
        return self.classifier(x.mean(dim=(2, 3)))

    def check(self, config: SubnetConfig) -> None:
        """Raise when ``config`` is outside the space."""
        space = self.space
        ok = (
            len(config.depths) == len(space.stage_channels)
            and len(config.kernels) == len(config.expansions) == space.blocks
            and all(d in space.depths for d in config.depths)
            and all(k in space.kernels for k in config.kernels)
            and all(e in space.expansions for e in config.expansions)
        )
        if not ok:
            raise CrossedgeError(f"sub-network {config} is outside the elastic space {space.to_dict()}")

    def sort_channels(self) -> None:
        """Sort every block's hidden channels by importance (before width becomes elastic)."""
        for block in self.blocks:
            block.sort_channels()


def extract_subnet(supernet: ElasticMobileNet, config: SubnetConfig) -> MobileNetV2:
    """A plain :class:`MobileNetV2` with the sub-network's weights copied out of the supernet."""
    supernet.check(config)
    space = supernet.space
    stages = [StageConfig(1, space.first_channels, 1, 1, 3)]
    active = config.active_blocks(space)
    for i in active:
        block = supernet.blocks[i]
        stages.append(StageConfig(config.expansions[i], block.cout, 1, block.stride, config.kernels[i]))
    net = MobileNetV2(
        MobileNetConfig(
            num_classes=space.num_classes,
            width_mult=1.0,
            stem_channels=space.stem_channels,
            last_channels=space.last_channels,
            stages=stages,
        )
    )
    with torch.no_grad():
        _copy_conv_bn(net.features[0], supernet.stem[0], supernet.stem[1])
        first = net.features[1].conv
        _copy_conv_bn(first[0], supernet.first[0], supernet.first[1])
        _copy_conv_bn(first[1], supernet.first[3], supernet.first[4])
        for target, i in zip(list(net.features)[2:-1], active, strict=True):
            block = supernet.blocks[i]
            hidden = block.cin * config.expansions[i]
            expand, dw, project = target.conv
            expand[0].weight.copy_(block.expand.weight[:hidden])
            _copy_bn(expand[1], block.bn1, hidden)
            dw[0].weight.copy_(block.depthwise.kernel_weight(config.kernels[i], hidden))
            _copy_bn(dw[1], block.bn2, hidden)
            project[0].weight.copy_(block.project.weight[:, :hidden])
            _copy_bn(project[1], block.bn3, block.cout)
        _copy_conv_bn(net.features[-1], supernet.last[0], supernet.last[1])
        net.classifier.load_state_dict(supernet.classifier.state_dict())
    return net.eval()


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[:channels])
    target.eps = source.eps


def _copy_conv_bn(target: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    target[0].weight.copy_(conv.weight)
    _copy_bn(target[1], bn, bn.num_features)


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, split: Split, batch_size: int = 256) -> nn.Module:
    """Recompute batch-norm statistics of an extracted sub-network on training images (OFA does this)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for x, _ in batches(split, batch_size, shuffle=False):
        model(x)
    return model.eval()


@dataclass
class ShrinkingSchedule:
    """Epochs of each progressive-shrinking phase."""

    full: int = 8
    kernel: int = 3
    depth: int = 3
    width: int = 4
    lr: float = 3e-3
    batch_size: int = 64
    subnets_per_step: int = 2
    distill: float = 1.0
    log: list[dict[str, Any]] = field(default_factory=list)


def progressive_shrinking(
    split: Split, *, space: ElasticSpace | None = None, schedule: ShrinkingSchedule | None = None, seed: int = 0
) -> ElasticMobileNet:
    """Train the largest network, then make kernel, depth and width elastic in turn, distilling from it."""
    schedule = schedule or ShrinkingSchedule()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = ElasticMobileNet(space)
    generator = torch.Generator().manual_seed(seed)
    teacher: ElasticMobileNet | None = None
    phases = [
        ("full", schedule.full, {"kernel": False, "depth": False, "width": False}),
        ("kernel", schedule.kernel, {"kernel": True, "depth": False, "width": False}),
        ("depth", schedule.depth, {"kernel": True, "depth": True, "width": False}),
        ("width", schedule.width, {"kernel": True, "depth": True, "width": True}),
    ]
    for phase, epochs, elastic in phases:
        if phase == "width":
            net.sort_channels()
        if phase != "full" and teacher is None:
            teacher = copy.deepcopy(net).eval()
        optimizer = torch.optim.Adam(net.parameters(), lr=schedule.lr if phase == "full" else schedule.lr / 3)
        for _ in range(epochs):
            net.train()
            total, steps = 0.0, 0
            for x, y in batches(split, schedule.batch_size, shuffle=True, generator=generator):
                optimizer.zero_grad(set_to_none=True)
                configs = (
                    [largest(net.space)]
                    if phase == "full"
                    else [sample_subnet(net.space, rng, **elastic) for _ in range(schedule.subnets_per_step)]
                )
                soft = None
                if teacher is not None and schedule.distill > 0:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x), dim=1)
                for config in configs:
                    logits = net(x, config)
                    loss = F.cross_entropy(logits, y)
                    if soft is not None:
                        loss = loss + schedule.distill * F.kl_div(F.log_softmax(logits, 1), soft, reduction="batchmean")
                    loss.backward()
                    total += float(loss.detach())
                    steps += 1
                optimizer.step()
            schedule.log.append({"phase": phase, "loss": total / max(1, steps)})
    return net.eval()
