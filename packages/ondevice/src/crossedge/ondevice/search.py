"""Latency measurement of sub-networks, the latency-predictor study, and constrained sub-network search."""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.bench import measure, progress_bar
from crossedge.core.bench import threads as bench_threads

from .backends import OnnxRuntimeBackend, TorchEagerBackend
from .data import digits_task
from .elastic import (
    ElasticMobileNet,
    ElasticSpace,
    ShrinkingSchedule,
    SubnetConfig,
    calibrate_batch_norm,
    extract_subnet,
    largest,
    progressive_shrinking,
    sample_subnet,
    smallest,
)
from .latency import DeviceConfig, LatencyTable, MetaLatencyPredictor, measurable_configs
from .networks import parameter_bytes
from .training import accuracy

LATENCY_BATCH = 16


def distinct_subnets(space: ElasticSpace, count: int, seed: int = 0) -> list[SubnetConfig]:
    """``count`` distinct random sub-networks; the first two are the smallest and the largest."""
    rng = random.Random(seed)
    found = [smallest(space), largest(space)]
    seen = set(found)
    while len(found) < count:
        config = sample_subnet(space, rng)
        if config not in seen:
            seen.add(config)
            found.append(config)
    return found[:count]


def backend_for(config: DeviceConfig, workdir: Path) -> Any:
    """The backend object that measures a configuration."""
    if config.backend == "torch-eager":
        return TorchEagerBackend()
    if config.backend == "onnxruntime":
        return OnnxRuntimeBackend(workdir=workdir, threads=config.threads, dynamo=False)
    raise CrossedgeError(
        f"latency study backends are torch-eager and onnxruntime, not {config.backend!r} "
        "(compiling hundreds of sub-networks would take longer than the predictor saves)"
    )


def measure_latency(model: nn.Module, config: DeviceConfig, *, repeats: int = 9, batch: int = LATENCY_BATCH) -> float:
    """Fastest of ``repeats`` timed forwards of ``model`` on one device configuration, in seconds.

    The minimum, not the median: on a machine shared with other jobs, interference only ever
    adds time, so the minimum is the steadiest estimate of what the network itself costs.
    """
    x = torch.randn(batch, 1, 8, 8)
    with tempfile.TemporaryDirectory(prefix="crossedge-latency-") as tmp, bench_threads(config.threads):
        prepared = backend_for(config, Path(tmp)).prepare(model, (x,), dtype=config.dtype)
        return min(measure(lambda: prepared(x), warmup=2, repeats=repeats).samples)


def collect_latencies(
    supernet: ElasticMobileNet,
    subnets: Sequence[SubnetConfig],
    reference: Sequence[int],
    configs: Sequence[DeviceConfig],
    *,
    repeats: int = 9,
    progress: bool = True,
) -> LatencyTable:
    """Measure every sub-network on every configuration (sub-networks in shuffled order, to spread load drift)."""
    table = LatencyTable(supernet.space, list(subnets), list(reference))
    order = list(range(len(subnets)))
    random.Random(1).shuffle(order)
    models = {i: extract_subnet(supernet, subnets[i]) for i in order}
    for config in configs:
        values = [0.0] * len(subnets)
        for i in progress_bar(order, desc=config.label(), enabled=progress):
            values[i] = measure_latency(models[i], config, repeats=repeats)
        table.values[config.label()] = values
    return table


def model_memory_bytes(model: nn.Module, dtype_bytes: int = 4) -> int:
    """Weights plus the largest input+output activation pair of any layer at batch 1 (inference memory)."""
    peak = 0
    hooks = []

    def hook(module, args, output):
        nonlocal peak
        inputs = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
        peak = max(peak, (inputs + output.numel()) * dtype_bytes)

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, 8, 8))
    finally:
        for h in hooks:
            h.remove()
    return parameter_bytes(model) // 4 * dtype_bytes + peak


# ----------------------------------------------------------------- cached artifacts


def _cache_folder() -> Path:
    from crossedge.core.cache import cache_dir

    return cache_dir() / "ondevice"


def trained_supernet(
    *, seed: int = 0, schedule: ShrinkingSchedule | None = None, disk_cache: bool = True, threads: int = 1
) -> ElasticMobileNet:
    """The elastic network trained with progressive shrinking on digits 0-9 (cached as safetensors)."""
    schedule = schedule or ShrinkingSchedule()
    name = f"ofa-digits-s{seed}-f{schedule.full}k{schedule.kernel}d{schedule.depth}w{schedule.width}.safetensors"
    path = _cache_folder() / name
    if disk_cache and path.exists():
        from safetensors.torch import load_file

        net = ElasticMobileNet()
        net.load_state_dict(load_file(str(path)))
        return net.eval()
    with bench_threads(threads):
        net = progressive_shrinking(digits_task(seed=seed).train, schedule=schedule, seed=seed)
    if disk_cache:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        tmp.replace(path)
    return net


def latency_table(
    supernet: ElasticMobileNet,
    *,
    count: int = 130,
    n_reference: int = 10,
    configs: Sequence[DeviceConfig] | None = None,
    repeats: int = 9,
    disk_cache: bool = True,
    seed: int = 0,
) -> LatencyTable:
    """Measured latencies of ``count`` sub-networks (the first ``n_reference`` are the reference set)."""
    configs = list(configs or measurable_configs())
    path = _cache_folder() / f"latency-table-s{seed}-n{count}-r{n_reference}-x{repeats}.json"
    table: LatencyTable | None = None
    if disk_cache and path.exists():
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    missing = [c for c in configs if table is None or c.label() not in table.values]
    if missing:
        subnets = distinct_subnets(supernet.space, count, seed)
        fresh = collect_latencies(supernet, subnets, list(range(n_reference)), missing, repeats=repeats)
        if table is None:
            table = fresh
        else:
            table.values.update(fresh.values)
        if disk_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(table.to_dict()) + "\n")
    return table


@dataclass
class SearchResult:
    """The chosen sub-network and how its predicted latency compares with a measurement."""

    config: SubnetConfig
    accuracy: float
    predicted_ms: float
    measured_ms: float
    memory_kb: float
    candidates: int
    feasible: int
    device: str
    table: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "subnet": self.config.to_dict(),
            "label": self.config.label(),
            "accuracy": self.accuracy,
            "predicted_latency_ms": self.predicted_ms,
            "measured_latency_ms": self.measured_ms,
            "memory_kb": self.memory_kb,
            "candidates": self.candidates,
            "feasible": self.feasible,
            "device": self.device,
            "top": self.table,
        }


def search(
    *,
    latency_ms: float,
    memory_kb: float,
    device: DeviceConfig | None = None,
    candidates: int = 200,
    evaluate_top: int = 25,
    seed: int = 0,
    supernet: ElasticMobileNet | None = None,
    predictor: MetaLatencyPredictor | None = None,
    source_table: LatencyTable | None = None,
) -> SearchResult:
    """The most accurate sub-network whose predicted latency and memory fit, on ``device``.

    The predictor is meta-trained on every measurable configuration except ``device``,
    then adapted to ``device`` from the reference sub-networks' measured latencies.
    Candidates meeting both limits are ranked by accuracy (after batch-norm calibration)
    on the digits test split; the winner's latency is then measured.
    """
    device = device or DeviceConfig("torch-eager", 1, "float32")
    supernet = supernet or trained_supernet(seed=seed)
    space = supernet.space
    if source_table is None:
        sources = [c for c in measurable_configs() if c != device]
        source_table = latency_table(supernet, configs=sources, seed=seed)
    reference = [source_table.subnets[i] for i in source_table.reference]
    if predictor is None:
        predictor = MetaLatencyPredictor(space, reference, seed=seed)
        predictor.meta_train(
            source_table.subnets,
            {k: v for k, v in source_table.values.items() if k != device.label()},
        )
    reference_latencies = [measure_latency(extract_subnet(supernet, s), device) for s in reference]
    adapted = predictor.adapt(reference_latencies)
    pool = distinct_subnets(space, candidates, seed + 1)
    predicted = adapted.predict(pool)
    dtype_bytes = 2 if device.dtype in ("bfloat16", "float16") else 4
    feasible = []
    for config, seconds in zip(pool, predicted, strict=True):
        memory = model_memory_bytes(extract_subnet(supernet, config), dtype_bytes) / 1024
        if seconds * 1000 <= latency_ms and memory <= memory_kb:
            feasible.append((config, seconds, memory))
    if not feasible:
        fastest = min(predicted) * 1000
        raise CrossedgeError(
            f"no sub-network is predicted to meet {latency_ms:g} ms and {memory_kb:g} KiB on {device.label()} "
            f"(fastest predicted: {fastest:.3g} ms at batch {LATENCY_BATCH}); relax --latency-ms or --memory-kb"
        )
    # Evaluate the largest feasible ones first: accuracy grows with size, and evaluation costs time.
    feasible.sort(key=lambda item: -item[1])
    task = digits_task(seed=seed)
    rows = []
    with bench_threads(1):
        for config, seconds, memory in feasible[:evaluate_top]:
            net = calibrate_batch_norm(extract_subnet(supernet, config), task.train)
            rows.append(
                {
                    "label": config.label(),
                    "accuracy": accuracy(net, task.test),
                    "predicted_ms": seconds * 1000,
                    "memory_kb": memory,
                    "config": config,
                }
            )
    best = max(rows, key=lambda r: (r["accuracy"], -r["predicted_ms"]))
    measured = measure_latency(extract_subnet(supernet, best["config"]), device) * 1000
    table = [{k: v for k, v in r.items() if k != "config"} for r in sorted(rows, key=lambda r: -r["accuracy"])[:5]]
    return SearchResult(
        best["config"],
        best["accuracy"],
        best["predicted_ms"],
        measured,
        best["memory_kb"],
        candidates,
        len(feasible),
        device.label(),
        table,
    )
