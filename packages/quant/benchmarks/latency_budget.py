"""Mixed precision under a latency budget, checked by timing the chosen model's layers again.

Run: python packages/quant/benchmarks/latency_budget.py MODEL THREADS FRACTION [CALIB_TOKENS [MEMORY_FRACTION]]

Times every layer shape at 4 and 8 bits (``mixed``'s own measurement, taken again here), sets the
budget at FRACTION of the way from the faster uniform width's sum to the slower one's, quantizes with
``mixed:budget_fraction=MEMORY_FRACTION,latency_ms=BUDGET`` (memory unconstrained by default: 1.0),
then times each quantized layer of the result once more, beside the two uniform models' layers,
and prints the three sums, the linears' bytes and the perplexities (the eval command's protocol:
4,096 tokens in windows of 512).
Run it on an idle machine.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from crossedge.core import load_model
from crossedge.quant import quantize, text_batches
from crossedge.quant.config import parse_spec
from crossedge.quant.evaluation import load_corpus, perplexity
from crossedge.quant.methods.common import time_kernels
from crossedge.quant.methods.mixed import shape_label, width_latencies
from crossedge.quant.modules import QuantizedLinear

ROWS = [1, 4]
REPEATS = 15


def layer_sum(model: torch.nn.Module) -> float:
    """Milliseconds of every quantized layer's kernel at ``ROWS``, timed now (median of ``REPEATS``)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    total = 0.0
    for name, module in layers.items():
        total += time_kernels({name: module}, module.in_features, ROWS, REPEATS)[name]
    return total


def main() -> None:
    """Print the budget, the plan's predicted sum, the re-timed sums and perplexities as JSON."""
    model_name, threads, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    calib_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    memory = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
    torch.set_num_threads(threads)
    loaded = load_model(model_name)
    corpus = load_corpus()
    calib = text_batches(loaded.tokenizer, corpus.calibration, seq_len=512, num_batches=calib_tokens // 512)
    ids = loaded.tokenizer(corpus.evaluation, return_tensors="pt").input_ids[0]
    probe = parse_spec(f"mixed:budget_fraction=1.0,latency_ms=1000,remeasure=true,repeats={REPEATS}")
    linears = {n: m for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    per_shape: dict[str, dict[str, float]] = {}
    for linear in linears.values():
        label = shape_label(linear)
        if label not in per_shape:
            per_shape[label] = width_latencies(linear, probe)  # timed now, and kept for mixed below
    uniform = {bits: sum(per_shape[shape_label(m)][bits] for m in linears.values()) for bits in ("4", "8")}
    low, high = sorted(uniform.values())
    budget = round(low + fraction * (high - low), 4)
    specs = {
        "rtn:bits=4": "rtn:bits=4",
        "rtn:bits=8": "rtn",
        "mixed": f"mixed:budget_fraction={memory},latency_ms={budget},repeats={REPEATS}",
    }
    models, report = (
        {},
        {"budget_ms": budget, "memory_fraction": memory, "uniform_predicted_ms": uniform, "per_shape_ms": per_shape},
    )
    for label, spec in specs.items():
        result = quantize(copy.deepcopy(loaded.model), spec, calibration=calib)
        models[label] = result.model
        report.setdefault("linear_bytes", {})[label] = sum(
            m.weight_bytes() for m in result.model.modules() if isinstance(m, QuantizedLinear)
        )
        if label == "mixed":
            report["mixed_budget_bytes"] = result.details["budget_bytes"]
            report["mixed_predicted_ms"] = result.details.get("latency_ms")
            report["mixed_bits"] = {b: list(result.details["bits"].values()).count(b) for b in (4, 8)}
    # Re-timed sums, the three models in turn twice, so drift hits all of them.
    sums: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        for _ in range(2):
            for label, model in models.items():
                sums[label].append(layer_sum(model))
    report["retimed_ms"] = {label: round(min(v), 4) for label, v in sums.items()}
    report["ppl"] = {
        label: round(perplexity(model, ids, window=512, max_tokens=4096).ppl, 3) for label, model in models.items()
    }
    report["meets_budget"] = report["retimed_ms"]["mixed"] <= budget
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
