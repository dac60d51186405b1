"""``parallel-bench``: accuracy per task against tokens per forward, for each unmasking strategy.

Every method decodes the same held-out examples (``tasks.make_examples(split="test")``). A row
reports, per method and task, the share of valid answers (the task's scorer returns 1.0), the
mean score, the forwards spent, and two rates: ``tokens_per_forward`` counts the answer's tokens
up to and including its first end-of-text (what a reader gets) per forward; ``canvas_per_forward``
counts every canvas position decoded, padding included. An autoregressive model decodes exactly
one token per forward until it stops, so it sits at 1.0 on the first rate; a lexical-unit model
(:mod:`.lexical`) decodes one or more; lossless speculative decoding of the AR model (drafter
specs as for ``crossedge specdec generate``) gives its answers in fewer forwards, and its rows say
what share of answers came out identical to the AR model's own greedy ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossedge.core.contracts.unmasking import build_unmasking
from crossedge.core.errors import CrossedgeError

from ..engine import SpeculativeDecoder
from . import tasks as T
from .decoding import decode, decode_speculative
from .model import DiffusionLM

AUTOREGRESSIVE = "autoregressive"
LEXICAL = "lexical"
SPECULATIVE = "speculative"


@dataclass
class BenchRow:
    """One method on one task (``task == "all"``: every task together)."""

    method: str
    strategy: str
    task: str
    examples: int
    accuracy: float
    score: float
    forwards: int
    tokens_per_forward: float
    canvas_per_forward: float
    #: Accuracy minus fixed-k remasking's at the same tokens per forward (interpolated between the
    #: ``low-confidence`` rows of the same task and model); None outside their range or for them.
    versus_fixed_k: float | None = None
    #: Speculative rows: the share of answers token-identical to the AR model's greedy answers.
    identical_to_ar: float | None = None


def _answer_length(tokens: Sequence[int], eos: int) -> int:
    for i, t in enumerate(tokens):
        if t == eos:
            return i + 1
    return len(tokens)


def _rows(method: str, strategy: str, results: dict[str, list[tuple[float, int, int, int]]]) -> list[BenchRow]:
    out = []
    everything = [r for rows in results.values() for r in rows]
    for task, rows in [*results.items(), ("all", everything)]:
        forwards = sum(r[1] for r in rows)
        out.append(
            BenchRow(
                method,
                strategy,
                task,
                len(rows),
                sum(r[0] == 1.0 for r in rows) / len(rows),
                sum(r[0] for r in rows) / len(rows),
                forwards,
                sum(r[2] for r in rows) / forwards,
                sum(r[3] for r in rows) / forwards,
            )
        )
    return out


def run_parallel_bench(
    model: DiffusionLM | None,
    strategies: Sequence[str],
    task_names: Sequence[str],
    *,
    per_task: int = 50,
    seed: int = 0,
    autoregressive: DiffusionLM | None = None,
    lexical: DiffusionLM | None = None,
    lexical_taus: Sequence[float] = (0.9,),
    speculative: Sequence[str] = (),
    block_length: int | None = None,
    stop_at_eos: bool = False,
    progress: Callable[[], None] | None = None,
) -> list[BenchRow]:
    """Decode ``per_task`` held-out examples of each task with each strategy, the AR model, the AR
    model under each ``speculative`` drafter spec, and the lexical-unit model at each ``lexical_taus``."""
    for lm, objective, flag in (
        (model, "diffusion", "--model must be a diffusion LM"),
        (autoregressive, AUTOREGRESSIVE, "--ar must be a model trained with --objective autoregressive"),
        (lexical, LEXICAL, "--lexical must be a model from 'crossedge specdec train-lexical'"),
    ):
        if lm is not None and lm.info.objective != objective:
            raise CrossedgeError(f"{flag}; this one is {lm.info.objective!r}")
    examples = T.make_examples(task_names, per_task, seed=seed, split="test")
    #: (label, strategy name, model, decode keyword arguments)
    methods: list[tuple[str, str, DiffusionLM, dict[str, Any]]] = []
    if model is not None:
        for spec in strategies:
            strategy = build_unmasking(spec)
            methods.append((spec, strategy.name, model, {"strategy": strategy}))
    if speculative and autoregressive is None:
        raise CrossedgeError("speculative decoding runs on the autoregressive twin: pass --ar as well")
    if autoregressive is not None:
        methods.append((AUTOREGRESSIVE, AUTOREGRESSIVE, autoregressive, {}))
        for spec in speculative:
            decoder = SpeculativeDecoder(
                autoregressive.model,
                spec,
                eos_token_id=autoregressive.info.eos_token_id,
                tokenizer=autoregressive.tokenizer,
                calibration_cache="off",
            )
            methods.append((f"{SPECULATIVE}:{spec}", SPECULATIVE, autoregressive, {"decoder": decoder}))
    if lexical is not None:
        methods += [(f"{LEXICAL}:tau={tau:g}", LEXICAL, lexical, {"tau": tau}) for tau in lexical_taus]
    if not methods:
        raise CrossedgeError("nothing to run: give --model with --strategies, --ar, or --lexical")
    rows: list[BenchRow] = []
    greedy: dict[str, list[list[int]]] = defaultdict(list)  # the AR answers, task by task
    for label, name, lm, options in methods:
        results: dict[str, list[tuple[float, int, int, int]]] = defaultdict(list)
        same: dict[str, list[bool]] = defaultdict(list)
        for example in examples:
            if name == SPECULATIVE:
                out = decode_speculative(lm, example.prompt, options["decoder"])
                same[example.task].append(out.tokens == greedy[example.task][len(same[example.task])])
            else:
                out = decode(lm, example.prompt, block_length=block_length, stop_at_eos=stop_at_eos, **options)
            if name == AUTOREGRESSIVE:
                greedy[example.task].append(out.tokens)
            value = T.score(example, out.text)
            answer = _answer_length(out.tokens, lm.info.eos_token_id)
            results[example.task].append((value, out.forwards, answer, len(out.tokens)))
            if progress is not None:
                progress()
        new_rows = _rows(label, name, dict(results))
        if name == SPECULATIVE:
            everything = [v for flags in same.values() for v in flags]
            for r in new_rows:
                flags = everything if r.task == "all" else same[r.task]
                r.identical_to_ar = sum(flags) / len(flags)
        rows += new_rows
    compare_at_equal_forwards(rows)
    return rows


FIXED_K = "low-confidence"


def compare_at_equal_forwards(rows: Sequence[BenchRow]) -> None:
    """Fill ``versus_fixed_k``: each method's accuracy against fixed-k remasking at its tokens per forward."""
    for task in {r.task for r in rows}:
        fixed = sorted(
            ((r.tokens_per_forward, r.accuracy) for r in rows if r.task == task and r.strategy == FIXED_K),
            key=lambda p: p[0],
        )
        if len(fixed) < 2:
            continue
        for r in rows:
            if r.task != task or r.strategy == FIXED_K:
                continue
            x = r.tokens_per_forward
            for (x0, y0), (x1, y1) in zip(fixed, fixed[1:], strict=False):
                if x0 <= x <= x1:
                    at = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                    r.versus_fixed_k = round(r.accuracy - at, 4)
                    break


def rows_table(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Rows for :func:`crossedge.core.bench.format_table`."""
    return [
        {
            "method": r.method,
            "task": r.task,
            "n": r.examples,
            "accuracy": f"{r.accuracy:.3f}",
            "score": f"{r.score:.3f}",
            "tok/fwd": f"{r.tokens_per_forward:.2f}",
            "canvas/fwd": f"{r.canvas_per_forward:.2f}",
            "vs fixed-k": "" if r.versus_fixed_k is None else f"{r.versus_fixed_k:+.3f}",
            "same as AR": "" if r.identical_to_ar is None else f"{r.identical_to_ar:.3f}",
        }
        for r in rows
    ]


def write_json(rows: Sequence[BenchRow], path: Path | str, *, command: str | None, **summary: Any) -> Path:
    """Write the rows as a ``crossedge.bench`` report (environment and command included)."""
    from crossedge.core.bench import BenchmarkReport

    report = BenchmarkReport("parallel-bench", rows=[asdict(r) for r in rows], summary=summary, command=command)
    return report.write_json(path)


def plot(rows: Sequence[BenchRow], path: Path | str) -> None:
    """One panel per task: accuracy against tokens per forward, a line per strategy, AR as a point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CrossedgeError("--plot needs matplotlib: pip install matplotlib") from exc
    task_names = list(dict.fromkeys(r.task for r in rows))
    cols = min(4, len(task_names))
    nrows = -(-len(task_names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, task_names, strict=False):
        by_strategy: dict[str, list[BenchRow]] = defaultdict(list)
        for r in rows:
            if r.task == task:
                by_strategy[r.strategy].append(r)
        for strategy, points in by_strategy.items():
            points.sort(key=lambda r: r.tokens_per_forward)
            style = {AUTOREGRESSIVE: "s", SPECULATIVE: "D", LEXICAL: "^--"}.get(strategy, "o-")
            ax.plot([p.tokens_per_forward for p in points], [p.accuracy for p in points], style, label=strategy, ms=4)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("answer tokens per forward", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(task_names) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
