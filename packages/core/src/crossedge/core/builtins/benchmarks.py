"""Built-in benchmark: how long a model takes to pull once and to load from the cache."""

from __future__ import annotations

import subprocess
import sys
import time

from crossedge.core.bench import Benchmark, BenchmarkReport, Measurement, measure
from crossedge.core.hookspecs import hookimpl
from crossedge.core.sources import resolve_model

_FRESH_PROCESS_LOAD = """
import sys, time
start = time.perf_counter()
import torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from crossedge.core import load_model
imported = time.perf_counter()
load_model(sys.argv[1])
done = time.perf_counter()
print(imported - start, done - imported)
"""


class ModelLoadBenchmark(Benchmark):
    """Time a first pull (if the model is not cached yet) and cached loads, in fresh and warm processes."""

    name = "model-load"
    description = "pull once, then time cached loads of a model (default smollm2-135m)"

    def run(self, *, model: str = "smollm2-135m", repeats: int = 3) -> BenchmarkReport:
        source = resolve_model(model)
        rows = []
        if not source.is_pulled():
            start = time.perf_counter()
            source.pull()
            rows.append({"step": "first pull", "model": model, "median_s": time.perf_counter() - start, "repeats": 1})
        imports, loads = [], []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-c", _FRESH_PROCESS_LOAD, model], capture_output=True, text=True, check=True
            )
            import_s, load_s = map(float, done.stdout.split())
            imports.append(import_s)
            loads.append(load_s)
        for step, samples in (
            ("fresh process: import torch, transformers", imports),
            ("fresh process: load_model", loads),
        ):
            rows.append({"step": step, "model": model, **Measurement(step, samples).to_dict()})
        warm = measure(lambda: source.load(), name="warm process: load_model", warmup=1, repeats=repeats)
        rows.append({"step": warm.name, "model": model, **warm.to_dict()})
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={
                "model": model,
                "fresh_process_load_median_s": rows[-2]["median_s"],
                "warm_process_load_median_s": warm.median,
            },
        )


@hookimpl
def register_benchmarks(register):
    register(ModelLoadBenchmark())
