"""Evaluation: perplexity under a declared protocol, decode speed, weight bytes and peak memory per method.

Perplexity protocol: the evaluation text is tokenized once, cut into
non-overlapping windows of ``window`` tokens (the remainder is dropped), each
window scored independently with no context from the previous one, and
``exp(mean negative log-likelihood)`` taken over every predicted token
(``window - 1`` per window), as the GPTQ repository evaluates. All methods of one
run see the same windows.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossedge.core.backends import DEFAULT_BACKEND, resolve_backend
from crossedge.core.bench import (
    Benchmark,
    BenchmarkReport,
    format_table,
    measure,
    progress_bar,
    ratio,
    save_figure,
    threads,
)
from crossedge.core.datasets import Document, get_dataset, split_documents
from crossedge.core.errors import CrossedgeError

from .api import as_config, quantize, weight_bytes
from .calibration import text_batches
from .cloze import CHOICES, cloze_accuracy, cloze_items
from .config import spec_label
from .modules import kernel_fraction, track_kernel

DEFAULT_CORPUS = "pydoc-topics"
#: Fraction of documents that go to calibration; the rest is evaluation text.
CALIBRATION_FRACTION = 0.3
SPLIT_SALT = "crossedge-quant"
COLUMNS = (
    "method",
    "bits",
    "ppl",
    "delta_ppl_pct",
    "kernel_fraction",
    "weight_bytes",
    "peak_memory_bytes",
    "tokens_per_s",
    "speedup",
    "cloze_accuracy",
)


@dataclass
class CorpusSplit:
    """Calibration and evaluation text cut from disjoint documents, with where they came from."""

    calibration: str
    evaluation: str
    source: str
    calibration_documents: int
    evaluation_documents: int


def split_corpus(documents: Sequence[Document], source: str) -> CorpusSplit:
    """Split documents by hash into calibration and evaluation text that never overlap."""
    calib, evaluation = split_documents(documents, CALIBRATION_FRACTION, salt=SPLIT_SALT)
    if not calib or not evaluation:
        raise CrossedgeError(
            f"corpus {source} has too few documents ({len(documents)}) to split into calibration and evaluation: "
            "give a longer text with blank-line-separated paragraphs"
        )
    return CorpusSplit(
        "\n\n".join(d.text for d in calib), "\n\n".join(d.text for d in evaluation), source, len(calib), len(evaluation)
    )


def read_corpus_text(path: Path | str, label: str = "corpus") -> str:
    """The text of a user's corpus file; a missing, unreadable or binary file is a one-line error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CrossedgeError(f"cannot read {label} {path}: {exc.strerror or exc}") from exc
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CrossedgeError(
            f"{label} {path} holds a NUL byte at offset {nul}: it is a binary file, not text; give a UTF-8 text file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CrossedgeError(
            f"{label} {path} is not UTF-8 text (byte {exc.start} cannot be decoded): give a UTF-8 text file"
        ) from exc
    if not text.strip():
        raise CrossedgeError(f"{label} {path} is empty: give a text file with some paragraphs")
    return text


def load_corpus(path: Path | str | None = None, calibration_path: Path | str | None = None) -> CorpusSplit:
    """The default corpus (Python's pydoc topics) or a user text file split on blank lines.

    With ``calibration_path`` the methods calibrate on that whole file and perplexity is
    measured on the whole of ``path`` (or on the default corpus's evaluation half).
    """
    if calibration_path is not None:
        calibration = read_corpus_text(calibration_path, "calibration corpus")
        if path is None:
            evaluation = load_corpus(None)
            text, source, count = evaluation.evaluation, evaluation.source, evaluation.evaluation_documents
        else:
            text, source = read_corpus_text(path), str(path)
            count = len([p for p in text.split("\n\n") if p.strip()])
        cal_count = len([p for p in calibration.split("\n\n") if p.strip()])
        return CorpusSplit(calibration, text, f"{source} (calibration: {calibration_path})", cal_count, count)
    if path is None:
        return split_corpus(get_dataset(DEFAULT_CORPUS).documents(), DEFAULT_CORPUS)
    path = Path(path)
    text = read_corpus_text(path)
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    docs = [Document(f"{path.name}/{i}", p, str(path)) for i, p in enumerate(paragraphs)]
    return split_corpus(docs, str(path))


@dataclass
class PerplexityResult:
    """Perplexity with the numbers that define it."""

    ppl: float
    nll: float
    windows: int
    window: int
    scored_tokens: int


@torch.no_grad()
def perplexity(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    window: int = 512,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity over non-overlapping ``window``-token windows of ``input_ids`` (remainder dropped)."""
    ids = input_ids.reshape(-1)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    count = len(ids) // window
    if count == 0:
        raise CrossedgeError(
            f"evaluation text has {len(ids)} tokens, fewer than one window of {window}: lower --window or give "
            "more text"
        )
    total_nll, scored = 0.0, 0
    for i in progress_bar(range(count), desc="perplexity windows", enabled=progress):
        chunk = ids[i * window : (i + 1) * window].unsqueeze(0)
        logits = model(chunk).logits[0, :-1].float()
        nll = nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum")
        total_nll += float(nll)
        scored += window - 1
    mean = total_nll / scored
    return PerplexityResult(math.exp(mean), mean, count, window, scored)


def decoder(model: nn.Module, prompt_ids: torch.Tensor, new_tokens: int) -> Callable[[], None]:
    """A function that greedily decodes exactly ``new_tokens`` tokens after ``prompt_ids``."""
    config = getattr(model, "generation_config", None)
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = getattr(config, "eos_token_id", None)
    pad = pad[0] if isinstance(pad, list) else pad

    @torch.no_grad()
    def run() -> None:
        model.generate(
            prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )

    return run


def decode_tokens_per_s(model: nn.Module, prompt_ids: torch.Tensor, *, new_tokens: int = 64, repeats: int = 3) -> float:
    """Greedy decoding speed in new tokens per second (median of ``repeats`` after one warm-up)."""
    timing = measure(decoder(model, prompt_ids, new_tokens), warmup=1, repeats=repeats)
    return new_tokens / timing.median


def interleaved_decode(
    baseline: nn.Module, model: nn.Module, prompt_ids: torch.Tensor, *, new_tokens: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Decode durations of ``baseline`` and ``model`` timed alternately (A B A B ...).

    On a shared machine the load from other processes changes over minutes;
    alternating puts both models under the same load, so their ratio is fair.
    """
    runs = (decoder(baseline, prompt_ids, new_tokens), decoder(model, prompt_ids, new_tokens))
    for run in runs:
        run()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, bucket in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - start)
    return times


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def current_rss() -> int | None:
    """Resident set size of this process now (Linux; ``None`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, int | None]]:
    """Peak resident set size of this process inside the block (Linux; ``None`` elsewhere).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) on entry, so
    one process can measure several models in turn.
    """
    result: dict[str, int | None] = {"bytes": None}
    _trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        ok = True
    except OSError:
        ok = False
    try:
        yield result
    finally:
        if ok:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    result["bytes"] = int(line.split()[1]) * 1024


@dataclass
class EvalSettings:
    """What one evaluation run measures and how much text it uses."""

    window: int = 512
    max_eval_tokens: int = 16384
    calib_tokens: int = 4096
    decode_tokens: int = 64
    decode_repeats: int = 3
    prompt_tokens: int = 32
    threads: int | None = None
    #: Items of the zero-shot cloze task built from the evaluation text (0: not run).
    cloze_items: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def eval_backend(name: str, specs: Sequence[str]) -> Any:
    """The backend that runs every model of an evaluation, refused before any model loads unless it can.

    Perplexity windows are full forwards; decode timing runs ``generate`` (growing
    sequence, KV cache); quantized methods run crossedge-quant's custom int8/int4 kernels.
    The backend itself says whether it supports that.
    """
    quantized = any(s.strip() != "fp32" for s in specs)
    return resolve_backend(
        name, purpose="quant eval", dynamic_shapes=True, kv_cache_decoding=True, custom_kernels=quantized
    )


def evaluate_methods(
    load: Callable[[], tuple[nn.Module, Any]],
    specs: Sequence[str],
    corpus: CorpusSplit,
    settings: EvalSettings,
    *,
    model_name: str = "",
    command: str | None = None,
    backend: str | Any = DEFAULT_BACKEND,
) -> BenchmarkReport:
    """Quantize a fresh copy of the model per method and measure it beside fp32, all in one run.

    ``load()`` returns a fresh float ``(model, tokenizer)``. The fp32 model stays
    loaded: each method's decode runs alternate with fp32 runs, and its speedup is
    the ratio of the two medians. Peak memory is the peak RSS while the model
    scores the perplexity windows and decodes, minus the RSS before it was loaded.
    ``backend`` (a name, or what :func:`eval_backend` returned) runs every model, fp32
    included, after quantization.
    """
    configs = [as_config(s) for s in specs if s.strip() != "fp32"]
    runner = eval_backend(backend, specs) if isinstance(backend, str) else backend
    rows: list[dict[str, Any]] = []
    _trim_heap()
    rss_before = current_rss()
    base, tokenizer = load()
    base = runner.prepare_causal_lm(base)
    eval_ids = tokenizer(corpus.evaluation, return_tensors="pt").input_ids[0]
    num_batches = max(1, settings.calib_tokens // settings.window)
    calibration = text_batches(tokenizer, corpus.calibration, seq_len=settings.window, num_batches=num_batches)
    prompt = eval_ids[: settings.prompt_tokens].unsqueeze(0)
    items = cloze_items(corpus.evaluation, settings.cloze_items) if settings.cloze_items else []
    protocol: dict[str, Any] = {}
    base_times: list[float] = []
    with threads(settings.threads) as thread_count:
        methods_bar = progress_bar([None, *configs], desc="methods", enabled=settings.progress)
        for config in methods_bar:
            if hasattr(methods_bar, "set_postfix_str"):
                methods_bar.set_postfix_str("fp32" if config is None else spec_label(config))
            quantize_s = 0.0
            model = base
            details = None
            if config is not None:
                _trim_heap()
                rss_before = current_rss()
                model, _ = load()
                start = time.perf_counter()
                found = quantize(model, config, calibration=calibration)
                quantize_s = time.perf_counter() - start
                details = {k: v for k, v in found.details.items() if k != "bits"} or None
                model = runner.prepare_causal_lm(model)
            with peak_rss() as peak:
                track_kernel(model)
                result = perplexity(
                    model,
                    eval_ids,
                    window=settings.window,
                    max_tokens=settings.max_eval_tokens,
                    progress=settings.progress,
                )
                track_kernel(model, False)
                decoder(model, prompt, settings.decode_tokens)()
            accuracy = cloze_accuracy(model, tokenizer, items) if items else None
            if config is None:
                times = measure(
                    decoder(model, prompt, settings.decode_tokens), warmup=0, repeats=settings.decode_repeats
                ).samples
                base_times.extend(times)
                speedup = 1.0
            else:
                fp32_times, times = interleaved_decode(
                    base, model, prompt, new_tokens=settings.decode_tokens, repeats=settings.decode_repeats
                )
                base_times.extend(fp32_times)
                speedup = ratio(statistics.median(fp32_times), statistics.median(times))
            protocol = {
                "window": result.window,
                "windows": result.windows,
                "scored_tokens": result.scored_tokens,
                "remainder": "dropped",
                "overlap": "none",
            }
            used = None
            if peak["bytes"] is not None and rss_before is not None:
                used = peak["bytes"] - rss_before
            rows.append(
                {
                    "method": "fp32" if config is None else spec_label(config),
                    "bits": 32 if config is None else config.nominal_bits(),
                    "ppl": result.ppl,
                    "kernel_fraction": kernel_fraction(model),
                    "weight_bytes": weight_bytes(model),
                    "peak_memory_bytes": used,
                    "tokens_per_s": settings.decode_tokens / statistics.median(times),
                    "speedup": speedup,
                    "quantize_s": quantize_s,
                    "cloze_accuracy": accuracy,
                    "config": None if config is None else config.to_dict(),
                    "details": details,
                }
            )
            if config is not None:
                del model
    first = rows[0]
    first["tokens_per_s"] = settings.decode_tokens / statistics.median(base_times)
    for row in rows:
        row["delta_ppl_pct"] = 100.0 * (row["ppl"] / first["ppl"] - 1.0)
        row["weight_fraction"] = row["weight_bytes"] / first["weight_bytes"]
    summary = {
        "model": model_name,
        "corpus": corpus.source,
        "calibration_documents": corpus.calibration_documents,
        "evaluation_documents": corpus.evaluation_documents,
        "calibration_tokens": sum(b.numel() for b in calibration),
        "perplexity_protocol": protocol,
        "decode": {
            "new_tokens": settings.decode_tokens,
            "prompt_tokens": int(prompt.shape[1]),
            "repeats": settings.decode_repeats,
            "greedy": True,
            "speedup": "median fp32 time / median method time, runs interleaved with fp32 on the same machine",
        },
        "threads": thread_count,
        "cloze": {"items": len(items), "choices": CHOICES, "chance": 1 / CHOICES, "from": "evaluation text"}
        if items
        else None,
        "backend": runner.name,
        "peak_memory": "peak RSS during perplexity and one decode, minus RSS before the model was loaded",
    }
    report = BenchmarkReport(benchmark="quant-eval", rows=rows, summary=summary, command=command)
    report.environment["threads"] = thread_count  # the count in force while measuring, not the one restored after
    return report


def table(report: BenchmarkReport) -> str:
    """The terminal table of an evaluation report."""
    rows = []
    for row in report.rows:
        shown = dict(row)
        for key in ("weight_bytes", "peak_memory_bytes"):
            if shown.get(key) is not None:
                shown[key] = f"{shown[key] / 2**20:.1f} MiB"
        rows.append(shown)
    return format_table(rows, COLUMNS, floatfmt=".4g")


def plot(report: BenchmarkReport, path: Path | str) -> Path:
    """A PNG with perplexity change and decode speedup per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in report.rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.2 * len(labels) + 4), 4))
    axes[0].bar(range(len(labels)), [r["delta_ppl_pct"] for r in report.rows], color="#b05a3b")
    axes[0].set_ylabel("perplexity change vs fp32 (%)")
    axes[1].bar(range(len(labels)), [r["speedup"] for r in report.rows], color="#3b75af")
    axes[1].axhline(1.0, color="#444", linestyle="--", linewidth=1)
    axes[1].set_ylabel("decode speedup vs fp32 (x)")
    for ax in axes:
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
    fig.suptitle(f"crossedge quant eval: {report.summary.get('model', '')} ({report.summary.get('threads')} threads)")
    return save_figure(fig, path)


class QuantEvalBenchmark(Benchmark):
    """``crossedge bench run quant-eval -o model=... -o methods=...``: the eval command as a registered benchmark."""

    name = "quant-eval"
    description = "perplexity, bytes, memory and decode speedup of quantization methods beside fp32"

    def run(
        self,
        *,
        model: str = "smollm2-135m",
        methods: str = "rtn,w8a8,smoothquant,crossquant",
        window: int | str = 512,
        max_eval_tokens: int | str = 8192,
        calib_tokens: int | str = 4096,
        decode_tokens: int | str = 64,
        threads: int | str | None = None,
        backend: str = DEFAULT_BACKEND,
        cloze_items: int = 0,
    ) -> BenchmarkReport:
        from crossedge.core.sources import load_model

        from .commands import split_methods

        specs = split_methods(methods)
        runner = eval_backend(backend, specs)

        def load() -> tuple[nn.Module, Any]:
            loaded = load_model(model)
            return loaded.model, loaded.tokenizer

        settings = EvalSettings(
            window=int(window),
            max_eval_tokens=int(max_eval_tokens),
            calib_tokens=int(calib_tokens),
            decode_tokens=int(decode_tokens),
            threads=None if threads is None else int(threads),
            cloze_items=int(cloze_items),
        )
        return evaluate_methods(load, specs, load_corpus(), settings, model_name=model, backend=runner)
