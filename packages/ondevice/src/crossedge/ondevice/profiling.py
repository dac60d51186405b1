"""``crossedge ondevice profile``: latency, memory, size, MACs, per-layer breakdown and parity of one backend."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core import CrossedgeError
from crossedge.core.bench import measure
from crossedge.core.bench import threads as bench_threads

from .backends import DEFAULT_BACKEND, Backend, as_tuple, first_tensor, get_backend, max_abs_diff
from .networks import EncoderOutput, MobileNetV2, parameter_bytes, parameter_count, with_batch_statistics

#: built-in networks: name -> (width multiplier, classes)
BUILTIN_NETWORKS: dict[str, tuple[float, int]] = {
    "mbv2-digits": (1.0, 10),
    "mbv2-digits-0.5": (0.5, 10),
}


@dataclass
class ProfileTarget:
    """An eager model in fp32 and the example inputs it is profiled on."""

    name: str
    model: nn.Module
    inputs: tuple[Any, ...]


class CausalLMLogits(nn.Module):
    """Wrap a causal LM so it maps token ids to logits (exportable)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def resolve_target(name: str, *, batch: int = 8, seq_len: int = 32, seed: int = 0) -> ProfileTarget:
    """A built-in network or a model source by name.

    Built-in networks have random weights (timing does not depend on them) with batch-norm
    statistics taken from random images, so their outputs have a realistic scale for parity.
    """
    if name in BUILTIN_NETWORKS:
        width, classes = BUILTIN_NETWORKS[name]
        torch.manual_seed(seed)
        model = with_batch_statistics(MobileNetV2(width_mult=width, num_classes=classes), torch.randn(64, 1, 8, 8))
        return ProfileTarget(name, model, (torch.randn(batch, 1, 8, 8),))
    from crossedge.core import load_model

    loaded = load_model(name)
    text = "On-device machine learning keeps data on the phone and answers without a network round trip."
    encoded = loaded.tokenizer([text] * batch, return_tensors="pt", truncation=True, max_length=seq_len)
    if loaded.source.task == "causal-lm":
        return ProfileTarget(name, CausalLMLogits(loaded.model).eval(), (encoded["input_ids"],))
    return ProfileTarget(name, EncoderOutput(loaded.model).eval(), (encoded["input_ids"], encoded["attention_mask"]))


def count_macs(model: nn.Module, inputs: tuple[Any, ...], depth: int = 2) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of one forward (FlopCounterMode's FLOPs / 2), total and per module."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=depth)
    with counter, torch.no_grad():
        model(*inputs)
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, per_module


def layer_breakdown(
    model: nn.Module, inputs: tuple[Any, ...], depth: int = 2, repeats: int = 3
) -> list[dict[str, Any]]:
    """Per-module parameters, MACs, output shape and eager time (median of ``repeats``), to ``depth`` levels."""
    _, macs = count_macs(model, inputs, depth=depth)
    modules = {n: m for n, m in model.named_modules() if n and n.count(".") < depth}
    times: dict[str, list[float]] = {n: [] for n in modules}
    shapes: dict[str, Any] = {}
    starts: dict[str, float] = {}
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(module, args):
            starts[name] = time.perf_counter()

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(module, args, output):
            times[name].append(time.perf_counter() - starts.pop(name, time.perf_counter()))
            try:
                shapes[name] = list(first_tensor(output).shape)
            except CrossedgeError:
                shapes[name] = None

        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    try:
        with torch.no_grad():
            for _ in range(repeats):
                model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in modules.items():
        samples = sorted(times[name])
        rows.append(
            {
                "layer": name,
                "type": type(module).__name__,
                "parameters": parameter_count(module),
                "macs": macs.get(f"{type(model).__name__}.{name}", 0),
                "output_shape": shapes.get(name),
                "eager_ms": 1000 * samples[len(samples) // 2] if samples else None,
            }
        )
    return rows


def _read_status(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_delta(fn: Callable[[], Any]) -> int | None:
    """How far the process's resident high-water mark rises above its current RSS while ``fn`` runs (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _read_status("VmRSS")
    fn()
    peak = _read_status("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before)


def peak_activation_bytes(model: nn.Module, inputs: tuple[Any, ...]) -> int:
    """Peak bytes of tensors alive during an eager forward, from torch.profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad():
        model(*inputs)
    # Allocations are attributed to the operator that made them (its self memory) and frees that
    # happen outside any operator show up as "[memory]" events: a running sum in time order tracks
    # the bytes alive, at operator granularity.
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def profile(
    name: str,
    backend: str | Backend = DEFAULT_BACKEND,
    *,
    repeats: int = 20,
    warmup: int = 3,
    batch: int = 8,
    seq_len: int = 32,
    threads: int | None = None,
    dtype: str = "float32",
    depth: int = 2,
) -> dict[str, Any]:
    """Profile model ``name`` on ``backend``; returns a JSON-ready dict (see ``docs/ondevice.md``)."""
    target = resolve_target(name, batch=batch, seq_len=seq_len)
    chosen = get_backend(backend) if isinstance(backend, str) else backend
    chosen.check_dependencies()
    model, inputs = target.model, as_tuple(target.inputs)
    with bench_threads(threads) as thread_count:
        start = time.perf_counter()
        prepared = chosen.prepare(model, inputs, dtype=dtype)
        prepare_s = time.perf_counter() - start
        diff = max_abs_diff(prepared, model, inputs)
        timing = measure(lambda: prepared(*inputs), name=chosen.name, warmup=warmup, repeats=repeats)
        eager = measure(lambda: _eager(model, inputs), name="torch-eager", warmup=warmup, repeats=repeats)
        rss = peak_rss_delta(lambda: prepared(*inputs))
        total_macs, _ = count_macs(model, inputs, depth=depth)
        layers = layer_breakdown(model, inputs, depth=depth)
        activations = peak_activation_bytes(model, inputs)
    return {
        "model": target.name,
        "backend": chosen.name,
        "dtype": dtype,
        "threads": thread_count,
        "batch": batch,
        "input_shapes": [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)],
        "parameters": parameter_count(model),
        "parameter_bytes": parameter_bytes(model),
        "macs": int(total_macs),
        "latency_median_ms": 1000 * timing.median,
        "latency_p90_ms": 1000 * timing.p90,
        "latency_iqr_ms": 1000 * timing.spread,
        "eager_latency_median_ms": 1000 * eager.median,
        "speedup_vs_eager": eager.median / timing.median,
        "repeats": repeats,
        "prepare_s": prepare_s,
        "peak_rss_delta_bytes": rss,
        "peak_activation_bytes_eager": activations,
        "max_abs_diff": diff,
        "parity_ok": diff <= (1e-4 if dtype == "float32" else 5e-2),
        "layers": layers,
    }


def _eager(model: nn.Module, inputs: tuple[Any, ...]) -> Any:
    with torch.inference_mode():
        return model(*inputs)
