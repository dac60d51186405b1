"""The ``sensing`` benchmark: a small cross-domain comparison, both selection protocols, and its cost."""

from __future__ import annotations

import tempfile
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport


class SensingBenchmark(Benchmark):
    """Each algorithm on every held-out domain of one scenario over ``seeds``; accuracy and wall time."""

    name = "sensing"
    description = "cross-domain accuracy (training-domain and oracle selection) and sweep time of sensing algorithms"

    def run(
        self,
        *,
        dataset: str = "synthetic-shift",
        scenario: str = "cross-person",
        algorithms: str = "erm",
        seeds: int = 2,
        shots: int = 0,
        steps: int = 100,
        batch_size: int = 32,
        workers: int = 1,
        threads: int = 1,
    ) -> BenchmarkReport:
        """Run the sweep in a temporary records file and report one row per algorithm."""
        from .cli import algorithm_specs
        from .collect import METHODS, collect, read_sensing_records
        from .data import load_data
        from .scenarios import held_out_domains
        from .sweep import plan_jobs, run_jobs

        data = load_data(dataset)
        jobs = plan_jobs(
            dataset=dataset,
            scenario=scenario,
            algorithms=algorithm_specs(algorithms),
            test_domains=held_out_domains(data, scenario),
            trial_seeds=range(seeds),
            shots=shots,
            steps=steps,
            batch_size=batch_size,
            checkpoint_every=max(1, steps // 3),
        )
        with tempfile.TemporaryDirectory(prefix="crossedge-sensing-bench-") as folder:
            records = Path(folder) / "records.jsonl"
            result = run_jobs(jobs, records, workers=workers, threads=threads)
            (experiment,) = collect(read_sensing_records([records]))
        rows = []
        for algorithm in experiment.algorithms:
            row = {"algorithm": algorithm}
            for method in METHODS:
                cell = experiment.cells[(algorithm, method)]
                row[f"{method}_mean"] = cell.mean
                row[f"{method}_std"] = cell.std
            rows.append(row)
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={
                "dataset": dataset,
                "scenario": scenario,
                "jobs": len(jobs),
                "test_domains": experiment.domains,
                "seconds": round(result.seconds, 2),
                "workers": workers,
                "threads": threads,
            },
        )
