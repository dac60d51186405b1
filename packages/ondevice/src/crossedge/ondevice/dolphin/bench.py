"""``ondevice-dolphin``: a long context read as memory embeddings (Dolphin) against full context and truncation to
the same number of decoder positions: answer likelihood on held-out long-text questions, prefill wall time and
CPU time at several context lengths."""

from __future__ import annotations

import time
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure

COLOURS = {
    "full": "#444444",
    "memory": "#d1603d",
    "memory-untrained": "#e8b09c",
    "truncated": "#3d7fd1",
    "none": "#aaaaaa",
}


class DolphinBenchmark(Benchmark):
    """Train the compressor on the training documents with the decoder frozen (or reuse the cached one of the same
    recipe), score the held-out items under every condition, then time the three prefills."""

    name = "ondevice-dolphin"
    description = (
        "Dolphin: the frozen smollm2-135m reads a 512-token context as 32 memory embeddings (attention pooling of "
        "its token embeddings + MLP projector, trained on CPU) vs full context and truncation to 32 tokens; "
        "held-out answer NLL, prefill ms and CPU ms at 512-2048 tokens"
    )

    def run(
        self,
        *,
        decoder: str = "smollm2-135m",
        context_tokens: int = 512,
        ratio: int = 16,
        encoder_layers: int = 0,
        pool_heads: int = 4,
        projector_hidden: int = 1152,
        steps: int = 120,
        batch_size: int = 4,
        windows: int = 32,
        lr: float = 5e-3,
        recall_fraction: float = 0.75,
        recall: int = 16,
        questions: bool = True,
        contexts: str = "512,1024,2048",
        rounds: int = 3,
        threads: int = 2,
        cache: bool = True,
        seed: int = 0,
    ) -> BenchmarkReport:
        """Train (or load from the cache) on ``threads`` threads, score ``recall`` recall items plus the hand-written
        questions at ``context_tokens``, and time ``rounds`` interleaved rounds of each prefill per context."""
        import torch

        from crossedge.core.bench import threads as pinned_threads

        from .evaluation import gap_closed, score_items, summarize
        from .experiment import eval_items, load_decoder, prepare_corpus, timing_inputs, trained_reader
        from .latency import parse_lengths, prefill_rows, speedups
        from .model import parameter_count
        from .training import TrainConfig

        lengths = parse_lengths(contexts)
        model, tokenizer = load_decoder(decoder)
        corpus = prepare_corpus(tokenizer)
        train = TrainConfig(
            steps=int(steps),
            batch_size=int(batch_size),
            windows=int(windows),
            context_tokens=int(context_tokens),
            recall_fraction=float(recall_fraction),
            lr=float(lr),
            seed=int(seed),
        )
        options = {
            "encoder_layers": int(encoder_layers),
            "ratio": int(ratio),
            "pool_heads": int(pool_heads),
            "projector_hidden": int(projector_hidden),
        }
        with pinned_threads(int(threads)):
            trained = trained_reader(model, decoder, corpus, train, options=options, cache=bool(cache))
            items = eval_items(
                corpus,
                context_tokens=int(context_tokens),
                recall=int(recall),
                questions=bool(questions),
                seed=int(seed),
            )
            began = time.perf_counter()
            quality = score_items(trained.reader, items, untrained=trained.untrained)
            eval_s = time.perf_counter() - began
        reader = trained.reader
        timed, question = timing_inputs(corpus, lengths)
        prefill = prefill_rows(reader, timed, question, rounds=int(rounds), threads=int(threads))
        summary_q = summarize(quality)
        result = trained.result
        rows = [{"part": "train", **result.to_dict()}]
        rows += [{"part": "quality", **r} for r in quality]
        rows += [{"part": "prefill", **r} for r in prefill]
        summary = {
            "decoder": decoder,
            "decoder_parameters": parameter_count(model),
            "compressor_parameters": parameter_count(reader.compressor),
            "config": reader.config.to_dict(),
            "memory_slots": reader.config.memory_length(int(context_tokens)),
            "context_tokens": int(context_tokens),
            "truncation": "last tokens (nearest the question)",
            "threads": int(threads),
            "torch_threads_default": torch.get_num_threads(),
            "corpus": corpus.to_dict(),
            "train": train.to_dict(),
            "train_cached": trained.cached,
            "train_seconds": result.seconds,
            "feature_seconds": result.feature_seconds,
            "first_loss": result.first_loss,
            "final_loss": result.final_loss,
            "decoder_unchanged": result.decoder_unchanged,
            "eval_seconds": eval_s,
            "items": {kind: sum(1 for it in items if it.kind == kind) for kind in ("recall", "question")},
            "quality": summary_q,
            "gap_closed": gap_closed(summary_q),
            "gap_closed_recall": gap_closed(summary_q, "recall"),
            "gap_closed_question": gap_closed(summary_q, "question"),
            "prefill_speedup": speedups(prefill),
        }
        return BenchmarkReport(self.name, rows=rows, summary=summary)

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """Training loss; answer NLL per condition and item kind; prefill wall and CPU ms against context."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
        train = next(r for r in report.rows if r["part"] == "train")
        axes[0].plot(range(1, len(train["losses"]) + 1), train["losses"], color=COLOURS["memory"])
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("answer NLL (nats/token)")
        axes[0].set_title("compressor training (decoder frozen)")
        quality = report.summary["quality"]
        conditions = [c for c in COLOURS if c in quality]
        kinds = [k for k in ("recall", "question") if f"{conditions[0]}/{k}" in quality]
        width = 0.8 / len(conditions)
        for i, condition in enumerate(conditions):
            values = [quality[f"{condition}/{k}"]["nll"] for k in kinds]
            xs = [j + (i - (len(conditions) - 1) / 2) * width for j in range(len(kinds))]
            positions = quality[condition]["positions"]
            axes[1].bar(xs, values, width, color=COLOURS[condition], label=f"{condition} ({positions:.0f} positions)")
        axes[1].set_xticks(range(len(kinds)), [f"{k} ({quality[f'full/{k}']['items']})" for k in kinds])
        axes[1].set_ylabel("reference answer NLL (nats/token, lower is better)")
        axes[1].set_title(f"held-out answers, {report.summary['context_tokens']}-token contexts")
        axes[1].legend(fontsize=7)
        prefill = [r for r in report.rows if r["part"] == "prefill"]
        for mode in dict.fromkeys(r["mode"] for r in prefill):
            mine = [r for r in prefill if r["mode"] == mode]
            xs = [r["context"] for r in mine]
            axes[2].errorbar(
                xs,
                [r["prefill_median_ms"] for r in mine],
                yerr=[r["prefill_iqr_ms"] / 2 for r in mine],
                fmt="o-",
                capsize=3,
                color=COLOURS.get(mode),
                label=mode,
            )
            axes[3].plot(xs, [r["cpu_median_ms"] for r in mine], "o-", color=COLOURS.get(mode), label=mode)
        for ax, label in ((axes[2], "prefill wall ms (median, bar: IQR)"), (axes[3], "prefill CPU ms (median)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("context tokens")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        threads = report.summary.get("threads")
        axes[2].set_title(f"prefill latency, {threads} thread(s)")
        axes[3].set_title("energy proxy: process CPU time")
        return save_figure(fig, path)
