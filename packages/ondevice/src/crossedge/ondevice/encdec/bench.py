"""``ondevice-return-encoder``: an encoder-decoder student and a decoder-only student of the same parameter
count, both distilled from the frozen smollm2-135m on summarization-style prompts from the bundled texts; quality
against the teacher's answers on held-out documents, first-token latency and decode tokens/s by input length."""

from __future__ import annotations

import time
from pathlib import Path

from crossedge.core.bench import Benchmark, BenchmarkReport, save_figure

COLOURS = {"encdec": "#d1603d", "decoder": "#3d7dd1", "teacher": "#888888"}


class ReturnEncoderBenchmark(Benchmark):
    """Distil both students from the teacher's cached answers with the same steps and batches, score them (and
    an untrained pair, the teacher and a lead-of-passage baseline) on held-out prompts, then time all three."""

    name = "ondevice-return-encoder"
    description = (
        "Return of the Encoder: smollm2-135m distilled into an encoder-decoder student (2/3 of the layers in a "
        "bidirectional encoder) and a decoder-only student of equal parameters; held-out NLL, agreement and "
        "ROUGE-L against the teacher, first-token latency and decode tokens/s at 128-1024 input tokens"
    )

    def run(
        self,
        *,
        teacher: str = "smollm2-135m",
        sources: str = "pydoc-topics,common-licenses",
        train_items: int = 64,
        eval_items: int = 16,
        passage_tokens: int = 192,
        new_tokens: int = 32,
        top_k: int = 32,
        d_model: int = 192,
        heads: int = 4,
        encoder_layers: int = 6,
        decoder_layers: int = 2,
        mlp_hidden: int = 512,
        steps: int = 160,
        batch_size: int = 4,
        lr: float = 3e-3,
        kl_weight: float = 0.5,
        lengths: str = "128,512,1024",
        repeats: int = 5,
        teacher_repeats: int = 1,
        decode_steps: int = 16,
        rounds: int = 2,
        threads: int = 1,
        train_threads: int = 2,
        seed: int = 0,
    ) -> BenchmarkReport:
        """Prepare (or read) the teacher's data, train both students for ``steps`` steps on ``train_threads``
        threads, score them on the held-out prompts, then time prefill and decoding on ``threads`` threads."""
        from crossedge.core.bench import threads as pinned_threads

        from .evaluation import lead_quality, quality, teacher_quality
        from .experiment import Recipe, load_teacher, matched_configs, new_student, prepare
        from .latency import Timed, latency_rows, parse_lengths
        from .model import parameter_count, parameter_split
        from .teacher import TeacherRunner
        from .training import DistillConfig, distill

        input_lengths = parse_lengths(lengths)
        recipe = Recipe(
            sources=sources,
            train_items=int(train_items),
            eval_items=int(eval_items),
            passage_tokens=int(passage_tokens),
            new_tokens=int(new_tokens),
            top_k=int(top_k),
            seed=int(seed),
        )
        train = DistillConfig(
            steps=int(steps), batch_size=int(batch_size), lr=float(lr), kl_weight=float(kl_weight), seed=int(seed)
        )
        start = time.perf_counter()
        model, tokenizer = load_teacher(teacher)
        with pinned_threads(int(train_threads)):
            prepared = prepare(model, tokenizer, recipe, progress=True)
            prepare_s = time.perf_counter() - start
            configs = matched_configs(
                prepared.vocab,
                prepared.start_id,
                d_model=int(d_model),
                heads=int(heads),
                encoder_layers=int(encoder_layers),
                decoder_layers=int(decoder_layers),
                mlp_hidden=int(mlp_hidden),
            )
            rows, students, results = [], {}, {}
            for config in configs:
                student = new_student(config, model, seed=int(seed))
                untrained = quality(student, prepared.held_out, tokenizer, eos_id=prepared.eos_id)
                rows.append(
                    {
                        "part": "quality",
                        "model": f"{config.kind} untrained",
                        "kind": config.kind,
                        "parameters": parameter_count(config),
                        **untrained,
                    }
                )
                results[config.kind] = distill(student, prepared.train, train, progress=True)
                students[config.kind] = student
            for config in configs:
                scored = quality(students[config.kind], prepared.held_out, tokenizer, eos_id=prepared.eos_id)
                result = results[config.kind]
                rows.append(
                    {
                        "part": "quality",
                        "model": config.kind,
                        "kind": config.kind,
                        **scored,
                        "parameters": parameter_count(config),
                        "split": parameter_split(config),
                        "config": config.to_dict(),
                        "train_seconds": result.seconds,
                        "train_tokens": result.tokens,
                        "first_loss": result.losses[0],
                        "final_loss": result.final_loss,
                        "losses": result.to_dict()["losses"],
                        "loss_stride": result.to_dict()["loss_stride"],
                    }
                )
        teacher_params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "part": "quality",
                "model": "teacher",
                "kind": "teacher",
                "parameters": teacher_params,
                **teacher_quality(prepared.held_out),
            }
        )
        rows.append(
            {
                "part": "quality",
                "model": "lead (passage start)",
                "kind": "lead",
                "parameters": 0,
                **lead_quality(prepared.held_out_items.passages, prepared.held_out, tokenizer),
            }
        )
        timed = [Timed(c.kind, students[c.kind], parameter_count(c), int(repeats)) for c in configs]
        timed.append(Timed("teacher", TeacherRunner(model), teacher_params, int(teacher_repeats), warmup=0))
        source = prepared.held_out_items.passages.reshape(-1)
        latency = latency_rows(
            timed, source, input_lengths, decode_steps=int(decode_steps), rounds=int(rounds), threads=int(threads)
        )
        rows.extend({"part": "latency", **r} for r in latency)
        by = {(r["model"], r["input_tokens"]): r for r in latency}
        scores = {r["model"]: r for r in rows if r["part"] == "quality"}
        encdec_params, decoder_params = (parameter_count(c) for c in configs)
        split = parameter_split(configs[0])
        summary = {
            "teacher": teacher,
            "prepared": prepared.to_dict(),
            "prepare_seconds": prepare_s,
            "train": train.to_dict(),
            "threads": int(threads),
            "train_threads": int(train_threads),
            "encdec_parameters": encdec_params,
            "decoder_parameters": decoder_params,
            "parameter_difference": (decoder_params - encdec_params) / encdec_params,
            "decoder_layers_matched": configs[1].decoder_layers,
            "decoder_mlp_hidden_matched": configs[1].mlp_hidden,
            "encoder_share_of_non_embedding": split["encoder"] / (split["encoder"] + split["decoder"]),
            "teacher_parameters": teacher_params,
            **{
                f"{kind}_{metric}": scores[kind][metric]
                for kind in ("encdec", "decoder")
                for metric in ("nll", "agreement", "rouge_l")
            },
            "teacher_nll": scores["teacher"]["nll"],
            "lead_rouge_l": scores["lead (passage start)"]["rouge_l"],
            "first_token_speedup": {
                str(n): by[("decoder", n)]["first_token_ms"] / by[("encdec", n)]["first_token_ms"]
                for n in input_lengths
            },
            "decode_speedup": {
                str(n): by[("decoder", n)]["decode_ms_per_token"] / by[("encdec", n)]["decode_ms_per_token"]
                for n in input_lengths
            },
            "cache_bytes_ratio": {
                str(n): by[("decoder", n)]["cache_bytes"] / by[("encdec", n)]["cache_bytes"] for n in input_lengths
            },
            "seconds": time.perf_counter() - start,
        }
        return BenchmarkReport(self.name, rows=rows, summary=summary)

    def plot(self, report: BenchmarkReport, path: Path) -> Path:
        """Training loss, first-token latency and decode tokens/s against input length, per model."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for row in (r for r in report.rows if r["part"] == "quality" and "losses" in r):
            kind = row["kind"]
            steps = [i * row["loss_stride"] for i in range(len(row["losses"]))]
            label = (
                f"{kind}: {row['parameters'] / 1e6:.2f}M, held-out NLL {row['nll']:.2f}, ROUGE-L {row['rouge_l']:.2f}"
            )
            axes[0].plot(steps, row["losses"], color=COLOURS.get(kind), label=label)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("distillation loss (nats/token)")
        axes[0].set_title("training (same prompts, same steps)")
        axes[0].legend(fontsize=7)
        latency = [r for r in report.rows if r["part"] == "latency"]
        for name in dict.fromkeys(r["model"] for r in latency):
            mine = [r for r in latency if r["model"] == name]
            xs = [r["input_tokens"] for r in mine]
            axes[1].errorbar(
                xs,
                [r["first_token_ms"] for r in mine],
                yerr=[r["first_token_iqr_ms"] / 2 for r in mine],
                fmt="o-",
                capsize=3,
                color=COLOURS.get(name),
                label=name,
            )
            axes[2].plot(xs, [r["decode_tokens_per_s"] for r in mine], "o-", color=COLOURS.get(name), label=name)
        threads = report.summary.get("threads")
        for ax, title, ylabel in (
            (axes[1], f"first-token latency, {threads} thread(s)", "ms (median, bar: IQR)"),
            (axes[2], f"decode throughput, {threads} thread(s)", "tokens/s (median step)"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("input tokens")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=8)
        return save_figure(fig, path)
