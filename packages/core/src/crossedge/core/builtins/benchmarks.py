"""Built-in benchmark: how long a cached model takes to load."""

from __future__ import annotations

import time
from typing import Any

from crossedge.core.bench import Benchmark, BenchmarkReport, measure
from crossedge.core.hookspecs import hookimpl
from crossedge.core.sources import resolve_model


class ModelLoadBenchmark(Benchmark):
    """Time a first pull (if the model is not cached yet) and repeated cached loads."""

    name = "model-load"
    description = "pull once, then time cached loads of a model (default smollm2-135m)"

    def run(self, *, model: str = "smollm2-135m", repeats: int = 3, **_: Any) -> BenchmarkReport:
        source = resolve_model(model)
        rows = []
        if not source.is_pulled():
            start = time.perf_counter()
            source.pull()
            rows.append({"step": "first pull", "model": model, "median_s": time.perf_counter() - start, "repeats": 1})
        loads = measure(lambda: source.load(), name="cached load", warmup=0, repeats=repeats)
        rows.append({"step": "cached load", "model": model, **loads.to_dict()})
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={"cached_load_median_s": loads.median, "model": model},
        )


@hookimpl
def register_benchmarks(register):
    register(ModelLoadBenchmark())
