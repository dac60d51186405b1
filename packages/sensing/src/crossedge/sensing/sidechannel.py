"""Cross-device portability of a side-channel classifier (the Crossed-IoT EM-SCA comparison).

A key-byte leakage classifier (Hamming weight of the S-box output, from ``em-traces``) is
trained and tested five ways, each on the same network and budget:

- ``same-device``: trained on the source device, tested on it (the reference);
- ``direct``: trained on the source device, applied to the target device;
- ``mixed``: trained on every device but the target, applied to the target;
- ``transfer``: trained on the source device, fine-tuned on ``shots`` target traces;
- ``target-only``: trained on those same ``shots`` target traces alone.

Every test uses the test split of the device it names; training uses train splits, so no
trace is both trained and scored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from crossedge.core.contracts.array_dataset import ArrayData, ArrayDatasetError

CONDITIONS = ("same-device", "direct", "mixed", "transfer", "target-only")


def _device_windows(data: ArrayData, device: str, split: str):
    import numpy as np

    code = data.domains.code("device", device)
    members = np.flatnonzero(data.domains.codes("device") == code)
    return np.intersect1d(members, data.split(split))


def _train(algorithm, x, y, pools, steps: int, batch: int, rng) -> None:
    from .sweep import sample_batches

    for _ in range(steps):
        algorithm.update(sample_batches(x, y, pools, batch, rng))


def portability(
    data: ArrayData,
    *,
    source: str,
    target: str,
    shots: int = 50,
    steps: int = 1200,
    batch_size: int = 64,
    seeds: Sequence[int] = (0, 1, 2),
    hparams: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy per condition (mean, std and per seed) for ``source`` -> ``target`` devices."""
    import numpy as np
    import torch

    from .algorithms.finetune import FineTune
    from .sweep import accuracy, standardize

    devices = list(data.domains.values.get("device", ()))
    for device in (source, target):
        if device not in devices:
            raise ArrayDatasetError(f"no device {device!r} in this data; its devices are: {', '.join(devices)}")
    if source == target:
        raise ArrayDatasetError("source and target devices must differ")
    x = standardize(data.x, data.split("train"))
    y = data.y
    source_train = _device_windows(data, source, "train")
    target_train = _device_windows(data, target, "train")
    others = [_device_windows(data, d, "train") for d in devices if d != target]
    tests = {source: _device_windows(data, source, "test"), target: _device_windows(data, target, "test")}
    if shots > len(target_train):
        raise ArrayDatasetError(f"--shots {shots} is more than the {len(target_train)} target training traces")
    scores: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    shape, classes = x.shape[1:], len(data.label_names)
    settings = {**(hparams or {}), "finetune_steps": max(50, steps // 10)}
    for seed in seeds:
        rng = np.random.default_rng([seed, 5])
        support = np.sort(rng.choice(target_train, shots, replace=False))
        source_model = FineTune(shape, classes, 1, settings, seed=seed)
        _train(source_model, x, y, [source_train], steps, batch_size, rng)
        scores["same-device"].append(accuracy(source_model, x, y, tests[source]))
        scores["direct"].append(accuracy(source_model, x, y, tests[target]))
        source_model.adapt(torch.from_numpy(x[support]), torch.from_numpy(y[support]), torch.zeros((0, *shape)))
        scores["transfer"].append(accuracy(source_model, x, y, tests[target]))
        mixed = FineTune(shape, classes, len(others), settings, seed=seed)
        _train(mixed, x, y, others, steps, batch_size // max(1, len(others) // 2), rng)
        scores["mixed"].append(accuracy(mixed, x, y, tests[target]))
        alone = FineTune(shape, classes, 1, settings, seed=seed)
        _train(alone, x, y, [support], steps, batch_size, rng)
        scores["target-only"].append(accuracy(alone, x, y, tests[target]))
        if progress is not None:
            progress(f"seed {seed}")
    rows = []
    for condition in CONDITIONS:
        values = scores[condition]
        rows.append(
            {
                "condition": condition,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "per_seed": values,
            }
        )
    return {
        "source": source,
        "target": target,
        "shots": shots,
        "steps": steps,
        "seeds": list(seeds),
        "chance": 1.0 / classes,
        "rows": rows,
    }
