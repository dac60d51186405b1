"""Registered benchmarks: MobileTL memory, latency-predictor ranking, backend parity and speed."""

from __future__ import annotations

import statistics

import torch

from crossedge.core.bench import Benchmark, BenchmarkReport, geometric_mean


class MobileTLBenchmark(Benchmark):
    """MobileTL against full fine-tuning of the same top blocks, over several seeds."""

    name = "ondevice-mobiletl"
    description = "saved-for-backward memory and accuracy: MobileTL vs full fine-tuning of the same top blocks"

    def run(
        self, *, blocks: int = 3, seeds: str = "0,1,2,3,4", epochs: int = 20, batch_size: int = 32
    ) -> BenchmarkReport:
        from .training import run_finetune

        rows = []
        for seed in [int(s) for s in str(seeds).split(",")]:
            for method in ("full", "mobiletl"):
                result = run_finetune(
                    method,
                    blocks=int(blocks),
                    epochs=int(epochs),
                    batch_size=int(batch_size),
                    seed=seed,
                    disk_cache=True,
                )
                rows.append(
                    {
                        "seed": seed,
                        "method": method,
                        "accuracy": result.accuracy,
                        "saved_kb": result.memory.saved_activation_bytes / 1024,
                        "training_kb": result.memory.training_bytes / 1024,
                        "trainable_parameters": result.memory.trainable_parameters,
                        "seconds": result.seconds,
                    }
                )
        full = [r for r in rows if r["method"] == "full"]
        tl = [r for r in rows if r["method"] == "mobiletl"]
        reduction = [1 - t["saved_kb"] / f["saved_kb"] for f, t in zip(full, tl, strict=True)]
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={
                "blocks": blocks,
                "saved_memory_reduction": statistics.mean(reduction),
                "full_accuracy_mean": statistics.mean(r["accuracy"] for r in full),
                "mobiletl_accuracy_mean": statistics.mean(r["accuracy"] for r in tl),
                "accuracy_difference_points": statistics.mean(r["accuracy"] for r in tl)
                - statistics.mean(r["accuracy"] for r in full),
            },
        )


class PredictorBenchmark(Benchmark):
    """Leave-one-configuration-out ranking quality of the meta-learned latency predictor."""

    name = "ondevice-predictor"
    description = "Spearman of predicted vs measured latency on an unseen device configuration from 10 measurements"

    def run(
        self,
        *,
        count: int = 130,
        reference: int = 10,
        repeats: int = 9,
        episodes: int = 600,
        seed: int = 0,
        configs: str = "",
        retest: str = "",
    ) -> BenchmarkReport:
        """``retest``: comma-separated configurations to measure a second time, for the test-retest Spearman
        (how far two independent measurement runs agree: the ceiling any predictor can reach here)."""
        from .elastic import ElasticMobileNet, extract_subnet
        from .latency import DeviceConfig, MetaLatencyPredictor, fit_from_scratch, measurable_configs, spearman
        from .profiling import count_macs
        from .search import collect_latencies, latency_table

        chosen = [DeviceConfig.parse(c) for c in configs.split(",") if c] or measurable_configs()
        # Latency does not depend on the weights, so an untrained supernet gives the same architectures.
        net = ElasticMobileNet()
        table = latency_table(net, count=int(count), n_reference=int(reference), configs=chosen, repeats=int(repeats))
        k = len(table.reference)
        ref = table.subnets[:k]
        others = table.subnets[k:]
        x = (torch.zeros(16, 1, 8, 8),)
        macs = [count_macs(extract_subnet(net, s), x)[0] for s in others]
        rows = []
        for held_out in chosen:
            label = held_out.label()
            sources = {c.label(): table.values[c.label()] for c in chosen if c != held_out}
            predictor = MetaLatencyPredictor(net.space, ref, seed=int(seed))
            predictor.meta_train(table.subnets, sources, episodes=int(episodes))
            truth = table.values[label]
            predicted = predictor.adapt(truth[:k]).predict(others)
            scratch = fit_from_scratch(net.space, ref, truth[:k])(others)
            rows.append(
                {
                    "held_out": label,
                    "spearman_meta": spearman(predicted, truth[k:]),
                    "spearman_scratch_mlp": spearman(scratch, truth[k:]),
                    "spearman_macs": spearman(macs, truth[k:]),
                    "median_abs_rel_error": statistics.median(
                        abs(p - t) / t for p, t in zip(predicted, truth[k:], strict=True)
                    ),
                    "evaluated_subnets": len(others),
                    "measurements_used": k,
                    "min_ms": 1000 * min(truth),
                    "max_ms": 1000 * max(truth),
                }
            )
        again_configs = [DeviceConfig.parse(c) for c in retest.split(",") if c]
        if again_configs:
            again = collect_latencies(net, table.subnets, table.reference, again_configs, repeats=int(repeats))
            for row in rows:
                if row["held_out"] in again.values:
                    row["spearman_retest"] = spearman(
                        table.values[row["held_out"]][k:], again.values[row["held_out"]][k:]
                    )
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={
                "spearman_meta_mean": statistics.mean(r["spearman_meta"] for r in rows),
                "spearman_meta_min": min(r["spearman_meta"] for r in rows),
                "spearman_scratch_mean": statistics.mean(r["spearman_scratch_mlp"] for r in rows),
                "spearman_macs_mean": statistics.mean(r["spearman_macs"] for r in rows),
                "subnets": len(table.subnets),
            },
        )


class BackendsBenchmark(Benchmark):
    """Parity and speed of every available backend against eager, on the CNN and minilm-l6."""

    name = "ondevice-backends"
    description = "max abs diff and latency ratio vs eager for each backend, on mbv2-digits and minilm-l6"

    def run(
        self,
        *,
        models: str = "mbv2-digits,minilm-l6",
        backends: str = "",
        repeats: int = 20,
        threads: int = 1,
    ) -> BenchmarkReport:
        from crossedge.core import get_registry
        from crossedge.core.backends import get_backend

        from .profiling import profile

        names = [b for b in backends.split(",") if b] or get_registry("backend").names()
        rows = []
        for model in models.split(","):
            for name in names:
                backend = get_backend(name)
                if not backend.available():
                    rows.append({"model": model, "backend": name, "skipped": backend.unavailable_reason()})
                    continue
                result = profile(model, backend, repeats=int(repeats), threads=int(threads))
                rows.append(
                    {
                        "model": model,
                        "backend": name,
                        "max_abs_diff": result["max_abs_diff"],
                        "latency_median_ms": result["latency_median_ms"],
                        "latency_p90_ms": result["latency_p90_ms"],
                        "eager_latency_median_ms": result["eager_latency_median_ms"],
                        "speedup_vs_eager": result["speedup_vs_eager"],
                        "prepare_s": result["prepare_s"],
                        "macs": result["macs"],
                        "threads": result["threads"],
                    }
                )
        measured = [r for r in rows if "speedup_vs_eager" in r and r["backend"] != "torch-eager"]
        return BenchmarkReport(
            benchmark=self.name,
            rows=rows,
            summary={
                "max_abs_diff_worst": max((r["max_abs_diff"] for r in rows if "max_abs_diff" in r), default=None),
                "speedup_geomean_non_eager": geometric_mean([r["speedup_vs_eager"] for r in measured])
                if measured
                else None,
            },
        )


BENCHMARKS = (MobileTLBenchmark, PredictorBenchmark, BackendsBenchmark)
