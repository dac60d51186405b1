"""Training loops on the digits tasks: pre-training and the fine-tuning methods compared by ``finetune``."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.bench import threads as bench_threads

from .data import DigitsTask, Split, batches, transfer_tasks
from .memory import Stopwatch, TrainingMemory, measure_training_step
from .networks import MobileNetConfig, MobileNetV2

METHODS = ("full", "bias", "mobiletl", "sparse")


def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent, model in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(split, batch_size, shuffle=False):
            correct += int((model(x).argmax(dim=1) == y).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(split))


def train_epochs(
    model: nn.Module,
    split: Split,
    *,
    params: Iterable[nn.Parameter] | None = None,
    epochs: int = 10,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    train_mode: bool = True,
) -> list[float]:
    """Adam on cross-entropy over ``params`` (default: all trainable); returns the mean loss per epoch."""
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise CrossedgeError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train(train_mode)
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in batches(split, batch_size, shuffle=True, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        losses.append(total / count)
    model.eval()
    return losses


def pretrain(
    task: DigitsTask, *, width_mult: float = 1.0, epochs: int = 10, seed: int = 0, threads: int = 1, **config: Any
) -> MobileNetV2:
    """Train a :class:`MobileNetV2` from scratch on ``task``; returned in eval mode.

    One thread by default: on 8x8 images the kernels are so small that a second thread costs
    more in synchronization than it saves, badly so on a shared machine.
    """
    torch.manual_seed(seed)
    model = MobileNetV2(MobileNetConfig(num_classes=task.num_classes, width_mult=width_mult, **config))
    with bench_threads(threads):
        train_epochs(model, task.train, epochs=epochs, seed=seed, batch_size=64)
    return model.eval()


_PRETRAINED: dict[tuple[Any, ...], MobileNetV2] = {}


def pretrained_source_model(
    seed: int = 0, width_mult: float = 1.0, epochs: int = 10, *, disk_cache: bool = False
) -> MobileNetV2:
    """The network pre-trained on digits 0-4, memoized per process and optionally in the crossedge cache.

    The disk copy is a safetensors file keyed by seed, width and epochs, so repeated CLI runs
    adapt the same pre-trained weights without training them again.
    """
    key = (seed, width_mult, epochs)
    if key not in _PRETRAINED:
        source, _ = transfer_tasks(seed)
        path = None
        if disk_cache:
            from crossedge.core.cache import cache_dir

            path = cache_dir() / "ondevice" / f"mbv2-digits04-s{seed}-w{width_mult:g}-e{epochs}.safetensors"
        if path is not None and path.exists():
            from safetensors.torch import load_file

            model = MobileNetV2(MobileNetConfig(num_classes=source.num_classes, width_mult=width_mult))
            model.load_state_dict(load_file(str(path)))
            _PRETRAINED[key] = model.eval()
        else:
            _PRETRAINED[key] = pretrain(source, width_mult=width_mult, epochs=epochs, seed=seed)
            if path is not None:
                from safetensors.torch import save_file

                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in _PRETRAINED[key].state_dict().items()}, str(tmp))
                tmp.replace(path)
    return copy.deepcopy(_PRETRAINED[key])


def new_head(model: MobileNetV2, num_classes: int, seed: int = 0) -> MobileNetV2:
    """Replace the classifier for a task with ``num_classes`` classes (always trained)."""
    torch.manual_seed(seed)
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    return model


@dataclass
class FinetuneResult:
    """What one fine-tuning run achieved and what it cost."""

    method: str
    accuracy: float
    accuracy_before: float
    memory: TrainingMemory
    seconds: float
    batch_size: int
    epochs: int
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A flat dict for tables and JSON."""
        return {
            "method": self.method,
            "accuracy": self.accuracy,
            "accuracy_before": self.accuracy_before,
            "seconds": self.seconds,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            **{f"memory_{k}": v for k, v in self.memory.to_dict().items()},
            **self.details,
        }


def run_finetune(
    method: str,
    *,
    blocks: int | None = None,
    budget_kb: float | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    width_mult: float = 1.0,
    pretrain_epochs: int = 10,
    threads: int = 1,
    disk_cache: bool = False,
) -> FinetuneResult:
    """Pre-train on digits 0-4, then adapt to digits 5-9 with one method; measure memory on a real step.

    ``full`` trains every layer (or the top ``blocks`` inverted residual blocks plus the
    head), ``bias`` the normalization shifts and the head, ``mobiletl`` the top ``blocks``
    with shift-only norms and 1-bit activation masks, ``sparse`` the update scheme chosen
    under ``budget_kb``. Batch norms use their running statistics throughout (eval mode),
    as fine-tuning on small batches on a device would.
    """
    with bench_threads(threads):
        return _run_finetune(
            method, blocks, budget_kb, epochs, batch_size, lr, seed, width_mult, pretrain_epochs, disk_cache
        )


def _run_finetune(method, blocks, budget_kb, epochs, batch_size, lr, seed, width_mult, pretrain_epochs, disk_cache):
    from . import finetune_methods

    if method not in METHODS:
        raise CrossedgeError(f"unknown fine-tuning method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "sparse" and budget_kb is None:
        raise CrossedgeError("the sparse method needs --budget-kb N (training memory budget in KiB)")
    _, target = transfer_tasks(seed)
    model = new_head(
        pretrained_source_model(seed, width_mult, pretrain_epochs, disk_cache=disk_cache), target.num_classes, seed
    )
    before = accuracy(model, target.test)
    details: dict[str, Any] = {}
    if method == "full":
        finetune_methods.setup_full(model, blocks)
    elif method == "bias":
        finetune_methods.setup_bias(model)
    elif method == "mobiletl":
        finetune_methods.setup_mobiletl(model, blocks if blocks is not None else 3)
    else:
        if budget_kb is None:
            raise CrossedgeError("the sparse method needs --budget-kb N (training memory budget in KiB)")
        scheme = finetune_methods.setup_sparse(model, target.train, budget_kb * 1024, batch_size=batch_size)
        details["scheme"] = scheme
    details["blocks"] = blocks
    x, y = target.train.x[:batch_size], target.train.y[:batch_size]
    probe = copy.deepcopy(model)
    params = [p for p in probe.parameters() if p.requires_grad]
    memory = measure_training_step(probe, nn.functional.cross_entropy, x, y, torch.optim.Adam(params, lr=lr))
    with Stopwatch() as watch:
        train_epochs(model, target.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, train_mode=False)
    if budget_kb is not None and memory.training_bytes > budget_kb * 1024:
        details["over_budget"] = True
    return FinetuneResult(
        method=method,
        accuracy=accuracy(model, target.test),
        accuracy_before=before,
        memory=memory,
        seconds=watch.seconds,
        batch_size=batch_size,
        epochs=epochs,
        details=details,
    )
