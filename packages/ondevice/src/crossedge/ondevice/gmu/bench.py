"""``ondevice-gmu``: a plain decoder against a SambaY-style decoder-hybrid-decoder with gated memory units, at
the same parameter count, trained the same steps on the same bytes: held-out bits per byte, per-token decode
latency and cache bytes at long contexts."""

from __future__ import annotations

import time
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure

COLOURS = {"plain": "#888888", "sambay": "#d1603d"}


class GmuBenchmark(Benchmark):
    """Train the matched pair (plain baseline and sambay) on pydoc-topics' training split, then compare quality on
    the held-out split and decoding cost after prefilling 256 to 4096 bytes."""

    name = "ondevice-gmu"
    description = (
        "gated memory sharing (SambaY): byte-level plain decoder vs decoder-hybrid-decoder (recurrence + SWA + one "
        "full-attention layer, then cross-attention over its shared KV alternating with GMUs) at equal parameters; "
        "held-out bits/byte, decode ms/token and KV-cache bytes at long contexts"
    )

    def run(
        self,
        *,
        steps: int = 120,
        batch_size: int = 16,
        seq_len: int = 128,
        lr: float = 3e-3,
        d_model: int = 128,
        layers: int = 8,
        heads: int = 4,
        mlp_hidden: int = 352,
        window: int = 64,
        contexts: str = "256,1024,2048,4096",
        rounds: int = 4,
        repeats: int = 16,
        threads: int = 1,
        train_threads: int = 1,
        seed: int = 0,
    ) -> BenchmarkReport:
        """Train both variants for ``steps`` steps each on ``train_threads`` threads, then time decoding on
        ``threads`` threads: per context, ``rounds`` interleaved rounds of ``repeats`` single steps per model."""
        from crossedge.core.bench import threads as pinned_threads

        from .data import load_corpus
        from .decoding import parse_lengths
        from .experiment import latency_rows, quality_rows, train_variant
        from .model import DecoderConfig, matched_pair, parameter_count
        from .training import TrainConfig

        lengths = parse_lengths(contexts)
        corpus = load_corpus()
        base = DecoderConfig(
            kind="plain",
            d_model=int(d_model),
            layers=int(layers),
            heads=int(heads),
            mlp_hidden=int(mlp_hidden),
            window=int(window),
            inner=int(d_model),
        )
        configs = matched_pair(base)
        train = TrainConfig(
            steps=int(steps), batch_size=int(batch_size), seq_len=int(seq_len), lr=float(lr), seed=int(seed)
        )
        models, trained = [], {}
        with pinned_threads(int(train_threads)):
            for config in configs:
                model, result = train_variant(config, corpus, train)
                models.append(model)
                trained[config.kind] = result
            start = time.perf_counter()
            quality = quality_rows(models, corpus, int(seq_len))
            eval_s = time.perf_counter() - start
        rows: list[dict] = []
        for row, config in zip(quality, configs, strict=True):
            result = trained[config.kind]
            rows.append(
                {
                    "part": "model",
                    **row,
                    "config": config.to_dict(),
                    "train_seconds": result.seconds,
                    "train_tokens": result.tokens,
                    "first_loss": result.losses[0],
                    "final_loss": result.final_loss,
                    "losses": result.to_dict()["losses"],
                    "loss_stride": result.to_dict()["loss_stride"],
                }
            )
        decode = latency_rows(models, corpus, lengths, rounds=int(rounds), repeats=int(repeats), threads=int(threads))
        rows.extend({"part": "decode", **r} for r in decode)
        by = {(r["kind"], r["context"]): r for r in decode}
        plain_params, hybrid_params = (parameter_count(c) for c in configs)
        quality_by = {r["kind"]: r for r in quality}
        summary = {
            "corpus": corpus.to_dict(),
            "threads": int(threads),
            "train_threads": int(train_threads),
            "train": train.to_dict(),
            "eval_seconds": eval_s,
            "plain_parameters": plain_params,
            "sambay_parameters": hybrid_params,
            "parameter_difference": (hybrid_params - plain_params) / plain_params,
            "sambay_mlp_hidden": configs[1].mlp_hidden,
            "plain_layer_kinds": ",".join(configs[0].layer_kinds),
            "sambay_layer_kinds": ",".join(configs[1].layer_kinds),
            "plain_bits_per_byte": quality_by["plain"]["test_bits_per_byte"],
            "sambay_bits_per_byte": quality_by["sambay"]["test_bits_per_byte"],
            "plain_train_seconds": trained["plain"].seconds,
            "sambay_train_seconds": trained["sambay"].seconds,
            "decode_speedup": {
                str(n): by[("plain", n)]["decode_median_ms"] / by[("sambay", n)]["decode_median_ms"] for n in lengths
            },
            "kv_bytes_ratio": {str(n): by[("plain", n)]["kv_bytes"] / by[("sambay", n)]["kv_bytes"] for n in lengths},
            "cache_bytes_ratio": {
                str(n): by[("plain", n)]["cache_bytes"] / by[("sambay", n)]["cache_bytes"] for n in lengths
            },
            "kv_bytes_per_token": {
                kind: by[(kind, lengths[-1])]["kv_bytes"] / by[(kind, lengths[-1])]["cache_length"]
                for kind in ("plain", "sambay")
            },
            "sambay_fixed_state_bytes": by[("sambay", lengths[-1])]["state_bytes"],
        }
        return BenchmarkReport(self.name, rows=rows, summary=summary)

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """Training loss, decode ms/token against context, and cache bytes against context, per variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for row in (r for r in report.rows if r["part"] == "model"):
            kind = row["kind"]
            steps = [i * row["loss_stride"] for i in range(len(row["losses"]))]
            axes[0].plot(
                steps,
                row["losses"],
                color=COLOURS.get(kind),
                label=f"{kind}: {row['parameters'] / 1e6:.2f}M params, held-out {row['test_bits_per_byte']:.2f} bpb",
            )
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss (nats/byte)")
        axes[0].set_title("training (same bytes, same steps)")
        axes[0].legend(fontsize=8)
        decode = [r for r in report.rows if r["part"] == "decode"]
        for kind in dict.fromkeys(r["kind"] for r in decode):
            mine = [r for r in decode if r["kind"] == kind]
            xs = [r["context"] for r in mine]
            axes[1].errorbar(
                xs,
                [r["decode_median_ms"] for r in mine],
                yerr=[r["decode_iqr_ms"] / 2 for r in mine],
                fmt="o-",
                capsize=3,
                color=COLOURS.get(kind),
                label=kind,
            )
            axes[2].plot(xs, [r["kv_bytes"] / 2**20 for r in mine], "o-", color=COLOURS.get(kind), label=f"{kind} KV")
            axes[2].plot(
                xs,
                [r["cache_bytes"] / 2**20 for r in mine],
                "s--",
                color=COLOURS.get(kind),
                alpha=0.6,
                label=f"{kind} KV + fixed state",
            )
        threads = report.summary.get("threads")
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("context (bytes prefilled)")
        axes[1].set_ylabel("ms per decoded byte (median, bar: IQR)")
        axes[1].set_title(f"decode latency, {threads} thread(s)")
        axes[1].set_ylim(bottom=0)
        axes[1].legend(fontsize=8)
        axes[2].set_xscale("log", base=2)
        axes[2].set_yscale("log")
        axes[2].set_xlabel("context (bytes prefilled)")
        axes[2].set_ylabel("MiB allocated (float32)")
        axes[2].set_title("decode cache size")
        axes[2].legend(fontsize=8)
        return save_figure(fig, path)
