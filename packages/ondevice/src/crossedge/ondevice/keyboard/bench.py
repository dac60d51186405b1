"""``ondevice-keyboard``: WER, keystroke savings and per-keystroke latency of the character-model decoder
against the lexicon-only baseline, under a per-keystroke latency budget, across touch-noise levels."""

from __future__ import annotations

import math
import time
from pathlib import Path

from crossedge.core import CrossedgeError
from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure

#: (label, sigma, skip, extra) of the simulated users; the first is the headline.
NOISE_SETTINGS: tuple[tuple[str, float, float, float], ...] = (
    ("sigma 0.45", 0.45, 0.0, 0.0),
    ("sigma 0.3", 0.3, 0.0, 0.0),
    ("sigma 0.6", 0.6, 0.0, 0.0),
    ("sigma 0.45 +skip/extra 3%", 0.45, 0.03, 0.03),
)


class KeyboardBenchmark(Benchmark):
    """Train the character model on the training split, time every beam width per keystroke, pick the widest
    under the budget per decoder, then type held-out text at several noise levels."""

    name = "ondevice-keyboard"
    description = (
        "keyboard decoding on the bundled texts: lexicon-constrained beam search over simulated noisy taps with a "
        "character GRU vs the lexicon-only baseline (spatial likelihood + unigram); WER, keystroke savings, "
        "latency per keystroke under a budget"
    )

    def run(
        self,
        *,
        steps: int = 2000,
        hidden: int = 192,
        words: int = 1500,
        calibration_words: int = 150,
        budget_ms: float = 2.0,
        headroom: float = 0.8,
        sweep_budgets_ms: str = "0.5,1,1.5,2,3",
        widths: str = "1,2,4,8,16,32",
        k: int = 3,
        settings: int = 4,
        threads: int = 1,
        train_threads: int = 2,
        seed: int = 0,
    ) -> BenchmarkReport:
        """Train once; for each noise setting evaluate every decoder at its widest beam whose calibration p90
        fits ``headroom * budget_ms``, and check the held-out p90 against ``budget_ms``."""
        from .budget import choose_beam, measure_keystroke_costs
        from .corpus import load_corpus
        from .evaluation import type_messages
        from .experiment import (
            SCORERS,
            NoiseSetting,
            decoder_config,
            make_decoder,
            parse_widths,
            pinned_threads,
            train_keyboard,
        )
        from .model import CharModelConfig
        from .noise import TapNoise
        from .training import TrainConfig

        width_list = parse_widths(widths)
        budget_s = float(budget_ms) / 1e3
        corpus = load_corpus()
        start = time.perf_counter()
        with pinned_threads(int(train_threads)):  # training is not what the budget is about; decoding is timed
            model, trained = train_keyboard(
                corpus, TrainConfig(steps=int(steps), seed=int(seed)), CharModelConfig(hidden=int(hidden))
            )
        train_s = time.perf_counter() - start
        calibration = corpus.messages(limit=int(calibration_words), split="train")
        test = corpus.messages(limit=int(words))
        rows: list[dict] = []
        chosen: dict[tuple[str, str], int] = {}
        baseline_decoded: dict[str, list[str]] = {}
        with pinned_threads(int(threads)):
            for label, sigma, skip, extra in NOISE_SETTINGS[: max(1, int(settings))]:
                setting = NoiseSetting(label, TapNoise(sigma, skip, extra))
                for kind in SCORERS:
                    costs = measure_keystroke_costs(
                        lambda w, kind=kind, n=setting.noise: make_decoder(model, kind, decoder_config(n, w)),
                        calibration,
                        lambda setting=setting: setting.simulator(int(seed) + 1),
                        width_list,
                        k=int(k),
                    )
                    for cost in costs:
                        rows.append({"part": "cost", "noise": label, "scorer": kind, **cost.to_row()})
                    beam = choose_beam(costs, float(headroom) * budget_s)
                    chosen[(label, kind)] = beam
                    beams = {beam}
                    if label == NOISE_SETTINGS[0][0] and kind == "char-model+counts":  # what each budget would buy
                        for budget in [float(b) for b in sweep_budgets_ms.split(",") if b.strip()]:
                            try:
                                fits = choose_beam(costs, float(headroom) * budget / 1e3)
                            except CrossedgeError:  # no width meets this budget: reported as such
                                fits = None
                            rows.append({"part": "sweep", "scorer": kind, "budget_ms": budget, "beam": fits})
                            if fits is not None:
                                beams.add(fits)
                    for width in sorted(beams):
                        decoder = make_decoder(model, kind, decoder_config(setting.noise, width))
                        result = type_messages(decoder, test, setting.simulator(int(seed)), k=int(k))
                        summary = result.summary()
                        n = summary["words"]
                        if kind == "lexicon-only":
                            baseline_decoded[label] = result.decoded
                        paired = paired_against(result.words, result.decoded, baseline_decoded[label])
                        rows.append(
                            {
                                "part": "eval",
                                "noise": label,
                                "scorer": kind,
                                "beam": width,
                                "chosen": width == beam,
                                **setting.noise.to_dict(),
                                **summary,
                                "wer_se": math.sqrt(summary["wer"] * (1 - summary["wer"]) / n),
                                "within_budget": summary["latency_p90_ms"] <= float(budget_ms),
                                **paired,
                            }
                        )
        evals = {(r["noise"], r["scorer"]): r for r in rows if r["part"] == "eval" and r["chosen"]}
        head = NOISE_SETTINGS[0][0]
        base, system = evals[(head, "lexicon-only")], evals[(head, "char-model+counts")]
        parameters = sum(p.numel() for p in model.char_model.parameters())
        summary = {
            "headline_noise": head,
            "budget_ms_p90": float(budget_ms),
            "headroom": float(headroom),
            "threads": int(threads),
            "train_threads": int(train_threads),
            "train_seconds": train_s,
            "train_steps": int(steps),
            "char_model_parameters": parameters,
            "test_bits_per_char": trained.test_bits_per_char,
            "lexicon_words": len(model.lexicon),
            "held_out_words": base["words"],
            "oov_rate": base["oov_rate"],
            "baseline_wer": base["wer"],
            "char_model_wer": evals[(head, "char-model")]["wer"],
            "mixed_wer": system["wer"],
            "literal_wer": base["wer_literal"],
            "baseline_keystroke_savings": base["keystroke_savings"],
            "char_model_keystroke_savings": evals[(head, "char-model")]["keystroke_savings"],
            "mixed_keystroke_savings": system["keystroke_savings"],
            "baseline_latency_ms": {"median": base["latency_median_ms"], "p90": base["latency_p90_ms"]},
            "mixed_vs_baseline_words": {
                "fixed": system["fixed_vs_baseline"],
                "broken": system["broken_vs_baseline"],
                "sign_test_p": system["sign_test_p"],
            },
            "mixed_latency_ms": {"median": system["latency_median_ms"], "p90": system["latency_p90_ms"]},
            "chosen_beams": {f"{n} / {s}": b for (n, s), b in chosen.items()},
            "all_within_budget": all(r["within_budget"] for r in evals.values()),
        }
        return BenchmarkReport(self.name, rows=rows, summary=summary)

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """WER and keystroke savings per noise level for each decoder; cost per keystroke against beam width."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        evals = [r for r in report.rows if r["part"] == "eval" and r["chosen"]]
        noises = list(dict.fromkeys(r["noise"] for r in evals))
        scorers = list(dict.fromkeys(r["scorer"] for r in evals))
        colours = dict(zip(scorers, ["#888888", "#3b75af", "#d1603d"], strict=False))
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        bar = 0.8 / max(1, len(scorers))
        for j, scorer in enumerate(scorers):
            by = {r["noise"]: r for r in evals if r["scorer"] == scorer}
            xs = [i + (j - (len(scorers) - 1) / 2) * bar for i in range(len(noises))]
            axes[0].bar(
                xs,
                [100 * by[n]["wer"] for n in noises],
                bar,
                yerr=[100 * by[n]["wer_se"] for n in noises],
                label=scorer,
                color=colours[scorer],
            )
            axes[1].bar(
                xs, [100 * by[n]["keystroke_savings"] for n in noises], bar, label=scorer, color=colours[scorer]
            )
            for x, n in zip(xs, noises, strict=True):  # the beam the budget allowed, on each WER bar
                top = 100 * (by[n]["wer"] + by[n]["wer_se"])
                axes[0].annotate(f"b{by[n]['beam']}", (x, top), ha="center", va="bottom", fontsize=6)
        titles = ["word error rate (%), b = beam within budget", "keystroke savings, top-3 (%)"]
        for ax, title in zip(axes[:2], titles, strict=True):
            ax.set_xticks(range(len(noises)), noises, rotation=20, ha="right", fontsize=8)
            ax.set_title(title)
        axes[0].legend(fontsize=8)
        head = report.summary["headline_noise"]
        for scorer in scorers:
            costs = [r for r in report.rows if r["part"] == "cost" and r["noise"] == head and r["scorer"] == scorer]
            axes[2].plot(
                [c["beam"] for c in costs],
                [c["p90_ms"] for c in costs],
                "o-",
                label=f"{scorer} p90",
                color=colours[scorer],
            )
            axes[2].plot(
                [c["beam"] for c in costs], [c["median_ms"] for c in costs], "o--", color=colours[scorer], alpha=0.5
            )
        budget = report.summary["budget_ms_p90"]
        axes[2].axhline(budget, color="#444", linestyle=":", label="budget (p90)")
        headroom = report.summary.get("headroom", 1.0)
        axes[2].axhline(headroom * budget, color="#999", linestyle=":", label=f"{headroom:g} x budget (beam choice)")
        axes[2].set_xscale("log", base=2)
        axes[2].set_xlabel("beam width")
        axes[2].set_ylabel("ms per keystroke (solid p90, dashed median)")
        axes[2].set_title(f"decode cost per keystroke, {head}")
        axes[2].legend(fontsize=8)
        return save_figure(fig, path)


def paired_against(words: list[str], decoded: list[str], baseline: list[str]) -> dict:
    """Words this decoder gets right that the baseline gets wrong on the same taps (fixed), the reverse
    (broken), and the two-sided sign test's p-value of that split (exact binomial, half and half under H0)."""
    fixed = sum(d == w != b for w, d, b in zip(words, decoded, baseline, strict=True))
    broken = sum(b == w != d for w, d, b in zip(words, decoded, baseline, strict=True))
    n, low = fixed + broken, min(fixed, broken)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n) if n else 1.0
    return {"fixed_vs_baseline": fixed, "broken_vs_baseline": broken, "sign_test_p": p}
