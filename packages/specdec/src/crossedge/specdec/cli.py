"""``crossedge specdec``: generate, bench, demo and suite commands."""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from typing import Any

import click

from crossedge.core.backends import DEFAULT_BACKEND
from crossedge.core.bench import threads as pinned_threads
from crossedge.core.cli import echo_json

from .errors import SpecdecError

DEFAULT_POLICY = "cost-aware"


def _check_target(
    model_name: str, quant_spec: str | None, backend_name: str, drafter_specs: Any, policy: str, purpose: str
) -> Any:
    """Refuse bad drafter, policy, quant and backend specs, and parts that cannot compose, before any model loads."""
    from .bench import check_target

    return check_target(
        model_name, quant=quant_spec, backend=backend_name, drafters=list(drafter_specs), policy=policy, purpose=purpose
    )


quant_option = click.option(
    "--quant",
    "quant_spec",
    default=None,
    help="Quantize the target after loading: 'int8' or 'int4' (kernels chosen by timing this machine), or a "
    "method spec such as 'rtn:bits=4,group_size=64' (docs/specs.md); methods "
    "that need calibration: run 'crossedge quant run' and pass its folder as --model. Drafters' models stay fp32.",
)


calibration_option = click.option(
    "--calibration-cache",
    type=click.Choice(["use", "refresh", "off"]),
    default="use",
    show_default=True,
    help="The cost-aware policy's timings of this decoder on this machine: read and extend the stored "
    "ones, time them all again (after a change the fingerprint cannot see), or neither read nor write.",
)


backend_option = click.option(
    "--backend",
    "backend_name",
    default=DEFAULT_BACKEND,
    show_default=True,
    help="Backend spec that runs the target model (e.g. torch-compile:mode=reduce-overhead); it must support "
    "KV-cached decoding. Drafters' models stay eager.",
)


@click.group(name="specdec")
def specdec() -> None:
    """Lossless speculative decoding with pluggable drafters."""


def _load(model_name: str) -> tuple[Any, Any]:
    from crossedge.core import load_model

    loaded = load_model(model_name)
    return loaded.model, loaded.tokenizer


def _build(stack: Any) -> tuple[Any, Any]:
    """The target of a checked stack, loaded, quantized and prepared by its backend, and its tokenizer."""
    from crossedge.core.compose import build_stack

    built = build_stack(stack)
    return built.model, built.tokenizer


def _format_stats(stats: Any, policy: Any = None) -> str:
    lines = [
        f"new tokens {stats.new_tokens} in {stats.seconds:.2f} s = {stats.tokens_per_s:.1f} tokens/s; "
        f"mean accepted length {stats.mean_accepted:.2f}; stop: {stats.stop_reason}"
    ]
    if stats.drafted_at:
        rates = " ".join(f"{r:.2f}" for r in stats.acceptance_by_position[:10])
        lines.append(f"acceptance by draft position: {rates}")
    for name, s in stats.drafters.items():
        lines.append(
            f"drafter {name}: {s.proposals} drafts, {s.drafted} tokens drafted, {s.accepted} accepted "
            f"({100 * s.acceptance_rate:.0f}%), {s.seconds * 1000:.0f} ms drafting"
        )
    return "\n".join(lines)


@specdec.command()
@click.option("--model", "model_name", required=True, help="Target model (name, folder or hub id).")
@click.option(
    "--drafter",
    "drafter_spec",
    default="copy",
    show_default=True,
    help="Drafter spec, e.g. copy,draft-model:model=NAME or copy,history@heuristic; 'none' for vanilla "
    "(grammar: docs/specs.md).",
)
@click.option(
    "--policy",
    default=DEFAULT_POLICY,
    show_default=True,
    help="Draft length: constant[:k=N], heuristic, cost-aware (a '@POLICY' in --drafter wins).",
)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--threads", "thread_count", type=int, default=None, help="torch threads (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON after the text.")
@backend_option
@quant_option
@calibration_option
@click.argument("prompt")
def generate(
    model_name: str,
    drafter_spec: str,
    policy: str,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    max_new_tokens: int,
    thread_count: int | None,
    as_json: bool,
    backend_name: str,
    quant_spec: str | None,
    calibration_cache: str,
    prompt: str,
) -> None:
    """Stream a model's answer to PROMPT with speculative decoding, then print the statistics."""
    from crossedge.core.sources import encode_prompt

    from .bench import stack_fields
    from .engine import SpeculativeDecoder
    from .sampling import SamplingConfig  # imports torch: only when the command runs

    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    stack = _check_target(model_name, quant_spec, backend_name, [drafter_spec], policy, "specdec generate")
    model, tokenizer = _build(stack)
    decoder = SpeculativeDecoder(model, drafter_spec, policy, tokenizer=tokenizer, calibration_cache=calibration_cache)
    input_ids = encode_prompt(tokenizer, prompt)
    with pinned_threads(thread_count):
        stream = decoder.stream(input_ids, max_new_tokens, sampling)
        shown = ""
        for _ in stream:
            # Decoding the whole answer each time keeps multi-byte characters intact.
            text = tokenizer.decode(stream.tokens, skip_special_tokens=True)
            if text.startswith(shown):
                click.echo(text[len(shown) :], nl=False)
                shown = text
        click.echo()
    click.secho(_format_stats(stream.stats), fg="cyan", err=True)
    if as_json:
        stats = {**stream.stats.to_dict(), **stack_fields(stack), "drafter": drafter_spec, "policy": policy}
        echo_json({**stats, "tokens": list(stream.tokens)})


@specdec.command()
@click.option("--model", "model_name", required=True, help="Target model.")
@click.option(
    "--drafter",
    "drafter_specs",
    multiple=True,
    required=True,
    help="Drafter spec, optionally SPEC@POLICY (repeatable).",
)
@click.option("--policy", default=DEFAULT_POLICY, show_default=True, help="Draft-length policy for every drafter spec.")
@click.option("--suite", "suite_name", type=click.Choice(["default"]), default=None, help="Bundled prompt suite.")
@click.option(
    "--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None, help="Spec-Bench question.jsonl."
)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--limit-per-task", type=int, default=None, help="Only the first N prompts of each task.")
@click.option("--compare-hf", is_flag=True, help="Add transformers' greedy, prompt-lookup and assisted generate.")
@click.option("--hf-assistant", default=None, help="Draft model for hf-assisted (default: the draft-model drafter's).")
@click.option(
    "--compare-llamacpp",
    "llamacpp_gguf",
    type=click.Path(dir_okay=False),
    default=None,
    help="Add llama.cpp's greedy and prompt-lookup decoding of this GGUF (needs the llamacpp extra).",
)
@click.option("--threads", "thread_count", type=int, default=2, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write results JSON (and a PNG beside it).",
)
@backend_option
@quant_option
@calibration_option
@click.option("--task", "tasks", multiple=True, help="Only prompts of this task (repeatable).")
def bench(
    model_name: str,
    drafter_specs: tuple[str, ...],
    policy: str,
    suite_name: str | None,
    prompts_file: str | None,
    max_new_tokens: int,
    limit_per_task: int | None,
    compare_hf: bool,
    hf_assistant: str | None,
    llamacpp_gguf: str | None,
    thread_count: int,
    json_path: str | None,
    backend_name: str,
    quant_spec: str | None,
    calibration_cache: str,
    tasks: tuple[str, ...],
) -> None:
    """Benchmark drafters against vanilla decoding on a prompt suite, per task and overall."""
    from . import bench as runner
    from .suite import default_suite, read_spec_bench
    from .suite import limit_per_task as limit

    if (suite_name is None) == (prompts_file is None):
        raise SpecdecError("give exactly one of --suite default or --prompts FILE.jsonl")
    if max_new_tokens <= 0:
        raise SpecdecError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    stack = _check_target(model_name, quant_spec, backend_name, drafter_specs, policy, "specdec bench")
    if llamacpp_gguf:
        from .llamacpp import check_gguf

        check_gguf(llamacpp_gguf)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = default_suite() if suite_name else read_spec_bench(prompts_file)
    for warning in caught:
        click.secho(f"warning: {warning.message}", fg="yellow", err=True)
    if tasks:
        known = sorted({p.task for p in prompts})
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise SpecdecError(f"no prompts of task {', '.join(map(repr, unknown))}: the tasks are {', '.join(known)}")
        prompts = [p for p in prompts if p.task in tasks]
    prompts = limit(prompts, limit_per_task)
    model, tokenizer = _build(stack)
    notes: list[str] = []
    assistant = _load(hf_assistant)[0] if hf_assistant else None
    methods = runner.build_methods(
        model,
        drafter_specs,
        policy=policy,
        compare_hf=compare_hf,
        hf_assistant=assistant,
        notes=notes,
        tokenizer=tokenizer,
        compare_llamacpp=llamacpp_gguf,
        threads=thread_count,
        calibration_cache=calibration_cache,
    )
    for note in notes:
        click.secho(note, fg="yellow", err=True)
    click.echo(
        f"{len(prompts)} prompts x {len(methods)} methods, {max_new_tokens} new tokens, greedy, "
        f"{thread_count} threads, backend {stack.backend.name}, quant {stack.quant_spec or 'none'}",
        err=True,
    )
    for line in runner.kernel_lines(model):
        click.echo(line, err=True)
    with pinned_threads(thread_count):
        runs = runner.run_benchmark(model, tokenizer, prompts, methods, max_new_tokens=max_new_tokens)
    differing = runner.differing_runs(runs)
    from crossedge.core.bench import layer_kernels

    summary = {
        **runner.summarize(runs),
        **runner.stack_fields(stack),
        "kernels": layer_kernels(model),
        "differing_runs": differing,
    }
    click.echo(runner.format_summary(summary))
    ours, theirs = runner.split_differing(differing)
    if ours:
        click.secho(
            f"{len(ours)} runs differ from their baseline (a defect: report it): " + ", ".join(ours[:8]),
            fg="yellow",
            err=True,
        )
    if theirs:
        click.secho(
            f"{len(theirs)} runs of other tools differ from that tool's own greedy output (their behaviour, "
            "not a crossedge defect): " + ", ".join(theirs[:8]),
            fg="yellow",
            err=True,
        )
    if json_path:
        command = "crossedge specdec bench " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        written, png = runner.write_results(json_path, runs, summary, command=command, notes=notes)
        click.echo(f"wrote {written} and {png}", err=True)


DEMO_PROMPTS = (("code-editing", 0), ("redundant-turn", 0), ("summarization", 0))


@specdec.command()
@click.option("--model", "model_name", default="smollm2-135m", show_default=True)
@click.option("--drafter", "drafter_spec", default="copy", show_default=True)
@click.option("--policy", default=DEFAULT_POLICY, show_default=True)
@click.option("--max-new-tokens", type=int, default=96, show_default=True)
@click.option("--threads", "thread_count", type=int, default=2, show_default=True)
@backend_option
@quant_option
@calibration_option
def demo(
    model_name: str,
    drafter_spec: str,
    policy: str,
    max_new_tokens: int,
    thread_count: int,
    backend_name: str,
    quant_spec: str | None,
    calibration_cache: str,
) -> None:
    """Vanilla against speculative decoding, side by side, with speedup and identity check."""
    from .bench import encode_chat
    from .engine import SpeculativeDecoder
    from .suite import default_suite

    stack = _check_target(model_name, quant_spec, backend_name, [drafter_spec], policy, "specdec demo")
    backend = stack.backend
    click.echo(f"loading {model_name} (the first run pulls it into the crossedge cache) ...", err=True)
    # Vanilla and speculative decoding run the same prepared (and quantized) model, so they compare like with like.
    model, tokenizer = _build(stack)
    quantized = bool(stack.quant_spec or stack.quantized_folder)
    suite = default_suite()
    by_task: dict[str, list[Any]] = {}
    for prompt in suite:
        by_task.setdefault(prompt.task, []).append(prompt)
    vanilla = SpeculativeDecoder(model, None)
    speculative = SpeculativeDecoder(
        model, drafter_spec, policy, tokenizer=tokenizer, calibration_cache=calibration_cache
    )
    all_identical = True
    speedups = []
    with pinned_threads(thread_count):
        warm = encode_chat(tokenizer, [{"role": "user", "content": "Say hello."}])
        vanilla.generate(warm, 4)
        speculative.generate(warm, 4)
        for task, index in DEMO_PROMPTS:
            if task not in by_task or len(by_task[task]) <= index:
                continue
            prompt = by_task[task][index]
            input_ids = encode_chat(tokenizer, [{"role": "user", "content": prompt.turns[0]}])
            start = time.perf_counter()
            base = vanilla.generate(input_ids, max_new_tokens)
            base_s = time.perf_counter() - start
            start = time.perf_counter()
            spec = speculative.generate(input_ids, max_new_tokens)
            spec_s = time.perf_counter() - start
            identical = base.tokens == spec.tokens
            all_identical &= identical
            speedup = (len(spec.tokens) / spec_s) / (len(base.tokens) / base_s)
            speedups.append(speedup)
            click.secho(f"\n=== {task} / {prompt.prompt_id} ===", bold=True)
            click.echo(prompt.turns[0][:300] + (" ..." if len(prompt.turns[0]) > 300 else ""))
            click.secho("--- answer ---", dim=True)
            click.echo(tokenizer.decode(spec.tokens, skip_special_tokens=True).strip())
            click.echo(
                f"vanilla      {len(base.tokens):4d} tokens {base_s:6.2f} s {len(base.tokens) / base_s:6.1f} tok/s\n"
                f"{drafter_spec:<12} {len(spec.tokens):4d} tokens {spec_s:6.2f} s "
                f"{len(spec.tokens) / spec_s:6.1f} tok/s"
                f"  mean accepted {spec.stats.mean_accepted:.2f}\n"
                f"speedup {speedup:.2f}x   identical to vanilla: {'yes' if identical else 'NO'}"
            )
    if not speedups:
        raise SpecdecError("the default suite has no demo prompts on this machine (see the warnings above)")
    from crossedge.core.bench import geometric_mean

    colour = "green" if all_identical else "red"
    click.secho(
        f"\ngeometric-mean speedup {geometric_mean(speedups):.2f}x on {thread_count} threads, "
        f"backend {backend.name}, quant {stack.quant_spec or 'none'}; "
        f"outputs identical: {'yes' if all_identical else 'NO'}",
        fg=colour,
        bold=True,
    )
    if not all_identical and quantized:
        # Not a decoding bug: int8/int4 kernels round differently when they verify several rows at once.
        click.secho(
            "a quantized target's kernels give slightly different numbers for several rows than for one, "
            "so greedy outputs may diverge; with fp32 weights they must not",
            fg="yellow",
            err=True,
        )
    elif not all_identical:
        raise SpecdecError("speculative output differed from vanilla greedy output: please report this as a bug")


@specdec.command(name="suite")
@click.option("--task", default=None, help="Only this task.")
@click.option("--json", "as_json", is_flag=True, help="Print the prompts as JSON.")
def suite_command(task: str | None, as_json: bool) -> None:
    """Show the bundled default suite as materialized on this machine."""
    from dataclasses import asdict

    from .suite import default_suite

    prompts = [p for p in default_suite() if task is None or p.task == task]
    if as_json:
        echo_json([asdict(p) for p in prompts])
        return
    for p in prompts:
        first = p.turns[0].splitlines()[0][:90]
        click.echo(f"{p.task:<20} {p.prompt_id:<34} turns={len(p.turns)}  {first}")


@specdec.command(name="drafters")
def drafters_command() -> None:
    """List registered drafters and their capabilities."""
    from crossedge.core import get_registry

    for entry in get_registry("drafter").entries():
        cls = entry.obj
        flags = [f for f in ("cheap", "provides_probs") if getattr(cls, f, False)]
        aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        click.echo(f"{entry.name:<14} {cls.description}{aliases} [{', '.join(flags)}] from {entry.plugin}")


@specdec.command(name="policies")
def policies_command() -> None:
    """List registered draft-length policies."""
    from crossedge.core import get_registry

    for entry in get_registry("draft_policy").entries():
        aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        click.echo(f"{entry.name:<14} {entry.obj.description}{aliases} from {entry.plugin}")


@specdec.command(name="export")
@click.option("--drafter", "drafter_spec", required=True, help="Drafter spec, optionally SPEC@POLICY (one chain).")
@click.option("--format", "fmt", type=click.Choice(["vllm", "sglang"]), required=True, help="Serving engine.")
@click.option("--model", "model_name", default=None, help="Target model name for the engine (default: MODEL).")
@click.option(
    "--from-bench",
    "from_bench",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A 'specdec bench --json' file: draft length from the fastest matching method's mean accepted length.",
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write JSON here (else stdout).")
def export_command(
    drafter_spec: str, fmt: str, model_name: str | None, from_bench: str | None, out_path: str | None
) -> None:
    """Write the vLLM or SGLang serving config that carries a drafter choice (pinned engine versions)."""
    from .export import export_config, write_export

    data = export_config(drafter_spec, fmt, model=model_name, from_bench=from_bench)
    if out_path is None:
        echo_json(data)
        return
    write_export(out_path, data)
    click.echo(f"wrote {out_path}; run: {data['command']}", err=True)
