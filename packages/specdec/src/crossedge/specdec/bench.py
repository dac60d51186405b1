"""Spec-Bench-style benchmark: every method on every prompt, speedups against vanilla in the same process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossedge.core.backends import DEFAULT_BACKEND, resolve_backend
from crossedge.core.bench import (
    Benchmark,
    BenchmarkReport,
    environment,
    format_table,
    geometric_mean,
    plot_bars,
    progress_bar,
    validate_report,
)

from .drafters import DraftModelDrafter
from .engine import SpeculativeDecoder
from .errors import SpecdecError
from .llamacpp import baseline_of
from .suite import SuitePrompt

BASELINE = "vanilla"


def target_backend(name: str = DEFAULT_BACKEND, *, purpose: str = "specdec bench") -> Any:
    """The backend that will run the target model, refused before any model loads unless it can decode.

    Speculative decoding feeds the target a growing sequence and keeps a KV cache it crops
    after every rejected draft; the backend itself says whether it supports that. Drafters'
    own models stay in eager PyTorch.
    """
    return resolve_backend(name, purpose=purpose, dynamic_shapes=True, kv_cache_decoding=True)


def check_target(
    model: str,
    *,
    quant: str | None = None,
    backend: str = DEFAULT_BACKEND,
    drafters: Sequence[str] = (),
    policy: str | None = None,
    purpose: str = "specdec bench",
) -> Any:
    """Check drafter and policy specs and the target's (model, quant, backend) stack before any model loads.

    Returns core's :class:`crossedge.core.compose.StackPlan`; :func:`crossedge.core.compose.build_stack`
    then loads, quantizes and prepares the target (load -> quantize -> backend). Drafters'
    own models are not part of the stack: they stay fp32 in eager PyTorch.
    """
    from crossedge.core.compose import check_stack

    from .drafters import check_drafter_spec
    from .policies import check_policy_spec

    if policy is not None:
        check_policy_spec(policy)
    for spec in drafters:
        check_drafter_spec(spec)
    return check_stack(
        model, quant=quant, backend=backend, purpose=purpose, dynamic_shapes=True, kv_cache_decoding=True
    )


@dataclass
class Outcome:
    """New tokens of one generation, how long it took, and target forwards when known."""

    tokens: list[int]
    seconds: float
    forwards: int | None = None
    #: CPU seconds of this process (all threads): on a shared machine it varies far less than wall time.
    cpu_seconds: float = 0.0


Method = Callable[[torch.Tensor, int], Outcome]


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> torch.Tensor:
    """Token ids (1 x n) of a conversation ending with a user turn, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        return encoded if isinstance(encoded, torch.Tensor) else encoded["input_ids"]
    # Base models without a chat template get a plain transcript.
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"
    return tokenizer(text, return_tensors="pt").input_ids


def _truncate_at_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return tokens


def decoder_method(decoder: SpeculativeDecoder) -> Method:
    """A method running crossedge's engine."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Outcome:
        start, cpu = time.perf_counter(), time.process_time()
        result = decoder.generate(input_ids, max_new_tokens)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return Outcome(result.tokens, seconds, result.stats.target_forwards, cpu)

    return run


def hf_method(model: Any, eos: frozenset[int], **generate_kwargs: Any) -> Method:
    """A method running transformers' own ``generate`` with extra arguments."""

    def run(input_ids: torch.Tensor, max_new_tokens: int) -> Outcome:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        return Outcome(_truncate_at_eos(out[0, input_ids.shape[1] :].tolist(), eos), seconds, None, cpu)

    return run


def build_methods(
    model: Any,
    drafter_specs: Sequence[str],
    *,
    policy: str | None = None,
    compare_hf: bool = False,
    hf_assistant: Any = None,
    tokenizer: Any = None,
    prompt_lookup_tokens: int = 10,
    notes: list[str] | None = None,
    compare_llamacpp: str | None = None,
    threads: int = 2,
    calibration_cache: str = "use",
) -> dict[str, Method]:
    """The baseline, one method per drafter spec, and transformers' and llama.cpp's methods when asked.

    ``calibration_cache`` is each decoder's (:class:`SpeculativeDecoder`): with ``refresh`` only the
    first method times the costs again, and the others read what it stored.
    """
    vanilla = SpeculativeDecoder(model, None)
    methods: dict[str, Method] = {BASELINE: decoder_method(vanilla)}
    draft_model = hf_assistant
    for spec in drafter_specs:
        if spec in methods:
            raise SpecdecError(f"drafter spec {spec!r} is given twice")
        # "SPEC@POLICY" gives one method its own draft-length policy, so policies can be compared in one run;
        # the decoder reads the '@' itself, and ``policy`` serves the specs that name none.
        decoder = SpeculativeDecoder(model, spec, policy, tokenizer=tokenizer, calibration_cache=calibration_cache)
        calibration_cache = "use" if calibration_cache == "refresh" else calibration_cache
        methods[spec] = decoder_method(decoder)
        for drafter in decoder.drafters:
            if draft_model is None and type(drafter) is DraftModelDrafter:
                draft_model = drafter.model
    if compare_hf:
        eos = vanilla.eos
        methods["hf-greedy"] = hf_method(model, eos)
        methods["hf-prompt-lookup"] = hf_method(model, eos, prompt_lookup_num_tokens=prompt_lookup_tokens)
        if draft_model is not None:
            methods["hf-assisted"] = hf_method(model, eos, assistant_model=draft_model)
        elif notes is not None:
            notes.append("hf-assisted skipped: no draft model (use a draft-model drafter or --hf-assistant NAME)")
    if compare_llamacpp:
        from .llamacpp import llamacpp_methods

        methods.update(
            llamacpp_methods(compare_llamacpp, threads=threads, eos=vanilla.eos, notes=[] if notes is None else notes)
        )
    return methods


def run_benchmark(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[SuitePrompt],
    methods: dict[str, Method],
    *,
    max_new_tokens: int = 128,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every method on every prompt (turn by turn, history from the baseline's answers); one dict per run."""
    if BASELINE not in methods:
        raise SpecdecError(f"the methods must include the baseline {BASELINE!r}")
    warm = encode_chat(tokenizer, [{"role": "user", "content": "Say hello."}])
    for method in methods.values():
        method(warm, 8)  # first calls pay one-off allocation costs
    runs = []
    for prompt in progress_bar(prompts, desc="specdec bench", enabled=progress):
        history: list[dict[str, str]] = []
        totals = {
            name: {"tokens": [], "turn_seconds": [], "cpu": 0.0, "forwards": 0, "known": True} for name in methods
        }
        for turn in prompt.turns:
            history.append({"role": "user", "content": turn})
            input_ids = encode_chat(tokenizer, history)
            for name, method in methods.items():
                outcome = method(input_ids, max_new_tokens)
                entry = totals[name]
                entry["tokens"].append(outcome.tokens)
                entry["turn_seconds"].append(outcome.seconds)
                entry["cpu"] += outcome.cpu_seconds
                if outcome.forwards is None:
                    entry["known"] = False
                else:
                    entry["forwards"] += outcome.forwards
            answer = tokenizer.decode(totals[BASELINE]["tokens"][-1], skip_special_tokens=True)
            history.append({"role": "assistant", "content": answer})
        for name, entry in totals.items():
            baseline_tokens = totals[baseline_of(name, BASELINE)]["tokens"]
            new_tokens = sum(len(t) for t in entry["tokens"])
            seconds = sum(entry["turn_seconds"])
            runs.append(
                {
                    "task": prompt.task,
                    "prompt_id": prompt.prompt_id,
                    "method": name,
                    "turns": len(prompt.turns),
                    "new_tokens": new_tokens,
                    "seconds": seconds,
                    "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0,
                    "cpu_seconds": entry["cpu"],
                    "mean_accepted": new_tokens / entry["forwards"] if entry["known"] and entry["forwards"] else None,
                    "identical_to_baseline": entry["tokens"] == baseline_tokens,
                    "first_difference": first_difference(entry["tokens"], baseline_tokens),
                    "turn_new_tokens": [len(t) for t in entry["tokens"]],
                    "turn_seconds": entry["turn_seconds"],
                }
            )
    return runs


def kernel_lines(model: Any) -> list[str]:
    """The CPU's kernel flags and the kernel each kind of linear layer runs, grouped, for the terminal."""
    from crossedge.core.bench import cpu_flags, instruction_caps, layer_kernels

    by_kernel: dict[str, list[str]] = {}
    for kind, kernel in layer_kernels(model).items():
        by_kernel.setdefault(kernel, []).append(kind)
    caps = instruction_caps()
    lines = [
        f"CPU flags: {' '.join(cpu_flags()) or 'unknown'} (torch kernels: {caps['torch_cpu_capability']}, "
        f"oneDNN cap: {caps['onednn_max_isa']})"
    ]
    lines += [f"  {', '.join(kinds)}: {kernel}" for kernel, kinds in by_kernel.items()]
    return lines


def stack_fields(stack: Any) -> dict[str, Any]:
    """The target stack as results record it: backend and quant spec (None when not quantized after loading)."""
    return {
        "backend": stack.backend.name,
        "quant": stack.quant_spec,
        "quantized_folder": stack.describe()["quantized_folder"],
    }


def first_difference(turns: Sequence[Sequence[int]], baseline: Sequence[Sequence[int]]) -> dict[str, int] | None:
    """Where a method's tokens first leave the baseline's (turn and token index), or None when identical."""
    for turn, (mine, theirs) in enumerate(zip(turns, baseline, strict=True)):
        if list(mine) != list(theirs):
            # one answer may be a prefix of the other (an earlier stop): then they part where the shorter ends
            pairs = zip(mine, theirs, strict=False)
            token = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(mine), len(theirs)))
            return {"turn": turn, "token": token}
    return None


#: Methods of other tools (transformers' generate, llama.cpp): their differences are theirs, not crossedge's.
OTHER_TOOLS = ("hf-", "llamacpp-")


def differing_runs(runs: Sequence[dict[str, Any]]) -> list[str]:
    """``method@task/prompt_id`` of every run whose tokens differ from the baseline's."""
    return [f"{r['method']}@{r['task']}/{r['prompt_id']}" for r in runs if not r["identical_to_baseline"]]


def split_differing(differing: Sequence[str]) -> tuple[list[str], list[str]]:
    """(crossedge's differing runs, other tools' differing runs) from :func:`differing_runs`."""
    theirs = [d for d in differing if d.startswith(OTHER_TOOLS)]
    return [d for d in differing if d not in theirs], theirs


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-task and overall geometric-mean speedups (tokens/s over vanilla's on the same prompt) per method."""
    baseline = {(r["task"], r["prompt_id"]): r for r in runs if r["method"] == BASELINE}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    ratios: dict[tuple[str, str], list[float]] = {}
    cpu_ratios: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        base = baseline[(run["task"], run["prompt_id"])]
        if run["tokens_per_s"] > 0 and base["tokens_per_s"] > 0:
            ratios.setdefault((run["task"], run["method"]), []).append(run["tokens_per_s"] / base["tokens_per_s"])
        if run.get("cpu_seconds") and base.get("cpu_seconds") and run["new_tokens"] and base["new_tokens"]:
            cpu = (base["cpu_seconds"] / base["new_tokens"]) / (run["cpu_seconds"] / run["new_tokens"])
            cpu_ratios.setdefault((run["task"], run["method"]), []).append(cpu)

    def task_runs(task: str | None, method: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["method"] == method and (task is None or r["task"] == task)]

    def cell(task: str | None, method: str) -> dict[str, Any]:
        selected = task_runs(task, method)
        values = [v for t in ([task] if task else tasks) for v in ratios.get((t, method), [])]
        cpu_values = [v for t in ([task] if task else tasks) for v in cpu_ratios.get((t, method), [])]
        accepted = [r["mean_accepted"] for r in selected if r["mean_accepted"] is not None]
        tokens = sum(r["new_tokens"] for r in selected)
        seconds = sum(r["seconds"] for r in selected)
        return {
            "speedup": geometric_mean(values) if values else None,
            "cpu_speedup": geometric_mean(cpu_values) if cpu_values else None,
            "tokens_per_s": tokens / seconds if seconds else None,
            "mean_accepted": sum(accepted) / len(accepted) if accepted else None,
            "identical": all(r["identical_to_baseline"] for r in selected),
            "prompts": len(selected),
        }

    per_task = {task: {m: cell(task, m) for m in methods} for task in tasks}
    overall = {m: cell(None, m) for m in methods}
    summary = {
        "baseline": BASELINE,
        "methods": methods,
        "tasks": tasks,
        "per_task": per_task,
        "overall": overall,
        "geomean_speedup": {m: overall[m]["speedup"] for m in methods},
        "min_task_speedup": {
            m: min((per_task[t][m]["speedup"] for t in tasks if per_task[t][m]["speedup"] is not None), default=None)
            for m in methods
        },
    }
    per_turn = per_turn_speedups(runs)
    if per_turn:
        summary["per_turn"] = per_turn
    return summary


def per_turn_speedups(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float | None]]]:
    """For tasks with several turns: per method, the geometric-mean speedup of each turn on its own.

    A multi-turn prompt's speedup mixes its turns; MT-Redundant's question is how fast the
    *second* turn (a variation of the first answer) goes, which this separates out.
    """
    baseline = {(r["task"], r["prompt_id"]): r for r in runs if r["method"] == BASELINE}
    ratios: dict[str, dict[str, dict[int, list[float]]]] = {}
    for run in runs:
        base = baseline[(run["task"], run["prompt_id"])]
        turns = list(zip(run.get("turn_new_tokens") or [], run.get("turn_seconds") or [], strict=True))
        base_turns = list(zip(base.get("turn_new_tokens") or [], base.get("turn_seconds") or [], strict=True))
        if len(turns) < 2 or len(turns) != len(base_turns):
            continue
        for i, ((tokens, seconds), (base_tokens, base_seconds)) in enumerate(zip(turns, base_turns, strict=True)):
            if tokens and seconds > 0 and base_tokens and base_seconds > 0:
                ratio = (tokens / seconds) / (base_tokens / base_seconds)
                ratios.setdefault(run["task"], {}).setdefault(run["method"], {}).setdefault(i, []).append(ratio)
    return {
        task: {
            method: [geometric_mean(by_turn[i]) if by_turn.get(i) else None for i in range(max(by_turn) + 1)]
            for method, by_turn in methods.items()
        }
        for task, methods in ratios.items()
    }


def table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (task, method, speedup, tokens/s, mean accepted, identical) for the terminal and JSON."""
    rows = []
    for task in [*summary["tasks"], "overall"]:
        cells = summary["overall"] if task == "overall" else summary["per_task"][task]
        for method in summary["methods"]:
            c = cells[method]
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "speedup": c["speedup"],
                    "cpu_speedup": c["cpu_speedup"],
                    "tokens_per_s": c["tokens_per_s"],
                    "mean_accepted": c["mean_accepted"],
                    "identical": c["identical"],
                    "prompts": c["prompts"],
                }
            )
    return rows


TABLE_COLUMNS = ("task", "method", "speedup", "cpu_speedup", "tokens_per_s", "mean_accepted", "identical", "prompts")


def format_summary(summary: dict[str, Any]) -> str:
    """One table per task and one overall."""
    rows = table_rows(summary)
    blocks = []
    for task in [*summary["tasks"], "overall"]:
        blocks.append(format_table([r for r in rows if r["task"] == task], TABLE_COLUMNS, floatfmt=".2f"))
    for task, methods in summary.get("per_turn", {}).items():
        lines = [f"{task}, speedup per turn:"]
        for method, values in methods.items():
            cells = "  ".join(
                f"turn {i + 1} {v:.2f}x" if v is not None else f"turn {i + 1} -" for i, v in enumerate(values)
            )
            lines.append(f"  {method:<24} {cells}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_results(
    path: Path | str, runs: list[dict[str, Any]], summary: dict[str, Any], *, command: str | None, notes: list[str]
) -> tuple[Path, Path]:
    """Write ``{"runs", "summary"}`` (plus the crossedge.bench/1 fields, validated) and a PNG beside it."""
    report = BenchmarkReport("specdec", rows=table_rows(summary), summary=summary, command=command)
    data = {**report.to_dict(), "runs": runs, "notes": notes}
    data["environment"] = environment()
    validate_report(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    bars = [
        {"label": f"{r['task']} / {r['method']}", "speedup": r["speedup"]}
        for r in table_rows(summary)
        if r["method"] != BASELINE and r["speedup"] is not None
    ]
    png = plot_bars(
        bars,
        label="label",
        value="speedup",
        path=path.with_suffix(".png"),
        title="speculative decoding: speedup over vanilla (same run)",
        ylabel="x vanilla tokens/s",
        reference=1.0,
    )
    return path, png


class SpecdecBenchmark(Benchmark):
    """The specdec suite as a registered benchmark (``crossedge bench run specdec -o drafters=copy``)."""

    name = "specdec"
    description = "speculative decoding speedups over vanilla on the bundled suite (options: model, drafters, ...)"

    def run(
        self,
        *,
        model: str = "smollm2-135m",
        drafters: str = "copy",
        policy: str = "cost-aware",
        limit_per_task: int | str = 1,
        max_new_tokens: int | str = 64,
        threads: int | str = 2,
        compare_hf: bool | str = False,
        backend: str = DEFAULT_BACKEND,
        quant: str | None = None,
    ) -> BenchmarkReport:
        from crossedge.core.bench import layer_kernels
        from crossedge.core.bench import threads as pinned_threads
        from crossedge.core.compose import build_stack
        from crossedge.core.specs import split_alternatives

        from .drafters import DRAFTER_KIND
        from .suite import default_suite
        from .suite import limit_per_task as limit

        # Several drafter specs are separated by ';' here because ',' already builds chains.
        specs = split_alternatives(drafters, kind=DRAFTER_KIND)
        stack = check_target(
            model, quant=quant, backend=backend, drafters=specs, policy=policy, purpose="the specdec benchmark"
        )
        built = build_stack(stack)
        loaded, target = built.loaded, built.model
        compare = compare_hf if isinstance(compare_hf, bool) else str(compare_hf).lower() in ("1", "true", "yes")
        notes: list[str] = []
        methods = build_methods(
            target, specs, policy=policy, compare_hf=compare, notes=notes, tokenizer=loaded.tokenizer
        )
        prompts = limit(default_suite(), int(limit_per_task))
        with pinned_threads(int(threads)):
            runs = run_benchmark(
                target, loaded.tokenizer, prompts, methods, max_new_tokens=int(max_new_tokens), progress=False
            )
        summary = {
            **summarize(runs),
            **stack_fields(stack),
            "kernels": layer_kernels(target),
            "differing_runs": differing_runs(runs),
        }
        return BenchmarkReport(self.name, rows=table_rows(summary), summary={**summary, "runs": runs, "notes": notes})
